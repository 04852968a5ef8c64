"""`tetherctl`: the command line (DESIGN.md §4).

Exit codes are the contract scripts rely on: 0 ok, 1 an error reported as one line on stderr,
2 a usage error (argparse's own convention). Every long option also reads an environment
variable `TETHERCTL_<OPTION>` so that a systemd unit's EnvironmentFile can set it.

Two families of commands share one program: tetherctl's own, in the style of wg and wg-quick
(`genkey`, `show`, `up DEVICE`, ...), and the original Go tool's, with its option spelling
(`add-peer --pub_key=...`), for its users' scripts. `--help` lists them under two headings so
that neither family is lost in the other.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field

from tether import __version__
from tether.cli import check, demo, invite, keycmds, original, peer, repl, run, show
from tether.cli.parser import PROG, Parser

DESCRIPTION = (
    "Userspace WireGuard devices with an exit to the host's network, configured by wg-quick files."
)
EPILOG = (
    f"`{PROG} help COMMAND` (or `{PROG} COMMAND -h`) shows a command's options. Every option can "
    "also be set in the environment as TETHERCTL_<OPTION> (--config-dir: TETHERCTL_CONFIG_DIR)."
)


@dataclass
class CommandGroup:
    """One heading of `tetherctl --help` and of the man page's COMMANDS section, with the
    commands listed under it as (name, one-line help)."""

    title: str
    description: str
    commands: list[tuple[str, str]] = field(default_factory=list)


class _Grouped:
    """What a module's `register(sub)` is handed: argparse's subparsers action, noting each
    command it adds under one group (argparse itself knows a single flat list)."""

    def __init__(self, sub, group: CommandGroup):
        self._sub = sub
        self._group = group

    def add_parser(self, name: str, **kwargs) -> Parser:
        self._group.commands.append((name, kwargs.get("help") or ""))
        return self._sub.add_parser(name, **kwargs)


class TopParser(Parser):
    """The top-level parser: its help lists the commands by group instead of argparse's one
    COMMAND list, and everything else (usage, options, epilog) as argparse does."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.command_groups: list[CommandGroup] = []

    def add_command_group(self, sub, title: str, description: str) -> _Grouped:
        """Start a heading of --help; returns what the modules register their commands on."""
        group = CommandGroup(title, description)
        self.command_groups.append(group)
        return _Grouped(sub, group)

    def format_help(self) -> str:
        """argparse's help with the commands listed by group (one list would mix the two
        families)."""
        formatter = self._get_formatter()
        formatter.add_usage(self.usage, self._actions, self._mutually_exclusive_groups)
        formatter.add_text(self.description)
        for group in self.command_groups:
            formatter.start_section(group.title)
            formatter.add_text(group.description)
            entries = [argparse.Action([], n, help=text, metavar=n) for n, text in group.commands]
            formatter.add_arguments(entries)
            formatter.end_section()
        formatter.start_section("options")
        formatter.add_arguments([a for a in self._actions if a.option_strings])
        formatter.end_section()
        formatter.add_text(self.epilog)
        return formatter.format_help()


def build_parser() -> TopParser:
    """The whole command line; the man page and the shell completion are generated from it
    (scripts/gen-docs), so it is the one description of every command and option."""
    parser = TopParser(prog=PROG, description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=Parser, title="commands"
    )
    sub.required = True
    ours = parser.add_command_group(
        sub,
        "commands in the style of wg and wg-quick",
        "A DEVICE is the file <config-dir>/DEVICE.conf (default /etc/tetherctl).",
    )
    keycmds.register(ours)
    show.register(ours)
    run.register_up_down(ours)
    run.register(ours)
    check.register(ours)
    peer.register(ours)
    invite.register(ours)
    demo.register(ours)
    _register_help(ours, parser)
    theirs = parser.add_command_group(
        sub,
        "the original tetherctl's commands",
        "With its option spelling (--dname=bywg0, --config=DIR, --pub_key=KEY); up and down "
        "above take --dname too.",
    )
    repl.register(theirs)
    original.register(theirs)
    return parser


def _register_help(sub, parser: TopParser) -> None:
    p = sub.add_parser(
        "help",
        help="show this list, or a command's options (help COMMAND)",
        description="The same as `tetherctl --help`, or `tetherctl COMMAND --help`.",
    )
    p.add_argument("topic", nargs="*", metavar="COMMAND")
    # argparse prints the help and exits 0 (an unknown COMMAND: a usage error, status 2)
    p.set_defaults(func=lambda args: parser.parse_args([*args.topic, "--help"]))


def main(argv: list[str] | None = None) -> int:
    """The console script `tetherctl` and `python -m tether`: parse, run one command, turn
    Ctrl-C and a closed stdout into the exit statuses a shell expects."""
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
