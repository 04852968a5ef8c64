"""The original tetherctl's commands, with its option spelling, mapped onto the file model.

In the original, one long-running CLI process held the devices in memory: `add` created a
device object, `up --config=DIR` loaded `DIR/<dname>.conf` into it, `start-api` served the API
from that process. Here a device *is* its file `<config dir>/<dname>.conf`, a daemon runs it and
applies every edit, so each command becomes a file edit or a request to the daemon (README,
"The original's commands", has the table). `--dname` defaults to bywg0 and, inside `tetherctl
cli`, keeps the last value given; `--config` is the config directory. Every option also reads
TETHERCTL_<OPTION> (`--api_url` <- TETHERCTL_API_URL).

`up` and `down` are the appliance's detached daemon (`tetherctl up|down DEVICE`, which this
module leaves to run.py at the top level and calls from the REPL).
"""

from __future__ import annotations

import datetime
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tether import keys
from tether.api.clientconf import ENDPOINT_TYPES
from tether.api.hub import live_snapshot
from tether.api.peers import PeerError
from tether.cli import devenv
from tether.cli import peer as peercmd
from tether.cli.run import LOG_LEVELS
from tether.config import store
from tether.config.editor import ConfigFile
from tether.config.errors import ConfigError
from tether.device.uapi_server import run_dir as default_run_dir

INITIAL_DNAME = "bywg0"
LOG_NAMES = {"v": "verbose", "e": "error", "s": "silent"}


class CommandError(Exception):
    """A command failed; the message is the one line printed on stderr."""


@dataclass
class Session:
    """State that outlives one command: the sticky --dname and, in the REPL, a running API."""

    dname: str = INITIAL_DNAME
    config_dir: str | None = None
    run_dir: str | None = None
    in_repl: bool = False
    api: object | None = None  # ApiHandle of `start-api` inside the REPL
    out: object = field(default_factory=lambda: sys.stdout)

    def close(self) -> None:
        if self.api is not None:
            self.api.stop()
            self.api = None


# -- option helpers ----------------------------------------------------------------------------


def _dname(args, session: Session) -> str:
    name = getattr(args, "dname", None) or session.dname
    try:
        store.check_device_name(name)
    except ValueError as e:
        raise CommandError(str(e)) from None
    session.dname = name
    return name


def _config_dir(args, session: Session) -> Path:
    given = getattr(args, "config", None) or session.config_dir
    if given and os.path.isfile(given):
        given = os.path.dirname(os.path.abspath(given))  # a file path names its directory
    return store.config_dir(given)


def _run_dir(session: Session) -> str:
    return default_run_dir(session.run_dir)


def _device_file(args, session: Session) -> tuple[Path, str]:
    name = _dname(args, session)
    return store.device_path(_config_dir(args, session), name), name


def _print(session: Session, text: str) -> None:
    session.out.write(text if text.endswith("\n") else text + "\n")


# -- commands ----------------------------------------------------------------------------------


