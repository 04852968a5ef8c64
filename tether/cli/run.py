"""`tetherctl run`, `up` and `down`: the appliance's daemon, in the foreground or detached.

`run` is what systemd runs: with no DEVICE, every `*.conf` in the config directory is brought
up (and files appearing later too). `up DEVICE` is the same daemon for one device, detached, for
a shell without systemd (wg-quick's habit). The options they share (directories, log level, the
API's, the exit's) are defined here once, and the original's `default-builder`/`start-api`
reuse `api_settings`.

The daemon and the API's settings are imported inside the functions that need them: together
they pull in bottle, waitress, prometheus_client and the whole protocol stack, about 0.2 s that
`tetherctl genkey` or `check` should not pay (measured with `python -X importtime`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys

from tether.api.peers import public
from tether.appliance import detach
from tether.cli import fleetenv
from tether.cli.devenv import take
from tether.config import filemode, store
from tether.device.uapi.server import DEFAULT_RUN_DIR, run_dir

# The original tool's levels (verbose, error, silent) beside Python's usual names.
LOG_LEVELS = {
    "verbose": logging.DEBUG,
    "v": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "e": logging.ERROR,
    "silent": logging.CRITICAL + 10,
    "s": logging.CRITICAL + 10,
}


def register(sub) -> None:
    """Add `tetherctl run` to the top-level parser."""
    p = sub.add_parser(
        "run",
        help="run devices in the foreground (what systemd runs)",
        description="The foreground daemon: no DEVICE = every *.conf in the config directory.",
    )
    p.add_argument("devices", nargs="*", metavar="DEVICE")
    add_common_options(p)
    add_api_options(p)
    add_exit_options(p)
    add_fleet_options(p)
    p.set_defaults(func=cmd_run)


def add_exit_options(p) -> None:
    """The exit's options (`run` and `up`): local destinations are refused unless asked."""
    p.add_env_option(
        "--allow-local-destinations",
        metavar="yes|no",
        default="no",
        choices=["yes", "no", "true", "false", "1", "0"],
        help="let peers reach this host's loopback, link-local and own addresses through the "
        "exit (refused by default)",
    )


def add_fleet_options(p) -> None:
    """A fleet of exits (DESIGN.md §7): peers shared with other hosts through etcd. The TLS and
    user options are spelled as etcdctl's; the password comes from a file or the environment
    (TETHERCTL_FLEET_ETCD_PASSWORD), never from the command line."""
    p.add_env_option(
        "--fleet-etcd",
        metavar="URL[,URL...]",
        help="share this daemon's peers with other hosts through etcd (its members' client URLs)",
    )
    p.add_env_option(
        "--fleet-prefix", metavar="PREFIX", help="where the fleet's keys live (default /tetherctl/)"
    )
    p.add_env_option("--fleet-etcd-cacert", metavar="FILE", help="CA bundle of etcd's TLS")
    p.add_env_option("--fleet-etcd-cert", metavar="FILE", help="client certificate for etcd")
    p.add_env_option("--fleet-etcd-key", metavar="FILE", help="client certificate's key")
    p.add_env_option(
        "--fleet-etcd-user",
        metavar="NAME",
        help="etcd user; the password is read from --fleet-etcd-password-file or "
        "TETHERCTL_FLEET_ETCD_PASSWORD",
    )
    p.add_env_option(
        "--fleet-etcd-password-file", metavar="FILE", help="the etcd user's password (first line)"
    )


def fleet(args):
    """The fleet the options ask for (None: none); ValueError with a one-line message. The
    password variable leaves the environment once read: PreUp/PostUp/... hooks inherit it."""
    password = take("fleet-etcd-password")
    urls = getattr(args, "fleet_etcd", None)
    extras = ("fleet_prefix", "fleet_etcd_cacert", "fleet_etcd_cert", "fleet_etcd_key")
    if not urls:
        given = [n for n in (*extras, "fleet_etcd_user") if getattr(args, n, None)]
        if given:
            raise ValueError(f"--{given[0].replace('_', '-')} needs --fleet-etcd")
        return None
    return fleetenv.make_fleet(urls, lambda dest: getattr(args, dest, None), password)


def allow_local(args) -> bool:
    """--allow-local-destinations as a bool (it takes yes/no spellings, as the files do)."""
    return str(getattr(args, "allow_local_destinations", "no")).lower() in ("yes", "true", "1")


def public_addresses(args) -> tuple[str, ...]:
    """--public-ipv4/--public-ipv6 as the exit refuses them (the host's own public addresses,
    which behind NAT are on no interface); ValueError on a bad one. A --public-domain is not
    resolved for this: name the addresses."""
    named = public.resolve(
        getattr(args, "public_ipv4", None), getattr(args, "public_ipv6", None), auto=False
    )
    return tuple(a for a in (named.ipv4, named.ipv6) if a)


