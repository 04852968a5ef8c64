"""The original's API commands: `start-api`, `stop-api` and the one-command `default-builder`.

The original served its peer API from the CLI process that held the device. Here the device
runs in a daemon, so `start-api` serves the same API from whatever process runs it (the prompt,
or a command that serves until a signal) and reaches the device through its file and UAPI
socket; `default-builder` is the daemon itself with its API (`tetherctl run --api-listen`).
The API's access options have no flags in the original, so they come from the environment or
`<dname>.env`, like every other option.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
import time
from pathlib import Path

from tether.api.hub import FileOnlyHub
from tether.cli import devenv, run
from tether.cli.original.session import (
    LOG_NAMES,
    Command,
    CommandError,
    Session,
    config_dir,
    device_file,
    emit,
    run_dir,
)

PIDFILE_NAME = "tetherctl-api.pid"  # in the run directory, so that stop-api finds start-api
# the options of `run` that the API commands read from the environment or <dname>.env
SETTINGS = ("public_ipv4", "public_ipv6", "public_domain", *run.API_ACCESS_OPTIONS)


def api_options(args, session: Session, name: str) -> argparse.Namespace:
    """`run`'s options for the API of --dname: --api_url, and everything else (public
    addresses, access options) from TETHERCTL_<NAME> or <dname>.env."""
    directory = config_dir(args, session)
    env = devenv.read(directory, name)
    return argparse.Namespace(
        api_listen=args.api_url,
        api_device=name,
        config_dir=str(directory),
        **{option: devenv.lookup(option, None, env) for option in SETTINGS},
    )


def _pidfile(session: Session) -> Path:
    return Path(run_dir(session)) / PIDFILE_NAME


def cmd_start_api(args, session: Session) -> None:
    """Serve the API for --dname from this process (the REPL keeps it running until stop-api
    or exit; as a command it serves until SIGINT/SIGTERM). Adds answer once the running
    device (the daemon, over its UAPI socket) has applied them. The daemon can serve the same
    API itself: `tetherctl run --api-listen` or `default-builder`."""
    path, name = device_file(args, session)
    if not path.exists():
        raise CommandError(f"no device {name}: {path} does not exist")
    if session.api is not None:
        raise CommandError(f"an API is already running at {session.api.url} (stop-api first)")
    try:
        settings = run.api_settings(api_options(args, session, name))
    except ValueError as e:
        raise CommandError(str(e)) from None
    handle = settings.start(FileOnlyHub(path.parent, run_dir(session)))
    emit(session, f"API for {name} listening on {handle.url}")
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
    """Stop the API this prompt started, or else the `tetherctl start-api` process named by
    the pid file (checked to be one, so a recycled pid is never signalled)."""
    if session.api is not None:
        url = session.api.url
        session.close()
        emit(session, f"API at {url} stopped")
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
    emit(session, "API stopped")


def cmd_default_builder(args, session: Session) -> None:
    """The original's one-command workflow: device up from its file, public endpoint, API,
    serve until a signal, then API down and device down. That is `tetherctl run DNAME
    --api-listen API_URL`, the same foreground daemon systemd runs."""
    path, name = device_file(args, session)
    ns = api_options(args, session, name)
    ns.devices = [name]
    ns.config_dir = str(path.parent)
    ns.run_dir = session.run_dir
    level = devenv.lookup("log", args.log, devenv.read(path.parent, name)) or "error"
    ns.log = LOG_NAMES.get(level, level)
    code = run.cmd_run(ns)
    if code:
        raise CommandError(f"default-builder: the daemon exited with status {code}")


COMMANDS = (
    Command(
        "start-api",
        cmd_start_api,
        "serve the peer API for the device from this process",
        ("dname", "config", "api_url"),
    ),
    Command("stop-api", cmd_stop_api, "stop the API started by start-api"),
    Command(
        "default-builder",
        cmd_default_builder,
        "run device + API in the foreground until a signal",
        ("log",),
        required=("dname", "config", "api_url"),
    ),
)
