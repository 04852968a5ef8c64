"""The original's device commands, mapped onto "a device is its file, a daemon runs it".

The original created, changed and saved devices inside its own long-running process. Here
`add` and `change-device` edit `<config>/<dname>.conf` (the running daemon applies the edit),
`up`/`down` are the appliance's detached daemon, and `get-device`/`save-config` read the running
device over its UAPI socket, so each command works from any shell, at any time.
"""

from __future__ import annotations

import argparse
import datetime
import os
from pathlib import Path

from tether import keys
from tether.api.hub import live_snapshot
from tether.api.peers.public import resolve
from tether.appliance.saveconfig import fold_running_state
from tether.cli import devenv, run, show
from tether.cli.original.session import (
    LOG_NAMES,
    Command,
    CommandError,
    Session,
    config_dir,
    device_file,
    device_name,
    emit,
    run_dir,
)
from tether.config import store
from tether.config.editor import ConfigFile
from tether.device.state import PeerState, RunningState

# `add`'s options that it records in <dname>.env for the daemon, and the setting each one is
ADD_SETTINGS = {"ipv4": "public_ipv4", "ipv6": "public_ipv6", "log": "log"}


def cmd_add(args, session: Session) -> None:
    """Create the device file (a fresh private key) unless it exists; a file set aside by
    `remove` is restored. --ipv4/--ipv6/--log go to <dname>.env for the daemon."""
    path, name = device_file(args, session)
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
    settings = {}
    for option, setting in ADD_SETTINGS.items():
        value = getattr(args, option, None)
        if value:
            settings[setting] = LOG_NAMES.get(value, value)
    if settings:
        try:
            resolve(settings.get("public_ipv4"), settings.get("public_ipv6"), auto=False)
        except ValueError as e:
            raise CommandError(str(e)) from None
        devenv.update(path.parent, name, {devenv.env_name(k): v for k, v in settings.items()})
    emit(session, f"device {name}: {path} {state}")


def cmd_remove(args, session: Session) -> None:
    """Take the device out of service: refuse while it is up, else set its file aside as
    <dname>.conf.removed (kept, with its keys; `add` brings it back)."""
    path, name = device_file(args, session)
    if live_snapshot(run_dir(session), name) is not None:
        raise CommandError(f"device {name} is up; bring it down first (down --dname={name})")
    if not path.exists():
        raise CommandError(f"no device {name}: {path} does not exist")
    with store.locked(path):
        os.replace(path, path.with_name(path.name + ".removed"))
    emit(session, f"device {name}: removed ({path.name} set aside as {path.name}.removed)")


def daemon_args(path: Path, name: str, session: Session) -> argparse.Namespace:
    """`tetherctl up|down`'s options for the device, from what `add` recorded (or the
    environment): its log level and its public addresses, which the exit refuses."""
    env = devenv.read(path.parent, name)
    level = devenv.lookup("log", None, env) or "info"
    return argparse.Namespace(
        device=name,
        config_dir=str(path.parent),
        run_dir=session.run_dir,
        log=LOG_NAMES.get(level, level),
        state_dir=None,
        public_ipv4=devenv.lookup("public_ipv4", None, env),
        public_ipv6=devenv.lookup("public_ipv6", None, env),
    )


def cmd_up(args, session: Session) -> None:
    """`tetherctl up DEVICE`: a detached daemon for the device, returning once it is up."""
    path, name = device_file(args, session)
    if not path.exists():
        raise CommandError(f"no device {name}: {path} does not exist (add --dname={name})")
    if run.cmd_up(daemon_args(path, name, session)):
        raise CommandError(f"device {name} did not come up")


def cmd_down(args, session: Session) -> None:
    """`tetherctl down DEVICE` (PreDown, SaveConfig, PostDown); then --new_file gets a copy of
    the file as SaveConfig left it."""
    path, name = device_file(args, session)
    if run.cmd_down(daemon_args(path, name, session)):
        raise CommandError(f"device {name} was not brought down")
    if args.new_file:
        store.copy_private(path, args.new_file)


def cmd_get_config(args, session: Session) -> None:
    """The device's file as it is (checked first, so a broken file is an error, not output)."""
    path, _ = device_file(args, session)
    store.load(path)
    emit(session, path.read_text(encoding="utf-8-sig"))


def cmd_save_config(args, session: Session) -> None:
    """Fold a running device's runtime changes (`wg set`, learned endpoints) into its file, or
    into a copy at --new_file, through the lossless editor (the appliance's SaveConfig)."""
    path, name = device_file(args, session)
    store.load(path)
    target = Path(args.new_file) if args.new_file else path
    if target != path:
        store.copy_private(path, target)
    snap = live_snapshot(run_dir(session), name)
    if snap is None:
        note = "" if target != path else f"; {path} is already its configuration"
        emit(session, f"device {name} is not running{note}")
        return
    state = running_state(snap)
    store.edit(target, lambda cfg: fold_running_state(cfg, state))
    emit(session, f"device {name}: running configuration saved to {target}")


def running_state(snap) -> RunningState:
    """A UAPI snapshot as the appliance's RunningState, the form SaveConfig folds into a file
    (save-config reads a device another process runs, so it has only the snapshot)."""
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


def cmd_get_device_names(args, session: Session) -> None:
    """The devices there are: the `*.conf` files of the config directory."""
    for name in store.list_devices(config_dir(args, session)):
        emit(session, name)


def cmd_get_device(args, session: Session) -> None:
    """The running device as `wg show` describes it (`tetherctl show DEVICE`)."""
    name = device_name(args, session)
    if live_snapshot(run_dir(session), name) is None:
        raise CommandError(f"device {name} is not running")
    session.out.flush()
    show.cmd_show(argparse.Namespace(device=name, run_dir=session.run_dir))


def cmd_change_device(args, session: Session) -> None:
    """Set ListenPort and/or PrivateKey in the file; the daemon applies the edit live."""
    path, name = device_file(args, session)
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
    emit(session, f"device {name}: changed ({', '.join(sorted(changes))})")


COMMANDS = (
    Command(
        "add",
        cmd_add,
        "create (or restore) a device file; record IPs and log level",
        ("dname", "config", "log", "ipv4", "ipv6"),
    ),
    Command(
        "remove", cmd_remove, "set a device's file aside (device must be down)", ("dname", "config")
    ),
    Command("up", cmd_up, "bring a device up (detached daemon)", ("dname", "config")),
    Command(
        "down",
        cmd_down,
        "bring a device down (PreDown, SaveConfig, PostDown)",
        ("dname", "config", "new_file"),
    ),
    Command("get-config", cmd_get_config, "print the device's file", ("dname", "config")),
    Command(
        "save-config",
        cmd_save_config,
        "write a running device's runtime changes to its file",
        ("dname", "config", "new_file"),
    ),
    Command(
        "get-device-names",
        cmd_get_device_names,
        "list devices (files in the config directory)",
        ("config",),
    ),
    Command("get-device", cmd_get_device, "show the running device (like wg show)", ("dname",)),
    Command(
        "change-device",
        cmd_change_device,
        "set ListenPort and/or PrivateKey in the file",
        ("dname", "config", "lport", "priv_key"),
    ),
)
