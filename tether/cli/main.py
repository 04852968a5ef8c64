"""`tetherctl`: the command line (DESIGN.md §4).

Exit codes are the contract scripts rely on: 0 ok, 1 an error reported as one line on stderr,
2 a usage error (argparse's own convention). Every long option also reads an environment
variable `TETHERCTL_<OPTION>` so that a systemd unit's EnvironmentFile can set it.
"""

from __future__ import annotations

import argparse
import os
import sys

from tether import __version__
from tether.cli import check, compat, demo, keycmds, peer, repl, run, show

PROG = "tetherctl"


class Parser(argparse.ArgumentParser):
    def add_env_option(self, *flags: str, **kwargs) -> argparse.Action:
        """An option whose default comes from TETHERCTL_<NAME> when that variable is set."""
        long = next(f for f in flags if f.startswith("--"))
        env = "TETHERCTL_" + long[2:].upper().replace("-", "_")
        if env in os.environ:
            kwargs["default"] = os.environ[env]
        kwargs.setdefault("help", "")
        kwargs["help"] += f" (env {env})"
        return self.add_argument(*flags, **kwargs)


def build_parser() -> Parser:
    parser = Parser(
        prog=PROG,
        description="Userspace WireGuard devices with an exit to the "
        "host's network, configured by wg-quick files.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    keycmds.register(sub)
    check.register(sub)
    run.register(sub)
    peer.register(sub)
    repl.register(sub)
    compat.register(sub)
    run.register_up_down(sub)
    show.register(sub)
    demo.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # stdout closed early (`tetherctl genkey | head -c0`): exit quietly like wg does
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def fail(message: str) -> int:
    """One line on stderr and exit status 1: the error convention of every command."""
    print(f"{PROG}: {message}", file=sys.stderr)
    return 1
