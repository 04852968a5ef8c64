"""`tetherctl demo`: the whole product on a demo device, with no root and nothing to configure.

It keeps its files in one directory (default `./demo`): `conf/demo0.conf` is written once with a
fresh key, an unprivileged port and a tunnel subnet, plus one ready client whose complete config
(private key included) is printed, so a stock WireGuard client can connect straight away. UAPI
sockets go to `run/` in the same directory, so no root is needed; `tetherctl show --run-dir
demo/run` shows the device.

The peer API is the original's central flow (a user adds their own peer over HTTP and gets a
config), so the demo serves it too, on 127.0.0.1:9090 as the original did, and prints two curl
lines to try it. It has no token: as DESIGN.md §5a says, an API without one trusts every caller
and so listens on loopback only; a non-loopback `--api-listen` gets the admin token file.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import shlex
import shutil
import socket
import sys
from pathlib import Path

from tether import keys
from tether.api.http.server import parse_listen
from tether.api.peers.allocator import Allocator
from tether.api.peers.clientconf import endpoint_text, render_client_config
from tether.cli.parser import PROG, fail
from tether.cli.run import LOG_LEVELS, setup_logging
from tether.config import store
from tether.config.editor import ConfigFile
from tether.config.model import Peer

DEMO_DEVICE = "demo0"
DEMO_PORT = 51820
DEMO_API = "127.0.0.1:9090"  # the original's default API address


def register(sub) -> None:
    """Add `tetherctl demo` to the top-level parser."""
    p = sub.add_parser(
        "demo",
        help="a demo device and its peer API (no root needed)",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--dir", default="demo", help="where the demo keeps its files (default ./demo)")
    p.add_argument("--port", type=int, default=DEMO_PORT, help="UDP port (default 51820)")
    p.add_env_option(
        "--public-ipv4",
        metavar="IP",
        help="the address clients reach this machine at (default: 127.0.0.1)",
    )
    p.add_env_option(
        "--api-listen",
        metavar="HOST:PORT",
        default=DEMO_API,
        help=f"where the peer API listens (default {DEMO_API}; off: no API)",
    )
    p.add_env_option("--log", metavar="LEVEL", default="info", choices=sorted(LOG_LEVELS))
    p.set_defaults(func=cmd_demo)


def demo_config(port: int) -> str:
    """The demo device's file: what an operator would write first, with comments saying so."""
    return (
        "# tetherctl demo device, written by `tetherctl demo`. Edit it while the demo runs:\n"
        "# changes are applied live.\n"
        "[Interface]\n"
        f"PrivateKey = {keys.genkey()}\n"
        f"ListenPort = {port}\n"
        "Address = 10.123.0.1/24, fd00:123::1/64\n"
    )


def ensure_demo(directory: Path, port: int) -> tuple[Path, str | None]:
    """Create the demo files once; returns the device file and, on first run, the client's
    private key (it is printed once and never stored)."""
    conf_dir = directory / "conf"
    conf_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    (directory / "run").mkdir(exist_ok=True, mode=0o700)
    path = store.device_path(conf_dir, DEMO_DEVICE)
    if path.exists():
        return path, None
    client_private = keys.generate_private()

    def create():
        return ConfigFile.parse(demo_config(port), path.name)

    def add_client(cfg):
        iface = cfg.config.interface
        alloc = Allocator(iface.addresses, [p.allowed_ips for p in cfg.config.peers])
        cfg.add_peer(
            Peer(keys.public_from_private(client_private), allowed_ips=alloc.allocate()),
            comment="the demo client",
        )

    store.edit(path, add_client, create=create)
    return path, keys.encode(client_private)


def port_in_use(host: str, port: int) -> bool:
    """Whether something already listens on the API's address. Checked before the daemon
    starts, so that the demo's most likely failure (a second demo, or another service on
    9090) is one clear line instead of a log entry after the device came up."""
    host = "0.0.0.0" if host == "*" else host
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the API's server does
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def own_command() -> str:
    """How the user's shell runs this tetherctl: `tetherctl` when it is on PATH, else the
    script beside this Python (`.venv/bin/tetherctl` after `make run`), else `python -m`."""
    if shutil.which(PROG):
        return PROG
    script = Path(sys.executable).parent / PROG
    if not script.exists():
        return f"{shlex.quote(sys.executable)} -m tether"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return shlex.quote(str(script))