def add_api_options(p) -> None:
    """The peer API's options and the public addresses its client configs name."""
    p.add_env_option("--api-listen", metavar="HOST:PORT", help="serve the peer API (default off)")
    p.add_env_option("--api-device", metavar="NAME", help="device of the bare API routes")
    p.add_env_option(
        "--api-token-file",
        metavar="FILE",
        help="the admin's bearer token (default for a non-loopback listener: "
        "<config-dir>/api-token, created when missing)",
    )
    p.add_env_option(
        "--api-self-service",
        metavar="open|invite|off",
        help="who may add a peer without the admin token: anyone (open, default), holders of "
        "an invite (invite) or nobody (off)",
    )
    p.add_env_option(
        "--api-public-url",
        metavar="URL",
        help="where phones reach the API when a reverse proxy fronts it (invite links); "
        "default http://<public domain or address>:<API port>",
    )
    p.add_env_option(
        "--api-rate-limit",
        metavar="PER_MINUTE[:BURST]",
        help="requests per client (IPv4 address, IPv6 /64) that are not the admin's; "
        "0 = off (default 30:10)",
    )
    p.add_env_option(
        "--api-trusted-proxy",
        metavar="CIDR[,...]",
        help="reverse proxies whose X-Forwarded-For names the client",
    )
    p.add_env_option(
        "--api-self-service-max",
        metavar="N",
        help="self-service peers a device may hold; 0 = no cap (default 1000)",
    )
    p.add_env_option(
        "--api-peer-expiry",
        metavar="DURATION",
        help="remove self-service peers that never complete a handshake after this long; "
        "0 = never (default 1h)",
    )
    p.add_env_option(
        "--api-address-quarantine",
        metavar="DURATION",
        help="a freed tunnel address is not handed out again for this long (default 10m, "
        "at least 5m)",
    )
    p.add_env_option("--public-ipv4", metavar="IP", help="public IPv4 address for client configs")
    p.add_env_option("--public-ipv6", metavar="IP", help="public IPv6 address for client configs")
    p.add_env_option("--public-domain", metavar="NAME", help="public name for client configs")


# The API's access options; the original's commands (start-api, default-builder) have no flags
# for them and read them from TETHERCTL_<NAME> or <dname>.env instead.
API_ACCESS_OPTIONS = (
    "api_token_file",
    "api_self_service",
    "api_rate_limit",
    "api_trusted_proxy",
    "api_self_service_max",
    "api_peer_expiry",
    "api_address_quarantine",
    "api_public_url",
)


def api_settings(args):
    """The API's settings from the options (None: no API); ValueError on a bad option."""
    if not getattr(args, "api_listen", None):
        return None
    from tether.api.settings import ApiSettings  # bottle & co.: see the module docstring

    return ApiSettings.from_options(
        args.api_listen,
        device=args.api_device,
        public_ipv4=args.public_ipv4,
        public_ipv6=args.public_ipv6,
        public_domain=args.public_domain,
        token_file=args.api_token_file,
        config_dir=args.config_dir,
        self_service=getattr(args, "api_self_service", None),
        rate_limit=getattr(args, "api_rate_limit", None),
        trusted_proxy=getattr(args, "api_trusted_proxy", None),
        self_service_max=getattr(args, "api_self_service_max", None),
        peer_expiry=getattr(args, "api_peer_expiry", None),
        quarantine=getattr(args, "api_address_quarantine", None),
        public_url=getattr(args, "api_public_url", None),
    )


def option_error(e: ValueError) -> int:
    """One line on stderr; status 2 for a usage error (an option value not offered), else 1."""
    from tether.api.settings import UsageError  # bottle & co.: see the module docstring

    print(f"tetherctl: {e}", file=sys.stderr)
    return 2 if isinstance(e, UsageError) else 1


def add_common_options(p) -> None:
    """Where the daemon finds its files and sockets, and how much it logs."""
    p.add_env_option(
        "--config-dir",
        "--config",
        metavar="DIR",
        help=f"where device files live (default {store.DEFAULT_CONFIG_DIR})",
    )
    p.add_env_option(
        "--run-dir",
        metavar="DIR",
        help=f"where UAPI sockets go (default {DEFAULT_RUN_DIR}, where wg looks)",
    )
    p.add_env_option(
        "--log",
        metavar="LEVEL",
        default="info",
        choices=sorted(LOG_LEVELS),
        help="verbose|debug|info|warning|error|silent",
    )


