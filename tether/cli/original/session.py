"""What every one of the original's commands shares: the session, the error, the option helpers.

In the original, one long-running CLI process held its devices in memory and remembered the last
`--dname`; `Session` is what is left of that process here (the sticky `--dname`, and the API a
`start-api` typed into `tetherctl cli` keeps running). A command module takes its parsed
options and a Session, and reports failure by raising `CommandError`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tether.config import store
from tether.device.uapi.server import run_dir as default_run_dir

INITIAL_DNAME = "bywg0"  # the original's default device
LOG_NAMES = {"v": "verbose", "e": "error", "s": "silent"}  # its one-letter --log values


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
        """Stop what the session started (the REPL's API): called when the prompt ends."""
        if self.api is not None:
            self.api.stop()
            self.api = None


@dataclass(frozen=True)
class Command:
    """One of the original's commands: how the registry adds it to a parser and runs it.
    `required` options come first in usage lines, as the original's help listed them."""

    name: str
    run: Callable  # (args, Session) -> None; raises CommandError
    help: str
    options: tuple[str, ...] = ()
    required: tuple[str, ...] = ()


def device_name(args, session: Session) -> str:
    """--dname, or the session's last one; a valid name becomes the session's (sticky) one."""
    name = getattr(args, "dname", None) or session.dname
    try:
        store.check_device_name(name)
    except ValueError as e:
        raise CommandError(str(e)) from None
    session.dname = name
    return name


def config_dir(args, session: Session) -> Path:
    """--config (a directory, or a device file naming its directory, as the original took)."""
    given = getattr(args, "config", None) or session.config_dir
    if given and os.path.isfile(given):
        given = os.path.dirname(os.path.abspath(given))
    return store.config_dir(given)


def run_dir(session: Session) -> str:
    """Where running devices' UAPI sockets are (how a command reaches the daemon)."""
    return default_run_dir(session.run_dir)


def device_file(args, session: Session) -> tuple[Path, str]:
    """The device's file and name, from --config and --dname."""
    name = device_name(args, session)
    return store.device_path(config_dir(args, session), name), name


def emit(session: Session, text: str) -> None:
    """A command's output, one line or more, to the session's stream (the REPL's, in tests)."""
    session.out.write(text if text.endswith("\n") else text + "\n")
