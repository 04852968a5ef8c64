"""Hypothesis strategies for device configs: valid models, and the same models written out in
the many ways people format wg-quick files (key case, spacing, comments, CRLF, BOM)."""

from __future__ import annotations

import ipaddress

from hypothesis import strategies as st

from tether import keys
from tether.config.egress import DIRECT, Egress
from tether.config.exit_settings import (
    DEFAULT_MAX_BUFFER,
    DEFAULT_MAX_FLOWS,
    FLOWS_MAX,
    ExitSettings,
)
from tether.config.model import DeviceConfig, Interface, Peer
from tether.config.values import Endpoint

key_bytes = st.binary(min_size=32, max_size=32)
private_keys = key_bytes.map(keys.clamp)

v4_nets = st.builds(
    lambda a, p: ipaddress.ip_network((a, p), strict=False),
    st.integers(0, 2**32 - 1),
    st.integers(0, 32),
)
v6_nets = st.builds(
    lambda a, p: ipaddress.ip_network((a, p), strict=False),
    st.integers(0, 2**128 - 1),
    st.integers(0, 128),
)
networks = st.one_of(v4_nets, v6_nets)
v4_ifaces = st.builds(
    lambda a, p: ipaddress.ip_interface((a, p)), st.integers(0, 2**32 - 1), st.integers(0, 32)
)
v6_ifaces = st.builds(
    lambda a, p: ipaddress.ip_interface((a, p)), st.integers(0, 2**128 - 1), st.integers(0, 128)
)
hostnames = st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z][a-z0-9]{0,6}){0,3}", fullmatch=True)
endpoints = st.builds(
    Endpoint,
    st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str), hostnames),
    st.integers(1, 65535),
)
# RFC 1929 credentials: any text (percent-encoded when written), 1 to 255 bytes of UTF-8
credentials = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40)
egresses = (
    st.none()
    | st.just(DIRECT)
    | st.builds(
        lambda host, port, creds: Egress(host, port, *(creds or (None, None))),
        st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str), hostnames),
        st.integers(1, 65535),
        st.none() | st.tuples(credentials, credentials),
    )
)
dns_values = st.one_of(st.ip_addresses().map(str), hostnames)
# A hook is one shell command: anything printable on one line except '#', which starts a comment
hooks = (
    st.text(
        st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"), blacklist_characters="#"),
        min_size=1,
        max_size=30,
    )
    .map(str.strip)
    .filter(bool)
)

interfaces = st.builds(
    Interface,
    private_key=private_keys,
    listen_port=st.none() | st.integers(0, 65535),
    addresses=st.lists(st.one_of(v4_ifaces, v6_ifaces), max_size=3),
    dns=st.lists(dns_values, max_size=3),
    mtu=st.none() | st.integers(576, 65535),
    table=st.none() | st.sampled_from(["off", "auto", "1234", "main"]),
    fwmark=st.none() | st.integers(0, 2**32 - 1),
    pre_up=st.lists(hooks, max_size=2),
    post_up=st.lists(hooks, max_size=2),
    pre_down=st.lists(hooks, max_size=2),
    post_down=st.lists(hooks, max_size=2),
    save_config=st.booleans(),
)


def peers_strategy(max_size: int = 5):
    return st.lists(
        st.builds(
            Peer,
            public_key=key_bytes,
            preshared_key=st.none() | key_bytes,
            allowed_ips=st.lists(networks, max_size=4),
            endpoint=st.none() | endpoints,
            persistent_keepalive=st.integers(0, 65535),
            egress=egresses,
        ),
        max_size=max_size,
        unique_by=lambda p: p.public_key,
    )


