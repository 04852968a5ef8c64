"""The original's commands as parsers: one table, registered on `tetherctl` and on the prompt.

Both places must accept exactly the original's spelling (`--dname=bywg0`, `--pub_key=...`), so
the options are built here from the table in the command modules, once. At the top level every
option also reads TETHERCTL_<OPTION>; in the prompt `--dname` defaults to the session's last one.
"""

from __future__ import annotations

import sys

from tether.api.peers.clientconf import ENDPOINT_TYPES
from tether.api.peers.service import PeerError
from tether.cli import devenv
from tether.cli.original.api import COMMANDS as API
from tether.cli.original.devices import COMMANDS as DEVICES
from tether.cli.original.keys import COMMANDS as KEYS
from tether.cli.original.peers import COMMANDS as PEERS
from tether.cli.original.session import INITIAL_DNAME, Command, CommandError, Session
from tether.cli.run import LOG_LEVELS
from tether.config import store
from tether.config.errors import ConfigError

COMMANDS: dict[str, Command] = {c.name: c for c in (*DEVICES, *KEYS, *PEERS, *API)}
TOP_LEVEL_ELSEWHERE = {"up", "down"}  # `tetherctl up|down` are the appliance's (run.py)


def _add_option(p, option: str, required: bool, in_repl: bool) -> None:
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
    if required and devenv.lookup(option) is not None:
        kw["required"] = False  # the variable stands in for the option
    p.add_env_option(flag, **kw)


def register(sub, *, in_repl: bool = False) -> None:
    """Add the commands to a subparsers action: `tetherctl`'s (without up/down, which the
    appliance's own `up`/`down` cover with --dname) or the prompt's (all of them)."""
    for command in COMMANDS.values():
        if not in_repl and command.name in TOP_LEVEL_ELSEWHERE:
            continue
        p = sub.add_parser(command.name, help=command.help, description=command.help)
        for option in command.required:
            _add_option(p, option, True, in_repl)
        for option in command.options:
            _add_option(p, option, False, in_repl)
        p.set_defaults(original=command.run, func=_direct)


def usage_line(command: Command) -> str:
    """The command with its options as the prompt's `help` lists them."""
    words = [command.name]
    words += [f"--{o}=..." for o in command.required]
    words += [f"[--{o}=...]" for o in command.options]
    return " ".join(words)


def run_command(args, session: Session) -> int:
    """Run one parsed command; errors become one line on stderr and status 1."""
    try:
        args.original(args, session)
    except (CommandError, PeerError, ConfigError, ValueError, OSError) as e:
        print(f"tetherctl: {e}", file=sys.stderr)
        return 1
    return 0


def _direct(args) -> int:
    session = Session(dname=devenv.lookup("dname") or INITIAL_DNAME)
    try:
        return run_command(args, session)
    finally:
        session.close()