def cmd_add(args, session: Session) -> None:
    """Create the device file (a fresh private key) unless it exists; a file set aside by
    `remove` is restored. --ipv4/--ipv6/--log go to <dname>.env for the daemon."""
    path, name = _device_file(args, session)
    aside = path.with_name(path.name + ".removed")
    if path.exists():
        store.load(path)  # an unreadable or invalid file is an error now, not at `up`
        state = "exists"
    elif aside.exists():
        os.rename(aside, path)
        state = "restored"
    else:
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        text = (
            f"# Device {name}, created by `tetherctl add` {stamp}.\n"
            "# Set Address (the tunnel address space peers get addresses from) and ListenPort.\n"
            "[Interface]\n"
            f"PrivateKey = {keys.genkey()}\n"
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        with store.locked(path):
            if path.exists():
                raise CommandError(f"{path} appeared meanwhile; not overwritten")
            store.atomic_write(path, text.encode())
        state = "created"
    env = {}
    for option, var in (("ipv4", "PUBLIC_IPV4"), ("ipv6", "PUBLIC_IPV6"), ("log", "LOG")):
        value = getattr(args, option, None)
        if value:
            env[f"TETHERCTL_{var}"] = LOG_NAMES.get(value, value)
    if env:
        from tether.api.public import resolve

        try:
            resolve(env.get("TETHERCTL_PUBLIC_IPV4"), env.get("TETHERCTL_PUBLIC_IPV6"), auto=False)
        except ValueError as e:
            raise CommandError(str(e)) from None
        devenv.update(path.parent, name, env)
    _print(session, f"device {name}: {path} {state}")


def cmd_remove(args, session: Session) -> None:
    """Take the device out of service: refuse while it is up, else set its file aside as
    <dname>.conf.removed (kept, with its keys; `add` brings it back)."""
    path, name = _device_file(args, session)
    if live_snapshot(_run_dir(session), name) is not None:
        raise CommandError(f"device {name} is up; bring it down first (down --dname={name})")
    if not path.exists():
        raise CommandError(f"no device {name}: {path} does not exist")
    with store.locked(path):
        os.replace(path, path.with_name(path.name + ".removed"))
    _print(session, f"device {name}: removed ({path.name} set aside as {path.name}.removed)")


def _daemon_args(path: Path, name: str, session: Session):
    import argparse

    env = devenv.read(path.parent, name)
    return argparse.Namespace(
        device=name,
        config_dir=str(path.parent),
        run_dir=session.run_dir,
        log=LOG_NAMES.get(env.get("TETHERCTL_LOG", "info"), env.get("TETHERCTL_LOG", "info")),
        state_dir=None,
        # the exit refuses the device's public addresses (`add --ipv4/--ipv6` wrote them here)
        public_ipv4=os.environ.get("TETHERCTL_PUBLIC_IPV4") or env.get("TETHERCTL_PUBLIC_IPV4"),
        public_ipv6=os.environ.get("TETHERCTL_PUBLIC_IPV6") or env.get("TETHERCTL_PUBLIC_IPV6"),
    )


def cmd_up(args, session: Session) -> None:
    """`tetherctl up DEVICE`: a detached daemon for the device, returning once it is up."""
    from tether.cli import run

    path, name = _device_file(args, session)
    if not path.exists():
        raise CommandError(f"no device {name}: {path} does not exist (add --dname={name})")
    if run.cmd_up(_daemon_args(path, name, session)):
        raise CommandError(f"device {name} did not come up")


def cmd_down(args, session: Session) -> None:
    """`tetherctl down DEVICE` (PreDown, SaveConfig, PostDown); then --new_file gets a copy of
    the file as SaveConfig left it."""
    from tether.cli import run

    path, name = _device_file(args, session)
    if run.cmd_down(_daemon_args(path, name, session)):
        raise CommandError(f"device {name} was not brought down")
    if args.new_file:
        store.copy_private(path, args.new_file)


def cmd_get_config(args, session: Session) -> None:
    path, _ = _device_file(args, session)
    store.load(path)
    _print(session, path.read_text(encoding="utf-8-sig"))


def cmd_save_config(args, session: Session) -> None:
    """Fold a running device's runtime changes (`wg set`, learned endpoints) into its file, or
    into a copy at --new_file, through the lossless editor (the appliance's SaveConfig)."""
    from tether.appliance.saveconfig import fold_running_state

    path, name = _device_file(args, session)
    store.load(path)
    target = Path(args.new_file) if args.new_file else path
    if target != path:
        store.copy_private(path, target)
    snap = live_snapshot(_run_dir(session), name)
    if snap is None:
        note = "" if target != path else f"; {path} is already its configuration"
        _print(session, f"device {name} is not running{note}")
        return
    state = running_state(snap)
    store.edit(target, lambda cfg: fold_running_state(cfg, state))
    _print(session, f"device {name}: running configuration saved to {target}")


def running_state(snap):
    """A UAPI snapshot as the appliance's RunningState (what SaveConfig folds into a file)."""
    from tether.device.state import PeerState, RunningState

    peers = {}
    for p in snap.peers:
        endpoint = None
        if p.endpoint is not None:
            endpoint = (str(p.endpoint.address), p.endpoint.port)
        peers[p.public_key] = PeerState(
            preshared_key=p.preshared_key,
            persistent_keepalive=p.persistent_keepalive_interval,
            allowed_ips=[str(n) for n in p.allowed_ips],
            endpoint=endpoint,
        )
    return RunningState(snap.private_key, snap.listen_port, 0, [], peers)


def cmd_gen_priv_key(args, session: Session) -> None:
    _print(session, keys.genkey())


def cmd_gen_pub_key(args, session: Session) -> None:
    try:
        _print(session, keys.pubkey(args.priv_key))
    except keys.InvalidKey as e:
        raise CommandError(f"--priv_key: {e}") from None


def cmd_get_device_names(args, session: Session) -> None:
    for name in store.list_devices(_config_dir(args, session)):
        _print(session, name)


def cmd_get_device(args, session: Session) -> None:
    """The running device as `wg show` describes it (`tetherctl show DEVICE`)."""
    import argparse

    from tether.cli import show

    name = _dname(args, session)
    if live_snapshot(_run_dir(session), name) is None:
        raise CommandError(f"device {name} is not running")
    session.out.flush()
    show.cmd_show(argparse.Namespace(device=name, run_dir=session.run_dir))


def cmd_change_device(args, session: Session) -> None:
    path, name = _device_file(args, session)
    changes: dict = {}
    if args.lport is not None:
        if not args.lport.isdigit() or not 0 <= int(args.lport) <= 65535:
            raise CommandError(f"--lport: {args.lport!r} is not a port (0-65535)")
        changes["listen_port"] = int(args.lport)
    if args.priv_key is not None:
        try:
            changes["private_key"] = keys.decode(args.priv_key)
        except keys.InvalidKey as e:
            raise CommandError(f"--priv_key: {e}") from None
    if not changes:
        raise CommandError("change-device needs --lport and/or --priv_key")

    def change(cfg: ConfigFile) -> None:
        if "private_key" in changes:
            public = keys.public_from_private(changes["private_key"])
            if cfg.peer(public) is not None:
                raise CommandError("--priv_key: its public key is one of the device's peers")
        cfg.update_interface(**changes)

    store.edit(path, change)
    _print(session, f"device {name}: changed ({', '.join(sorted(changes))})")


def _service(args, session: Session, need_public: bool = True):
    name = _dname(args, session)
    _, service = peercmd.make_service(
        _config_dir(args, session),
        _run_dir(session),
        name,
        need_public=need_public,
        source="tetherctl add-peer",
    )
    return name, service


def cmd_add_peer(args, session: Session) -> None:
    name, service = _service(args, session)
    text, warning = peercmd.add_peer(service, name, args.pub_key, args.endpoint_type)
    _print(session, text)
    if warning:
        print(f"tetherctl: warning: {warning}", file=sys.stderr)


def cmd_remove_peer(args, session: Session) -> None:
    name, service = _service(args, session, need_public=False)
    removed, warning = peercmd.remove_peer(service, name, args.pub_key)
    _print(session, "peer removed" if removed else "no such peer (nothing to remove)")
    if warning:
        print(f"tetherctl: warning: {warning}", file=sys.stderr)


def cmd_get_peer_config(args, session: Session) -> None:
    name, service = _service(args, session)
    device = peercmd.resolve_device(service, name)
    text = service.config(device, peercmd.parse_public_key(args.pub_key), args.endpoint_type)
    _print(session, text)


def _api_settings(args, session: Session, name: str):
    from tether.cli import run

    return run.api_settings(_api_namespace(args, session, name))


def _api_namespace(args, session: Session, name: str):
    """`run`'s options for the API of --dname: --api_url, and everything else (public
    addresses, access options) from TETHERCTL_<NAME> or <dname>.env."""
    import argparse

    from tether.cli import run

    env = devenv.read(_config_dir(args, session), name)
    names = ["public_ipv4", "public_ipv6", "public_domain", *run.API_ACCESS_OPTIONS]
    values = {
        n: os.environ.get(f"TETHERCTL_{n.upper()}") or env.get(f"TETHERCTL_{n.upper()}")
        for n in names
    }
    return argparse.Namespace(
        api_listen=args.api_url,
        api_device=name,
        config_dir=str(_config_dir(args, session)),
        **values,
    )


def _pidfile(session: Session) -> Path:
    return Path(_run_dir(session)) / "tetherctl-api.pid"


def cmd_start_api(args, session: Session) -> None:
    """Serve the API for --dname from this process (the REPL keeps it running until stop-api
    or exit; as a command it serves until SIGINT/SIGTERM). Adds answer once the running
    device (the daemon, over its UAPI socket) has applied them. The daemon can serve the same
    API itself: `tetherctl run --api-listen` or `default-builder`."""
    from tether.api.hub import FileOnlyHub

    path, name = _device_file(args, session)
    if not path.exists():
        raise CommandError(f"no device {name}: {path} does not exist")
    if session.api is not None:
        raise CommandError(f"an API is already running at {session.api.url} (stop-api first)")
    try:
        settings = _api_settings(args, session, name)
    except ValueError as e:
        raise CommandError(str(e)) from None
    handle = settings.start(FileOnlyHub(path.parent, _run_dir(session)))
    _print(session, f"API for {name} listening on {handle.url}")
    if session.in_repl:
        session.api = handle
        return
    pidfile = _pidfile(session)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        pidfile.parent.mkdir(parents=True, exist_ok=True)
        pidfile.write_text(f"{os.getpid()}\n")
        stop.wait()
    finally:
        handle.stop()
        try:
            if pidfile.read_text().strip() == str(os.getpid()):
                pidfile.unlink()
        except OSError:
            pass


def cmd_stop_api(args, session: Session) -> None:
    if session.api is not None:
        url = session.api.url
        session.close()
        _print(session, f"API at {url} stopped")
        return
    pidfile = _pidfile(session)
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        raise CommandError("no API is running (started by start-api)") from None
    if b"start-api" not in cmdline:
        pidfile.unlink(missing_ok=True)
        raise CommandError("no API is running (stale pid file removed)")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.05)
    _print(session, "API stopped")


