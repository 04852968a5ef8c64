"""`tetherctl demo`: the appliance on a demo device, with no root and nothing to configure.

It keeps its files in one directory (default `./demo`): `conf/demo0.conf` is written once with a
fresh key, an unprivileged port and a tunnel subnet, plus one ready client whose complete config
(private key included) is printed, so a stock WireGuard client can connect straight away. UAPI
sockets go to `run/` in the same directory, so no root is needed; `tetherctl show --run-dir
demo/run` shows the device.
"""

from __future__ import annotations

import asyncio
import ipaddress
import sys
from pathlib import Path

from tether import keys
from tether.api.allocator import Allocator
from tether.api.clientconf import endpoint_text, render_client_config
from tether.cli.run import LOG_LEVELS, setup_logging
from tether.config import store
from tether.config.model import Peer

DEMO_DEVICE = "demo0"
DEMO_PORT = 51820


def register(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="run the appliance on a demo device (no root needed)",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("--dir", default="demo", help="where the demo keeps its files (default ./demo)")
    p.add_argument("--port", type=int, default=DEMO_PORT, help="UDP port (default 51820)")
    p.add_env_option(
        "--public-ipv4",
        metavar="IP",
        help="the address clients reach this machine at (default: 127.0.0.1)",
    )
    p.add_env_option("--log", metavar="LEVEL", default="info", choices=sorted(LOG_LEVELS))
    p.set_defaults(func=cmd_demo)


def demo_config(port: int) -> str:
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
        from tether.config.editor import ConfigFile

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


def cmd_demo(args) -> int:
    from tether.appliance.daemon import Daemon

    setup_logging(args.log)
    directory = Path(args.dir).resolve()
    path, client_private = ensure_demo(directory, args.port)
    cfg = store.load(path)
    host = args.public_ipv4 or "127.0.0.1"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        print(f"tetherctl: --public-ipv4 {host!r} is not an IP address", file=sys.stderr)
        return 1
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
    print(f"State: tetherctl show --run-dir {directory / 'run'}    Stop: Ctrl-C\n")
    sys.stdout.flush()

    async def main() -> int:
        daemon = Daemon(path.parent, [DEMO_DEVICE], run_dir=str(directory / "run"))
        return await daemon.run()

    return asyncio.run(main())