def api_url(host: str, port: int) -> str:
    """The URL a local curl reaches the API at (an every-interface listener via loopback)."""
    if host in ("*", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://{endpoint_text(host, port)}"


def api_lines(url: str, token_file: str | None) -> list[str]:
    """What the demo prints about its API: two curl lines to paste, one per way of adding a
    peer (the user's own key; a key pair the server makes)."""
    me = own_command()
    access = (
        "loopback only, no token: every local caller may add peers, as with the original"
        if token_file is None
        else f"the admin token is in {token_file}; anyone may still add a peer"
    )
    return [
        f"Peer API: {url} ({access})",
        f"  Add a peer with your own key; make one first with `(umask 077; {me} genkey > my.key)`"
        " (or `wg genkey`):",
        f'    curl -X POST {url}/peer/add/any/"$({me} pubkey < my.key)"',
        "  Get a complete config, its key pair made by the server:",
        f"    curl -X POST {url}/peer/new/any",
    ]


def cmd_demo(args) -> int:
    """Write the demo files once, print how to connect, run the daemon until Ctrl-C."""
    from tether.api.settings import ApiSettings  # bottle & co.: see tether.cli.run's docstring
    from tether.appliance.daemon import Daemon  # the whole stack, likewise

    setup_logging(args.log)
    host = args.public_ipv4 or "127.0.0.1"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return fail(f"--public-ipv4 {host!r} is not an IP address")
    directory = Path(args.dir).resolve()
    listen = None if args.api_listen.strip().lower() == "off" else args.api_listen
    if listen is not None:
        try:
            api_host, api_port = parse_listen(listen)
            busy = api_port != 0 and port_in_use(api_host, api_port)
        except (ValueError, OSError) as e:
            return fail(f"--api-listen {listen}: {e}")
        if api_port == 0:
            return fail(f"--api-listen {listen}: name a port (the curl lines need it)")
        if busy:
            return fail(
                f"--api-listen {listen}: the address is in use (another demo, or another "
                "service); choose another with --api-listen HOST:PORT, or --api-listen off"
            )
    path, client_private = ensure_demo(directory, args.port)
    api = None
    if listen is not None:
        try:
            api = ApiSettings.from_options(
                listen,
                device=DEMO_DEVICE,
                public_ipv4=host,
                # on loopback, IPv6 clients are local too (and the host's own IPv6 is no use)
                public_ipv6="::1" if ipaddress.ip_address(host).is_loopback else None,
                config_dir=path.parent,
            )
        except ValueError as e:
            return fail(f"--api-listen {listen}: {e}")
    cfg = store.load(path)
    port = cfg.config.interface.listen_port or args.port
    print(f"tetherctl demo: device {DEMO_DEVICE} from {path}")
    print(
        f"  public key {keys.encode(cfg.config.interface.public_key)}, "
        f"endpoint {endpoint_text(host, port)}"
    )
    if client_private and cfg.config.peers:
        client = cfg.config.peers[-1]
        print(
            "\nA client config (import it into any WireGuard app, or save it and run "
            "`wg-quick up`):\n"
        )
        print(
            render_client_config(
                cfg.config, client, host, port, private_key=keys.decode(client_private)
            )
        )
    else:
        print("  (the demo client's private key was shown on the first run only)")
    if api is not None:
        print("\n".join(api_lines(api_url(api.host, api.port), api.token_file)) + "\n")
    print(f"State: {own_command()} show --run-dir {directory / 'run'}    Stop: Ctrl-C\n")
    sys.stdout.flush()

    async def main() -> int:
        daemon = Daemon(path.parent, [DEMO_DEVICE], run_dir=str(directory / "run"), api=api)
        return await daemon.run()

    return asyncio.run(main())