def cmd_default_builder(args, session: Session) -> None:
    """The original's one-command workflow: device up from its file, public endpoint, API,
    serve until a signal, then API down and device down. That is `tetherctl run DNAME
    --api-listen API_URL`, the same foreground daemon systemd runs."""
    from tether.cli import run

    path, name = _device_file(args, session)
    ns = _api_namespace(args, session, name)
    ns.devices = [name]
    ns.config_dir = str(path.parent)
    ns.run_dir = session.run_dir
    ns.log = LOG_NAMES.get(args.log or "error", args.log or "error")
    code = run.cmd_run(ns)
    if code:
        raise CommandError(f"default-builder: the daemon exited with status {code}")


# -- registration ------------------------------------------------------------------------------

COMMANDS = {
    "add": (cmd_add, "create (or restore) a device file; record public IPs and log level"),
    "remove": (cmd_remove, "set a device's file aside (device must be down)"),
    "up": (cmd_up, "bring a device up (detached daemon)"),
    "down": (cmd_down, "bring a device down (PreDown, SaveConfig, PostDown)"),
    "get-config": (cmd_get_config, "print the device's file"),
    "save-config": (cmd_save_config, "write a running device's runtime changes to its file"),
    "gen-priv-key": (cmd_gen_priv_key, "print a new private key"),
    "gen-pub-key": (cmd_gen_pub_key, "print the public key of --priv_key"),
    "get-device-names": (cmd_get_device_names, "list devices (files in the config directory)"),
    "get-device": (cmd_get_device, "show the running device (like wg show)"),
    "change-device": (cmd_change_device, "set ListenPort and/or PrivateKey in the file"),
    "add-peer": (cmd_add_peer, "add a peer; prints its client config"),
    "remove-peer": (cmd_remove_peer, "remove a peer (no error if absent)"),
    "get-peer-config": (cmd_get_peer_config, "print a peer's client config"),
    "start-api": (cmd_start_api, "serve the peer API for the device from this process"),
    "stop-api": (cmd_stop_api, "stop the API started by start-api"),
    "default-builder": (cmd_default_builder, "run device + API in the foreground until a signal"),
}

