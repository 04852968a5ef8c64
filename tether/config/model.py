"""The typed configuration of one device, read from (and rendered to) wg-quick's file format.

The model is what the rest of tetherctl works with; the document under it is what gets edited
and written. Parsing checks everything a running device would trip over later (keys, addresses,
ports, duplicate peers), so a file that parses can be applied without surprises, and an error
points at the line to fix.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

import tether.config.values as v
from tether import keys
from tether.config.document import PAIR, Document, Line, Section
from tether.config.egress import Egress, parse_egress
from tether.config.errors import ConfigError
from tether.config.exit_settings import (
    EXIT_KEYS,
    EXIT_LIST_KEYS,
    ExitSettings,
    exit_pairs,
    make_exit,
)

DEFAULT_MTU = 1420

# lower-case key -> (canonical spelling, parser, repeatable)
INTERFACE_KEYS = {
    "privatekey": ("PrivateKey", v.parse_key, False),
    "listenport": ("ListenPort", v.parse_port, False),
    "address": ("Address", v.parse_interface_address, True),
    "dns": ("DNS", v.parse_dns, True),
    "mtu": ("MTU", v.parse_mtu, False),
    "table": ("Table", v.parse_table, False),
    "fwmark": ("FwMark", v.parse_fwmark, False),
    "preup": ("PreUp", str, True),
    "postup": ("PostUp", str, True),
    "predown": ("PreDown", str, True),
    "postdown": ("PostDown", str, True),
    "saveconfig": ("SaveConfig", v.parse_bool, False),
}
PEER_KEYS = {
    "publickey": ("PublicKey", v.parse_key, False),
    "presharedkey": ("PresharedKey", v.parse_key, False),
    "allowedips": ("AllowedIPs", v.parse_network, True),
    "endpoint": ("Endpoint", v.parse_endpoint, False),
    "persistentkeepalive": ("PersistentKeepalive", v.parse_keepalive, False),
    "egress": ("Egress", parse_egress, False),  # tetherctl's own: overrides [Exit] Egress
}
LIST_KEYS = {"address", "dns", "allowedips", *EXIT_LIST_KEYS}  # comma-separated lists
HOOK_KEYS = {"preup", "postup", "predown", "postdown"}  # the whole value is one shell command


@dataclass
class Interface:
    private_key: bytes
    listen_port: int | None = None
    addresses: list[v.IPInterface] = field(default_factory=list)
    dns: list[str] = field(default_factory=list)
    mtu: int | None = None
    table: str | None = None
    fwmark: int | None = None
    pre_up: list[str] = field(default_factory=list)
    post_up: list[str] = field(default_factory=list)
    pre_down: list[str] = field(default_factory=list)
    post_down: list[str] = field(default_factory=list)
    save_config: bool = False
    line: int = field(default=0, compare=False)

    @property
    def public_key(self) -> bytes:
        return keys.public_from_private(self.private_key)

    @property
    def effective_mtu(self) -> int:
        return self.mtu if self.mtu is not None else DEFAULT_MTU

    @property
    def own_addresses(self) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        """The device's own tunnel addresses. An Address written as a bare network (the original
        tool's `192.168.90.0/24`) names an address space and gives the device no address in it."""
        return own_addresses(self.addresses)

    @property
    def subnets(self) -> list[v.IPNetwork]:
        return [a.network for a in self.addresses]


@dataclass
class Peer:
    public_key: bytes
    preshared_key: bytes | None = None
    allowed_ips: list[v.IPNetwork] = field(default_factory=list)
    endpoint: v.Endpoint | None = None
    persistent_keepalive: int = 0
    # tetherctl's own (never shown to WireGuard): this peer's exit flows leave this way instead
    # of the [Exit] section's Egress; None: as the device's
    egress: Egress | None = None
    line: int = field(default=0, compare=False)

    @property
    def public_key_b64(self) -> str:
        return keys.encode(self.public_key)


@dataclass
class DeviceConfig:
    interface: Interface
    peers: list[Peer] = field(default_factory=list)
    exit: ExitSettings = field(default_factory=ExitSettings)  # the [Exit] section, or defaults

    def peer(self, public_key: bytes) -> Peer | None:
        for peer in self.peers:
            if peer.public_key == public_key:
                return peer
        return None

    def frozen(self) -> DeviceConfig:
        """A copy with its own list of peers: the editor adds and removes peers in the list of
        the configuration it edits but never changes a Peer or the Interface in place, so this
        copy stays what the file said when it was taken (the daemon keeps it as "applied")."""
        return DeviceConfig(self.interface, list(self.peers), self.exit)


