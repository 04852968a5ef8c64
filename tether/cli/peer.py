"""`tetherctl peer add|remove|config|list`: the API's operations for the operator's shell.

They edit the device file, exactly as the API does (same locking, allocation and rendering),
so they work with or without a daemon. When the device is running (its UAPI socket answers),
`add` and `remove` also wait until the daemon has applied the change; if it does not within a few
seconds, the file is still changed and a warning says the daemon has not picked it up.

Public addresses for the configs' Endpoint come from `--public-ipv4/--public-ipv6/
--public-domain`, their TETHERCTL_ variables, the device's `<name>.env` file (what the systemd
unit reads; `tetherctl add --ipv4=...` writes it), and else the default-route interface.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from tether import keys
from tether.api.hub import ApplyError, FileOnlyHub
from tether.api.peers import public as public_mod
from tether.api.peers.clientconf import ENDPOINT_TYPES, qr_terminal
from tether.api.peers.service import PeerError, PeerService, parse_public_key
from tether.cli import devenv
from tether.cli.parser import add_family, fail
from tether.config import store
from tether.device.uapi.server import run_dir as default_run_dir


def add_dir_options(p) -> None:
    """--config-dir and --run-dir: where a command finds the file and the running device."""
    p.add_env_option(
        "--config-dir",
        metavar="DIR",
        help=f"where device files live (default {store.DEFAULT_CONFIG_DIR})",
    )
    p.add_env_option("--run-dir", metavar="DIR", help="where running devices' UAPI sockets are")


def add_public_options(p) -> None:
    """The public addresses a client config's Endpoint may name."""
    p.add_env_option("--public-ipv4", metavar="IP", help="public IPv4 address for Endpoint")
    p.add_env_option("--public-ipv6", metavar="IP", help="public IPv6 address for Endpoint")
    p.add_env_option("--public-domain", metavar="NAME", help="public DNS name for Endpoint")


def register(sub) -> None:
    """Add `tetherctl peer add|remove|config|list` to the top-level parser."""
    psub = add_family(
        sub,
        "peer",
        help="add, remove, show or list peers (edits the file)",
        description=__doc__.splitlines()[0],
    )

    a = psub.add_parser("add", help="add a peer; prints its client config")
    a.add_argument("device", metavar="DEVICE")
    a.add_argument(
        "pubkey", metavar="PUBKEY", nargs="?", help="omit to make a key pair for the client"
    )
    a.add_argument("--endpoint-type", default="any", type=str.lower, choices=ENDPOINT_TYPES)
    a.add_argument("--qr", action="store_true", help="print the config as a QR code")
    add_dir_options(a)
    add_public_options(a)
    a.set_defaults(func=cmd_add)

    r = psub.add_parser("remove", help="remove a peer (no error if absent)")
    r.add_argument("device", metavar="DEVICE")
    r.add_argument("pubkey", metavar="PUBKEY")
    add_dir_options(r)
    r.set_defaults(func=cmd_remove)

    c = psub.add_parser("config", help="print a peer's client config")
    c.add_argument("device", metavar="DEVICE")
    c.add_argument("pubkey", metavar="PUBKEY")
    c.add_argument("--endpoint-type", default="any", type=str.lower, choices=ENDPOINT_TYPES)
    c.add_argument("--qr", action="store_true", help="print the config as a QR code")
    add_dir_options(c)
    add_public_options(c)
    c.set_defaults(func=cmd_config)

    lst = psub.add_parser("list", help="list peers: key, addresses, and live figures if up")
    lst.add_argument("device", metavar="DEVICE")
    add_dir_options(lst)
    lst.set_defaults(func=cmd_list)


# -- shared with the original's commands (tether.cli.original.peers) ---------------------------


def make_service(
    config_dir: Path,
    run_dir: str | None,
    device: str | None,
    *,
    ipv4: str | None = None,
    ipv6: str | None = None,
    domain: str | None = None,
    need_public: bool = True,
    source: str = "tetherctl",
    registry=None,
) -> tuple[FileOnlyHub, PeerService]:
    """A file-editing PeerService for one command, the API's operations without the API (so
    a shell edit and an HTTP add allocate and render alike); ValueError for bad options. The
    public addresses come from the options, else the environment, else <device>.env."""
    env = devenv.read(config_dir, device) if device else {}
    endpoints = None
    if need_public:
        endpoints = public_mod.resolve(
            devenv.lookup("public_ipv4", ipv4, env),
            devenv.lookup("public_ipv6", ipv6, env),
            devenv.lookup("public_domain", domain, env),
            warn=False,
        )
    hub = FileOnlyHub(config_dir, default_run_dir(run_dir))
    service = PeerService(hub, endpoints, include_psk=True, source=source, registry=registry)
    return hub, service


def resolve_device(service: PeerService, name: str) -> str:
    """The device's name, or a PeerError naming the file that is missing (the API's own
    message, "no such device", would not tell a shell user where to look)."""
    try:
        return service.resolve_device(name)
    except PeerError:
        path = store.device_path(service.hub.config_dir, name)
        raise PeerError(f"no device {name}: {path} does not exist") from None