@st.composite
def exit_settings(draw):
    """Any valid [Exit]: a per-peer limit never above its total (given or default)."""
    sizes = st.one_of(
        st.integers(1, 1 << 40),
        st.integers(1, 1 << 10).map(lambda n: n << 20),  # whole megabytes, written as 512M
    )
    max_flows = draw(st.none() | st.integers(1, FLOWS_MAX))
    per_peer = draw(st.none() | st.integers(1, max_flows or DEFAULT_MAX_FLOWS))
    max_buffer = draw(st.none() | sizes)
    buffer_per_peer = draw(st.none() | st.integers(1, max_buffer or DEFAULT_MAX_BUFFER))
    return ExitSettings(
        allow_destinations=tuple(draw(st.lists(networks, max_size=3))),
        deny_destinations=tuple(draw(st.lists(networks, max_size=2))),
        peer_to_peer=draw(st.booleans()),
        max_flows=max_flows,
        max_flows_per_peer=per_peer,
        max_buffer=max_buffer,
        max_buffer_per_peer=buffer_per_peer,
        egress=draw(egresses),
    )


configs = st.builds(
    DeviceConfig,
    interfaces,
    peers_strategy(),
    st.just(ExitSettings()) | exit_settings(),
)


def _casing(draw, word: str) -> str:
    style = draw(st.sampled_from(["canon", "lower", "upper", "mixed"]))
    if style == "lower":
        return word.lower()
    if style == "upper":
        return word.upper()
    if style == "mixed":
        flips = draw(st.lists(st.booleans(), min_size=len(word), max_size=len(word)))
        return "".join(c.upper() if f else c.lower() for c, f in zip(word, flips, strict=True))
    return word


LIST_KEYS = ("Address", "DNS", "AllowedIPs", "AllowDestinations", "DenyDestinations")


@st.composite
def messy_files(draw, config_strategy=configs):
    """(text, model): the model written with arbitrary but valid formatting."""
    from tether.config.exit_settings import exit_pairs
    from tether.config.model import interface_pairs, peer_pairs

    config = draw(config_strategy)
    nl = draw(st.sampled_from(["\n", "\r\n"]))
    comment = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=20)
    out: list[str] = []
    if draw(st.booleans()):
        out.append("\ufeff")

    def blank_or_comment():
        for _ in range(draw(st.integers(0, 2))):
            if draw(st.booleans()):
                out.append(draw(st.sampled_from(["", "  ", "\t"])) + nl)
            else:
                out.append(draw(st.sampled_from(["", " "])) + "#" + draw(comment) + nl)

    def write_section(name: str, pairs: list[tuple[str, str]]):
        blank_or_comment()
        pad = draw(st.sampled_from(["", " "]))
        out.append(f"{pad}[{_casing(draw, name)}]{pad}" + nl)
        groups: dict[str, list[str]] = {}
        for key, value in pairs:
            groups.setdefault(key, []).append(value)
        # keys in any order, but repeated keys (hooks) keep their relative order
        ordered = [(k, val) for k in draw(st.permutations(list(groups))) for val in groups[k]]
        for key, value in ordered:
            parts = [value]
            if key in LIST_KEYS and ", " in value and draw(st.booleans()):
                parts = value.split(", ")  # the list spread over repeated lines
            for part in parts:
                eq = draw(st.sampled_from(["=", " = ", "= ", " =", "\t=\t"]))
                trail = ""
                if draw(st.booleans()):
                    trail = draw(st.sampled_from([" ", "\t "])) + "#" + draw(comment)
                out.append(f"{_casing(draw, key)}{eq}{part}{trail}" + nl)
            if draw(st.integers(0, 4)) == 0:
                blank_or_comment()

    sections = [("Peer", peer_pairs(peer)) for peer in config.peers]
    exit_pairs_ = exit_pairs(config.exit)
    if not config.exit.is_default or draw(st.booleans()):
        if not exit_pairs_ and draw(st.booleans()):
            exit_pairs_ = [("PeerToPeer", "no")]  # a section that only states a default
        # [Exit] may sit anywhere after [Interface]: between peers or at the end
        sections.insert(draw(st.integers(0, len(sections))), ("Exit", exit_pairs_))
    write_section("Interface", interface_pairs(config.interface))
    for name, pairs in sections:
        write_section(name, pairs)
    blank_or_comment()
    text = "".join(out)
    if draw(st.booleans()) and text.endswith(nl):
        text = text[: -len(nl)]  # no newline at end of file
    return text, config