def own_addresses(addresses: list[v.IPInterface]) -> list:
    return [a.ip for a in addresses if not _is_network_address(a)]


def _is_network_address(addr: v.IPInterface) -> bool:
    net = addr.network
    return net.num_addresses > 2 and addr.ip == net.network_address


# -- parsing ---------------------------------------------------------------------------------


_ONCE = {"interface": "Interface", "exit": "Exit"}


def parse_document(doc: Document) -> DeviceConfig:
    fn = doc.filename
    for line in doc.preamble.pairs():
        raise ConfigError(
            fn, line.lineno, f"{line.key} is outside any [Interface], [Peer] or [Exit] section"
        )
    interface: Interface | None = None
    exit_settings = ExitSettings()
    first_line: dict[str, int] = {}  # sections that may appear once -> the line of the first
    peers: list[Peer] = []
    key_lines: dict[bytes, int] = {}  # public key -> the line of its (first) PublicKey key
    for section in doc.sections:
        name = section.name
        if name in _ONCE:
            kind = _ONCE[name]
            if name in first_line:
                raise ConfigError(
                    fn,
                    section.header.lineno,
                    f"a second [{kind}] section (the first is on line {first_line[name]})",
                )
            first_line[name] = section.header.lineno
        if name == "interface":
            interface, _ = _build(section, "Interface", INTERFACE_KEYS, fn, _make_interface)
        elif name == "exit":
            exit_settings, _ = _build(section, "Exit", EXIT_KEYS, fn, make_exit)
        elif name == "peer":
            peer, where = _build(section, "Peer", PEER_KEYS, fn, _make_peer)
            key_line = where["publickey"]  # the error points at the key, not at [Peer]
            first = key_lines.get(peer.public_key)
            if first is not None:
                raise ConfigError(
                    fn,
                    key_line,
                    f"PublicKey {peer.public_key_b64} is given twice (first on line {first}); "
                    "each peer needs its own",
                )
            key_lines[peer.public_key] = key_line
            peers.append(peer)
        else:
            raise ConfigError(
                fn,
                section.header.lineno,
                f"unknown section [{section.header.key}] (expected [Interface], [Peer] or [Exit])",
            )
    if interface is None:
        raise ConfigError(fn, None, "no [Interface] section")
    own = interface.public_key
    for peer in peers:
        if peer.public_key == own:
            # wg drops such a peer silently; a file that names the device as its own peer is a
            # mistake (usually a pasted key of the wrong side), so say so.
            raise ConfigError(
                fn, key_lines[peer.public_key], "PublicKey is this device's own public key"
            )
    return DeviceConfig(interface, peers, exit_settings)


def _build(section: Section, kind: str, table: dict, fn: str, make):
    """The section's model (from `make`) and the line of each single-valued key in it, so
    that a check across sections can point at a key's own line."""
    fields: dict[str, object] = {}
    where: dict[str, int] = {}
    for line in section.pairs():
        low = line.key.lower()
        spec = table.get(low)
        if spec is None:
            raise ConfigError(fn, line.lineno, f"unknown key {line.key!r} in [{kind}]")
        canonical, parser, repeatable = spec
        if low == "egress" and line.raw[line.vend : line.vend + 1] == "#":
            # `socks5://user:12#secret@host:port` would be cut to `socks5://user:12`, a proxy
            # "user" on port 12, with half the password in logs: a comment glued to a proxy
            # URL is far more likely a '#' that needed percent-encoding.
            raise ConfigError(
                fn, line.lineno, f"{canonical}: a '#' right after the value starts a comment; "
                "in a user name or password write '#' as %23 (or leave a space before a comment)",
            )  # fmt: skip
        try:
            if low in LIST_KEYS:
                parsed = [parser(item) for item in v.split_list(line.value)]
            elif low in HOOK_KEYS:
                parsed = line.value
            else:
                parsed = parser(line.value)
        except ValueError as e:
            raise ConfigError(fn, line.lineno, f"{canonical}: {e}") from None
        if repeatable:
            items = fields.setdefault(low, [])
            if low in LIST_KEYS:
                items.extend(parsed)
            elif parsed:
                items.append(parsed)
        else:
            if low in fields:
                raise ConfigError(
                    fn, line.lineno, f"{canonical} is given twice (first on line {where[low]})"
                )
            fields[low] = parsed
            where[low] = line.lineno
    return make(fields, where, section.header.lineno, fn), where


