"""`tetherctl cli`: the original's interactive prompt, line by line, scriptable through a pipe.

Each line is one of the original's commands with its options (`add --dname=tbywg0 --log=v`);
`help` lists them (`help COMMAND`: one command's options), `exit` or end of input leaves
(stopping an API that `start-api` started here). `--dname` keeps the last value given, as in
the original. The prompt `> ` is shown only on a terminal, so that a script's output is just the
commands' output. The exit status at end of input is 0 when every command succeeded and 1
otherwise, so that a script can tell.
"""

from __future__ import annotations

import shlex
import sys

from tether.cli import original
from tether.cli.parser import PROG, Parser
from tether.cli.peer import add_dir_options


def register(sub) -> None:
    """Add `tetherctl cli` to the top-level parser."""
    p = sub.add_parser(
        "cli",
        help="the original's interactive prompt (commands on stdin)",
        description=__doc__.splitlines()[0],
    )
    add_dir_options(p)
    p.add_env_option(
        "--dname", metavar="DNAME", help=f"initial device (default {original.INITIAL_DNAME})"
    )
    p.set_defaults(func=cmd_cli)


def _parser() -> Parser:
    parser = Parser(prog="", add_help=False, exit_on_error=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    original.register(sub, in_repl=True)
    return parser


def _help(out) -> None:
    out.write("commands (options as in the original, e.g. --dname=bywg0):\n")
    for command in original.COMMANDS.values():
        out.write(f"  {original.usage_line(command)}\n      {command.help}\n")
    out.write("  help [COMMAND] | exit\n")


def cmd_cli(args, stdin=None, out=None) -> int:
    """Read commands until end of input or `exit`; see the module's docstring for the rules.
    `stdin` and `out` are the terminal's unless a test hands in its own."""
    stdin = stdin or sys.stdin
    out = out or sys.stdout
    interactive = stdin.isatty()
    session = original.Session(
        dname=args.dname or original.INITIAL_DNAME,
        config_dir=args.config_dir,
        run_dir=args.run_dir,
        in_repl=True,
        out=out,
    )
    parser = _parser()
    failed = False
    try:
        while True:
            if interactive:
                out.write("> ")
                out.flush()
            try:
                line = stdin.readline()
            except KeyboardInterrupt:
                if not interactive:
                    return 130
                out.write("\n")
                continue
            if not line:
                break
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                words = shlex.split(line)
            except ValueError as e:
                print(f"{PROG}: {e}", file=sys.stderr)
                failed = True
                continue
            if words[0] in ("exit", "quit"):
                break
            if words[0] in ("help", "?"):
                if len(words) == 1:
                    _help(out)
                    continue
                words = [words[1], "--help"]  # `help add-peer`: that command's options
            if words[0] not in original.COMMANDS:
                print(f"{PROG}: unknown command {words[0]!r} (try help)", file=sys.stderr)
                failed = True
                continue
            try:
                parsed = parser.parse_args(words)
            except SystemExit as e:  # argparse printed usage or help
                failed = failed or bool(e.code)
                continue
            except Exception as e:  # argparse.ArgumentError with exit_on_error=False
                print(f"{PROG}: {e}", file=sys.stderr)
                failed = True
                continue
            if original.run_command(parsed, session):
                failed = True
            out.flush()
    finally:
        session.close()
    if interactive:
        out.write("\n")
        return 0
    return 1 if failed else 0
