"""The argument parser every `tetherctl` command is registered on, and the one-line error.

A module of its own so that both parsers that exist, the top level's (`main`) and the prompt's
(`repl`, which `main` imports), are built from one class without importing each other.
"""

from __future__ import annotations

import argparse
import sys

from tether.cli.devenv import env_name, lookup

PROG = "tetherctl"


class Parser(argparse.ArgumentParser):
    """argparse plus the one rule of DESIGN.md §4 every command shares: each option can come
    from `TETHERCTL_<OPTION>`, so a systemd unit's EnvironmentFile can set it."""

    def add_env_option(self, *flags: str, **kwargs) -> argparse.Action:
        """An option whose default comes from TETHERCTL_<NAME> when that variable is set (the
        help text names the variable, so `--help` and the man page document it)."""
        long = next(f for f in flags if f.startswith("--"))
        env = env_name(long)
        value = lookup(long)
        if value is not None:
            kwargs["default"] = value
        kwargs.setdefault("help", "")
        kwargs["help"] += f" (env {env})"
        return self.add_argument(*flags, **kwargs)


def add_family(sub, name: str, *, help: str, description: str):
    """A command whose first argument is an action (`peer add`, `invite create`): returns the
    subparsers its actions are added to (one of them is required)."""
    p = sub.add_parser(name, help=help, description=description)
    actions = p.add_subparsers(dest=f"{name}_command", metavar="ACTION", parser_class=type(p))
    actions.required = True
    return actions


def fail(message: str) -> int:
    """One line on stderr and exit status 1: the error convention of every command."""
    print(f"{PROG}: {message}", file=sys.stderr)
    return 1