# which options each command takes, as the original spelled them
OPTIONS = {
    "add": ["dname", "config", "log", "ipv4", "ipv6"],
    "remove": ["dname", "config"],
    "up": ["dname", "config"],
    "down": ["dname", "config", "new_file"],
    "get-config": ["dname", "config"],
    "save-config": ["dname", "config", "new_file"],
    "gen-priv-key": [],
    "gen-pub-key": ["priv_key!"],
    "get-device-names": ["config"],
    "get-device": ["dname"],
    "change-device": ["dname", "config", "lport", "priv_key"],
    "add-peer": ["pub_key!", "dname", "config", "endpoint_type"],
    "remove-peer": ["pub_key!", "dname", "config"],
    "get-peer-config": ["pub_key!", "dname", "config", "endpoint_type"],
    "start-api": ["dname", "config", "api_url"],
    "stop-api": [],
    "default-builder": ["dname!", "config!", "api_url!", "log"],
}


def _add_option(p, option: str, in_repl: bool) -> None:
    required = option.endswith("!")
    option = option.rstrip("!")
    flag = f"--{option}"
    kw: dict = {"required": required, "metavar": option.upper()}
    if option == "log":
        kw.update(choices=sorted(LOG_LEVELS), help="v(erbose), e(rror), s(ilent)")
    elif option == "endpoint_type":
        kw.update(type=str.lower, choices=ENDPOINT_TYPES, default="ipv4")
    elif option == "api_url":
        kw.update(default="localhost:9090", help="HOST:PORT; :PORT means every interface")
    elif option == "dname":
        kw.update(help="device name (keeps the last value in `tetherctl cli`)")
        if in_repl:
            p.add_argument(flag, **kw)  # the session's sticky value is the default
            return
    elif option == "config":
        kw.update(help=f"config directory (default {store.DEFAULT_CONFIG_DIR})")
    if required and "TETHERCTL_" + option.upper() in os.environ:
        kw["required"] = False  # the variable stands in for the option
    p.add_env_option(flag, **kw)


TOP_LEVEL_ELSEWHERE = {"up", "down"}  # `tetherctl up|down` are the appliance's (run.py)


def register(sub, *, in_repl: bool = False) -> None:
    for command, (func, help_text) in COMMANDS.items():
        if not in_repl and command in TOP_LEVEL_ELSEWHERE:
            continue
        p = sub.add_parser(command, help=help_text, description=help_text)
        for option in OPTIONS[command]:
            _add_option(p, option, in_repl)
        p.set_defaults(compat=func, func=_direct)


def run_command(args, session: Session) -> int:
    """Run one parsed command; errors become one line on stderr and status 1."""
    try:
        args.compat(args, session)
    except (CommandError, PeerError, ConfigError, ValueError, OSError) as e:
        print(f"tetherctl: {e}", file=sys.stderr)
        return 1
    return 0


def _direct(args) -> int:
    session = Session(dname=os.environ.get("TETHERCTL_DNAME") or INITIAL_DNAME)
    try:
        return run_command(args, session)
    finally:
        session.close()