def _make_interface(f: dict, where: dict, lineno: int, fn: str) -> Interface:
    if "privatekey" not in f:
        raise ConfigError(fn, lineno, "[Interface] has no PrivateKey")
    return Interface(
        private_key=f["privatekey"],
        listen_port=f.get("listenport"),
        addresses=f.get("address", []),
        dns=f.get("dns", []),
        mtu=f.get("mtu"),
        table=f.get("table"),
        fwmark=f.get("fwmark"),
        pre_up=f.get("preup", []),
        post_up=f.get("postup", []),
        pre_down=f.get("predown", []),
        post_down=f.get("postdown", []),
        save_config=f.get("saveconfig", False),
        line=lineno,
    )


def _make_peer(f: dict, where: dict, lineno: int, fn: str) -> Peer:
    if "publickey" not in f:
        raise ConfigError(fn, lineno, "[Peer] has no PublicKey")
    return Peer(
        public_key=f["publickey"],
        preshared_key=f.get("presharedkey"),
        allowed_ips=f.get("allowedips", []),
        endpoint=f.get("endpoint"),
        persistent_keepalive=f.get("persistentkeepalive", 0),
        egress=f.get("egress"),
        line=lineno,
    )


def parse_text(text: str, filename: str = "<config>") -> tuple[Document, DeviceConfig]:
    doc = Document.parse(text, filename)
    return doc, parse_document(doc)


def parse_bytes(data: bytes, filename: str = "<config>") -> tuple[Document, DeviceConfig]:
    """Files are UTF-8 (a BOM is allowed, as Windows editors write one)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        lineno = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(filename, lineno, "the file is not valid UTF-8") from None
    return parse_text(text, filename)


# -- rendering -------------------------------------------------------------------------------


def interface_pairs(iface: Interface) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    if iface.addresses:
        pairs.append(("Address", ", ".join(str(a) for a in iface.addresses)))
    if iface.listen_port is not None:
        pairs.append(("ListenPort", str(iface.listen_port)))
    pairs.append(("PrivateKey", keys.encode(iface.private_key)))
    if iface.dns:
        pairs.append(("DNS", ", ".join(iface.dns)))
    if iface.mtu is not None:
        pairs.append(("MTU", str(iface.mtu)))
    if iface.table is not None:
        pairs.append(("Table", iface.table))
    if iface.fwmark is not None:
        pairs.append(("FwMark", hex(iface.fwmark) if iface.fwmark else "off"))
    for key, commands in (
        ("PreUp", iface.pre_up),
        ("PostUp", iface.post_up),
        ("PreDown", iface.pre_down),
        ("PostDown", iface.post_down),
    ):
        pairs.extend((key, command) for command in commands)
    if iface.save_config:
        pairs.append(("SaveConfig", "true"))
    return pairs


def peer_pairs(peer: Peer) -> list[tuple[str, str]]:
    """A peer's lines in a device file, tetherctl's own `Egress` included: what WireGuard sees
    of a peer (`showconf`, the UAPI) is built from the running device, never from these."""
    pairs = [("PublicKey", keys.encode(peer.public_key))]
    if peer.preshared_key is not None:
        pairs.append(("PresharedKey", keys.encode(peer.preshared_key)))
    if peer.allowed_ips:
        pairs.append(("AllowedIPs", ", ".join(str(n) for n in peer.allowed_ips)))
    if peer.endpoint is not None:
        pairs.append(("Endpoint", str(peer.endpoint)))
    if peer.persistent_keepalive:
        pairs.append(("PersistentKeepalive", str(peer.persistent_keepalive)))
    if peer.egress is not None:
        pairs.append(("Egress", peer.egress.to_text()))
    return pairs


def render(config: DeviceConfig, newline: str = "\n") -> str:
    """A fresh device file for a model, `[Exit]` included when it is not all defaults; edits of
    existing files go through the document so that nothing else in them changes. (What shows a
    device to WireGuard, `showconf` and the UAPI, is built from the running device and never
    carries `[Exit]`.)"""
    sections = [("Interface", interface_pairs(config.interface))]
    if not config.exit.is_default:
        sections.append(("Exit", exit_pairs(config.exit)))
    sections += [("Peer", peer_pairs(p)) for p in config.peers]
    blocks = []
    for name, pairs in sections:
        blocks.append(newline.join([f"[{name}]"] + [f"{k} = {val}" for k, val in pairs]) + newline)
    return newline.join(blocks)


__all__ = [
    "ConfigError",
    "DeviceConfig",
    "Document",
    "ExitSettings",
    "Interface",
    "Line",
    "Peer",
    "PAIR",
    "parse_bytes",
    "parse_document",
    "parse_text",
    "render",
]
