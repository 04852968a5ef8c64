"""`tetherctl invite create|list|revoke`: the state file is the truth, with or without a daemon
(tests/e2e/test_join_e2e.py makes an invite while the daemon runs and redeems it in a browser)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tether.api.join import invites
from tether.api.registry import state_path

SERVER_PRIVATE = "4HOYXaS0mtLH9ZChsPaDQ3W/L7Z/rrchr8CMDqZGgXg="
DEVICE = f"""# my exit
[Interface]
Address = 10.60.0.1/24
ListenPort = 51999
PrivateKey = {SERVER_PRIVATE}
"""


@pytest.fixture
def env(cli_env):
    conf = Path(cli_env["TETHERCTL_CONFIG_DIR"])
    (conf / "tp0.conf").write_text(DEVICE)
    os.chmod(conf / "tp0.conf", 0o600)
    return {**cli_env, "TETHERCTL_PUBLIC_IPV4": "203.0.113.7"}


def tetherctl(env, *args):
    return subprocess.run(
        [sys.executable, "-m", "tether", *args], capture_output=True, text=True, env=env, timeout=60
    )


def state(env) -> tuple[Path, dict]:
    path = state_path(Path(env["TETHERCTL_CONFIG_DIR"]), "tp0")
    return path, json.loads(path.read_text())


def test_create_prints_the_url_once_and_stores_only_its_hash(env):
    made = tetherctl(env, "invite", "create", "tp0", "--uses", "2", "--expires", "2h",
                     "--api-listen", "0.0.0.0:9090")  # fmt: skip
    assert made.returncode == 0, made.stderr
    url = made.stdout.strip()
    assert url.startswith("http://203.0.113.7:9090/join/")
    code = url.rsplit("/", 1)[1]
    assert invites.is_code(code)
    digest = invites.code_hash(code)
    assert f"invite {digest[:10]}: 2 uses" in made.stderr and code not in made.stderr
    assert "plain HTTP" in made.stderr  # the code and, through the page, the key need TLS
    path, doc = state(env)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert code not in path.read_text() and doc["invites"][digest]["uses"] == 2
    listed = tetherctl(env, "invite", "list", "tp0")
    assert listed.returncode == 0 and code not in listed.stdout
    header, row = listed.stdout.splitlines()
    assert header.split() == ["ID", "USED", "STATUS", "EXPIRES", "TYPE", "CREATED"]
    assert row.split()[:3] == [digest[:10], "0/2", "usable"] and " UTC  any " in row
    # revoke takes the id, the code or the URL; an unknown one is an error
    assert (
        tetherctl(env, "invite", "revoke", "tp0", url).stdout == f"invite {digest[:10]} revoked\n"
    )
    again = tetherctl(env, "invite", "revoke", "tp0", digest[:10])
    assert again.returncode == 1 and "no invite of tp0 matches" in again.stderr
    assert state(env)[1]["invites"] == {}
    assert tetherctl(env, "invite", "list", "tp0").stdout == ""


def test_without_an_api_address_create_prints_the_path_and_says_so(env):
    made = tetherctl(env, "invite", "create", "tp0")
    assert made.returncode == 0, made.stderr
    assert made.stdout.startswith("/join/")
    assert "no API address is known" in made.stderr


def test_the_public_url_option_and_the_device_env_file(env):
    conf = Path(env["TETHERCTL_CONFIG_DIR"])
    made = tetherctl(
        env, "invite", "create", "tp0", "--api-public-url", "https://vpn.example.org/api/"
    )
    assert made.stdout.startswith("https://vpn.example.org/api/join/"), made.stderr
    assert "plain HTTP" not in made.stderr
    (conf / "tp0.env").write_text("TETHERCTL_API_PUBLIC_URL=https://join.example.org\n")
    made = tetherctl(env, "invite", "create", "tp0")
    assert made.stdout.startswith("https://join.example.org/join/"), made.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (("--uses", "0"), "--uses"),
        (("--uses", "many"), "--uses"),
        (("--uses", str(invites.MAX_USES + 1)), "--uses"),
        (("--expires", "soon"), "--expires"),
        (("--expires=-1h",), "--expires"),
        (("--api-public-url", "ftp://x"), "--api-public-url"),
        (("--api-public-url", "https://x/join?a=" + "b" * 600), "--api-public-url"),
    ],
)
def test_bad_options_are_one_line_errors_and_make_nothing(env, args, message):
    out = tetherctl(env, "invite", "create", "tp0", *args)
    assert out.returncode in (1, 2) and out.stdout == ""
    assert out.stderr.count("\n") == 1 and message in out.stderr, out.stderr
    assert (
        not state_path(Path(env["TETHERCTL_CONFIG_DIR"]), "tp0").exists()
        or not state(env)[1]["invites"]
    )


def test_an_unknown_device_is_an_error(env):
    out = tetherctl(env, "invite", "list", "nope0")
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "nope0" in out.stderr