def setup_logging(level_name: str) -> None:
    """Log lines to stderr, where journald (or the terminal) collects them."""
    logging.basicConfig(
        level=LOG_LEVELS[level_name],
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def cmd_run(args) -> int:
    """The foreground daemon until a signal; its exit status is the daemon's."""
    from tether.appliance.daemon import Daemon  # the whole stack: see the module docstring

    setup_logging(args.log)
    try:
        for name in args.devices:
            store.check_device_name(name)
        api = api_settings(args)
        public = public_addresses(args)
        shared = fleet(args)
    except ValueError as e:
        return option_error(e)
    if api is not None and shared is not None:
        api = dataclasses.replace(api, fleet=shared)

    async def main() -> int:
        daemon = Daemon(
            store.config_dir(args.config_dir),
            list(args.devices),
            run_dir=run_dir(args.run_dir),
            api=api,
            allow_local=allow_local(args),
            public_addresses=public,
            fleet=shared,
        )
        return await daemon.run()

    return asyncio.run(main())


def register_up_down(sub) -> None:
    """Add `tetherctl up` and `down` (which also take the original's --dname)."""
    p = sub.add_parser(
        "up",
        help="bring DEVICE up in a detached daemon (like wg-quick up)",
        description="A detached daemon for DEVICE; returns once the device is up.",
    )
    p.add_argument("device", nargs="?", metavar="DEVICE")
    p.add_argument("--dname", help="the device, in the original tool's spelling")
    add_common_options(p)
    add_api_options(p)
    add_exit_options(p)
    add_fleet_options(p)
    p.add_env_option(
        "--state-dir",
        metavar="DIR",
        help="pidfile and log of detached daemons (default /run/tetherctl as root)",
    )
    p.set_defaults(func=cmd_up)
    p = sub.add_parser(
        "down",
        help="bring DEVICE down: PreDown, SaveConfig, PostDown",
        description="Stop DEVICE's detached daemon: PreDown, SaveConfig, PostDown.",
    )
    p.add_argument("device", nargs="?", metavar="DEVICE")
    p.add_argument("--dname", help="the device, in the original tool's spelling")
    p.add_env_option("--config-dir", "--config", metavar="DIR", help="where device files live")
    p.add_argument("--new_file", metavar="FILE", help="afterwards, copy the saved config here")
    p.add_env_option("--state-dir", metavar="DIR", help="where `up` put the pidfile")
    p.set_defaults(func=cmd_down)


def _device_arg(args) -> str:
    name = args.device or getattr(args, "dname", None)
    if not name:
        raise ValueError("which device? give DEVICE (or --dname=NAME)")
    return store.check_device_name(name)


def cmd_up(args) -> int:
    """Detach a daemon for the device and wait until it is up (or report why not)."""
    from tether.appliance.daemon import Daemon  # the whole stack: see the module docstring

    try:
        name = _device_arg(args)
        api = api_settings(args)
        public = public_addresses(args)
        shared = fleet(args)
    except ValueError as e:
        return option_error(e)
    if api is not None and shared is not None:
        api = dataclasses.replace(api, fleet=shared)
    directory = store.config_dir(args.config_dir)
    path = store.device_path(directory, name)
    if not path.exists():
        print(f"tetherctl: {path} does not exist", file=sys.stderr)
        return 1
    warning = filemode.exposure_warning(path)
    if warning:
        print(warning, file=sys.stderr)

    def make_daemon():
        return Daemon(
            directory,
            [name],
            run_dir=run_dir(args.run_dir),
            api=api,
            allow_local=allow_local(args),
            public_addresses=public,
            fleet=shared,
        )

    ok, message = detach.up(
        name,
        make_daemon,
        directory=detach.state_dir(args.state_dir),
        log_level=LOG_LEVELS[args.log],
    )
    print(message if ok else f"tetherctl: {message}", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def cmd_down(args) -> int:
    """Stop the device's detached daemon; --new_file then gets a copy of its file."""
    try:
        name = _device_arg(args)
    except ValueError as e:
        print(f"tetherctl: {e}", file=sys.stderr)
        return 1
    ok, message = detach.down(name, directory=detach.state_dir(args.state_dir))
    print(message if ok else f"tetherctl: {message}", file=sys.stdout if ok else sys.stderr)
    new_file = getattr(args, "new_file", None)
    if ok and new_file:
        source = store.device_path(store.config_dir(getattr(args, "config_dir", None)), name)
        try:
            store.copy_private(source, new_file)
        except OSError as e:
            print(f"tetherctl: --new_file {new_file}: {e}", file=sys.stderr)
            return 1
    return 0 if ok else 1