def add_peer(
    service: PeerService, device: str, pubkey: str | None, endpoint_type: str
) -> tuple[str, str | None]:
    """Add and wait for the daemon; returns (client config, warning or None)."""
    name = resolve_device(service, device)
    key = parse_public_key(pubkey) if pubkey is not None else None
    added = service.add(name, key, endpoint_type, apply=False)
    return added.config, _wait_applied(service, name, added.peer.public_key)


def remove_peer(service: PeerService, device: str, pubkey: str) -> tuple[bool, str | None]:
    """Remove and wait for the daemon; returns (whether it was there, warning or None)."""
    name = resolve_device(service, device)
    key = parse_public_key(pubkey)
    from tether.api.fleet.render import managed_keys  # (no etcd client: just the marker)

    if key in managed_keys(service.device_config(name)):
        # the fleet's renderer would put it back: it is removed in etcd, through any host's API
        raise PeerError(
            f"peer {keys.encode(key)} is the fleet's (rendered from etcd): remove it through "
            f"the API of any host, DELETE /peer/remove/{keys.encode(key)}"
        )
    removed = service.remove(name, key, apply=False)
    return removed, _wait_applied(service, name, key)


def _wait_applied(service: PeerService, name: str, key: bytes) -> str | None:
    try:
        service.hub.apply_now(name, (key,))
    except ApplyError as e:
        return f"the file is changed, but {e}"
    return None


def print_config(text: str, qr: bool) -> None:
    """A client config as text, or as a QR code a phone's WireGuard app scans."""
    if qr:
        sys.stdout.write(qr_terminal(text))
    else:
        sys.stdout.write(text)


def _quiet_logging() -> None:
    # Library warnings (e.g. "the detected address is private") go to stderr once, tersely.
    logging.basicConfig(level=logging.WARNING, format="tetherctl: %(message)s")


# -- commands ----------------------------------------------------------------------------------


def _service(args, *, need_public: bool = True, source: str = "tetherctl"):
    """make_service from a `peer` subcommand's options (commands without public-address
    options pass need_public=False)."""
    public = (
        dict(ipv4=args.public_ipv4, ipv6=args.public_ipv6, domain=args.public_domain)
        if need_public
        else {}
    )
    return make_service(
        store.config_dir(args.config_dir),
        args.run_dir,
        args.device,
        need_public=need_public,
        source=source,
        **public,
    )


def cmd_add(args) -> int:
    """`peer add DEVICE [PUBKEY]`: without a key the client's key pair is made here and the
    printed config is complete."""
    _quiet_logging()
    try:
        _, service = _service(args, source="tetherctl peer add")
        text, warning = add_peer(service, args.device, args.pubkey, args.endpoint_type)
    except (PeerError, ValueError) as e:
        return fail(str(e))
    print_config(text, args.qr)
    if warning:
        print(f"tetherctl: warning: {warning}", file=sys.stderr)
    return 0


def cmd_remove(args) -> int:
    """`peer remove DEVICE PUBKEY`; a peer that is not there is no error (idempotent)."""
    _quiet_logging()
    try:
        _, service = _service(args, need_public=False)
        removed, warning = remove_peer(service, args.device, args.pubkey)
    except (PeerError, ValueError) as e:
        return fail(str(e))
    print("peer removed" if removed else "no such peer (nothing to remove)")
    if warning:
        print(f"tetherctl: warning: {warning}", file=sys.stderr)
    return 0


def cmd_config(args) -> int:
    """`peer config DEVICE PUBKEY`: the client config again (private key left to the client)."""
    _quiet_logging()
    try:
        _, service = _service(args)
        name = resolve_device(service, args.device)
        text = service.config(name, parse_public_key(args.pubkey), args.endpoint_type)
    except (PeerError, ValueError) as e:
        return fail(str(e))
    print_config(text, args.qr)
    return 0


def cmd_list(args) -> int:
    """`peer list DEVICE`: the file's peers, with live figures when the device is running."""
    _quiet_logging()
    try:
        hub, service = _service(args, need_public=False)
        name = resolve_device(service, args.device)
        peers = service.peers(name)
    except (PeerError, ValueError) as e:
        return fail(str(e))
    live = {s.public_key: s for s in hub.peer_stats(name)}
    for p in peers:
        cols = [keys.encode(p.public_key), ", ".join(map(str, p.allowed_ips)) or "(none)"]
        s = live.get(p.public_key)
        if s is not None:
            hs = f"{s.last_handshake:.0f}" if s.last_handshake else "never"
            cols.append(f"handshake={hs} rx={s.rx_bytes} tx={s.tx_bytes}")
        elif live:
            cols.append("not live")
        print("\t".join(cols))
    return 0


__all__ = ["register", "make_service", "add_peer", "remove_peer", "print_config"]
