"""`tetherctl --help` in two groups (wg-style, the original's), `help` consistent with `-h`, and
the one settings lookup every command uses (command line, then environment, then <dname>.env)."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest

from tether.cli import devenv
from tether.cli.main import build_parser

TETHERCTL = [sys.executable, "-m", "tether"]
OURS = "commands in the style of wg and wg-quick:"
THEIRS = "the original tetherctl's commands:"


def run(*args, env=None):
    env = {**os.environ, "COLUMNS": "80", **(env or {})}
    return subprocess.run(
        TETHERCTL + list(args), capture_output=True, text=True, timeout=30, env=env
    )


def listed(text: str, heading: str) -> list[str]:
    """The command names under a heading of --help (one per entry, in order)."""
    section = text.split(heading, 1)[1].split("\n\n", 2)[1]  # skip the description paragraph
    return [
        line.split()[0] for line in section.splitlines() if line.startswith("  ") and line[2] != " "
    ]


def test_help_lists_every_command_once_in_two_groups():
    out = run("--help")
    assert out.returncode == 0 and out.stderr == ""
    text = out.stdout
    assert text.index(OURS) < text.index(THEIRS) < text.index("\noptions:\n")
    ours, theirs = listed(text, OURS), listed(text, THEIRS)
    assert ours == [
        *("genkey", "genpsk", "pubkey", "show", "showconf", "up", "down", "run", "check"),
        *("peer", "invite", "demo", "help"),
    ]
    assert theirs[0] == "cli" and {"add", "add-peer", "start-api", "default-builder"} <= set(theirs)
    commands = build_parser().command_groups
    every = {name for group in commands for name, _ in group.commands}
    assert sorted(ours + theirs) == sorted(every)  # nothing listed twice, nothing missing
    assert not set(ours) & set(theirs)
    assert "\n  COMMAND\n" not in text  # argparse's flat list is gone
    assert max(len(line) for line in text.splitlines()) <= 80


def test_every_command_of_the_parser_is_in_a_group():
    parser = build_parser()
    grouped = {name for group in parser.command_groups for name, _ in group.commands}
    names = set()
    for action in parser._actions:  # the subparsers action: its choices are every command
        if isinstance(action.choices, dict):
            names |= set(action.choices)
    assert names == grouped


def test_help_command_matches_dash_h():
    assert run("help").stdout == run("-h").stdout == run("--help").stdout
    assert run("help", "peer", "add").stdout == run("peer", "add", "-h").stdout
    assert run("help", "add-peer").stdout == run("add-peer", "--help").stdout
    assert "--pub_key PUB_KEY" in run("help", "add-peer").stdout
    bad = run("help", "no-such-command")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_the_prompt_help_lists_commands_and_one_commands_options():
    from argparse import Namespace

    from tether.cli import repl

    class Input(io.StringIO):
        def isatty(self):
            return False

    out = io.StringIO()
    args = Namespace(dname=None, config_dir=None, run_dir=None)
    assert repl.cmd_cli(args, stdin=Input("help\n"), out=out) == 0
    text = out.getvalue()
    assert "  add-peer --pub_key=... [--dname=...] [--config=...] [--endpoint_type=...]\n" in text
    assert "  help [COMMAND] | exit\n" in text
    one = subprocess.run(
        TETHERCTL + ["cli"], input="help add-peer\n", capture_output=True, text=True, timeout=30
    )
    assert one.returncode == 0 and "--pub_key PUB_KEY" in one.stdout


def test_lookup_order_command_line_then_environment_then_device_file(tmp_path, monkeypatch):
    monkeypatch.delenv("TETHERCTL_PUBLIC_IPV4", raising=False)
    devenv.update(tmp_path, "tb0", {"TETHERCTL_PUBLIC_IPV4": "198.51.100.3"})
    file_env = devenv.read(tmp_path, "tb0")
    assert devenv.lookup("public_ipv4", None, file_env) == "198.51.100.3"
    monkeypatch.setenv("TETHERCTL_PUBLIC_IPV4", "198.51.100.2")
    assert devenv.lookup("public_ipv4", None, file_env) == "198.51.100.2"
    assert devenv.lookup("--public-ipv4", "198.51.100.1", file_env) == "198.51.100.1"
    monkeypatch.setenv("TETHERCTL_PUBLIC_IPV4", "")  # systemd's `VAR=`: no value
    assert devenv.lookup("public-ipv4", "", file_env) == "198.51.100.3"
    assert devenv.lookup("public_ipv6", None, file_env) is None
    assert devenv.env_name("--api_url") == "TETHERCTL_API_URL"


def test_the_original_up_reads_its_settings_through_the_lookup(tmp_path, monkeypatch):
    """`add --ipv4 --log` write <dname>.env; `up --dname` reads them, the environment first."""
    from tether.cli.original.devices import daemon_args
    from tether.cli.original.session import Session

    monkeypatch.delenv("TETHERCTL_PUBLIC_IPV4", raising=False)
    monkeypatch.delenv("TETHERCTL_LOG", raising=False)
    devenv.update(tmp_path, "tb0", {"TETHERCTL_PUBLIC_IPV4": "198.51.100.3", "TETHERCTL_LOG": "v"})
    args = daemon_args(tmp_path / "tb0.conf", "tb0", Session())
    assert (args.public_ipv4, args.log) == ("198.51.100.3", "verbose")
    monkeypatch.setenv("TETHERCTL_PUBLIC_IPV4", "198.51.100.2")
    assert daemon_args(tmp_path / "tb0.conf", "tb0", Session()).public_ipv4 == "198.51.100.2"


def test_a_value_one_env_line_cannot_hold_is_refused_before_writing(tmp_path):
    """`<dname>.env` is read line by line by systemd: a value with a line break would smuggle
    in a second variable, so it is refused and the file stays as it was."""
    devenv.update(tmp_path, "tb0", {"TETHERCTL_LOG": "verbose"})
    before = (tmp_path / "tb0.env").read_bytes()
    for bad in ("1.2.3.4\nTETHERCTL_API_LISTEN=0.0.0.0:80", "x\r", "a\0b"):
        with pytest.raises(ValueError, match="one line"):
            devenv.update(tmp_path, "tb0", {"TETHERCTL_PUBLIC_IPV4": bad})
    with pytest.raises(ValueError, match="not an environment variable name"):
        devenv.update(tmp_path, "tb0", {"TETHERCTL_X=1\nY": "2"})
    assert (tmp_path / "tb0.env").read_bytes() == before
    devenv.update(tmp_path, "tb0", {"TETHERCTL_PUBLIC_DOMAIN": "a\x0cb c"})  # one line still
    assert devenv.read(tmp_path, "tb0")["TETHERCTL_PUBLIC_DOMAIN"] == "a\x0cb c"
