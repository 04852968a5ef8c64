"""`tetherctl peer add|remove|config|list`: file edits with or without a running daemon."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tether import keys
from tether.config import store

REPO = Path(__file__).resolve().parents[1]
SERVER_PRIVATE = "4HOYXaS0mtLH9ZChsPaDQ3W/L7Z/rrchr8CMDqZGgXg="
PEER1 = "10NguWHSLJ0tUOr4AkbTtOEYHoagq1KH/PJSIJ3SwFs="
DEVICE = f"""# my exit
[Interface]
Address = 10.60.0.1/24
ListenPort = 51999
PrivateKey = {SERVER_PRIVATE}

# Alice
[Peer]
PublicKey = {PEER1}
AllowedIPs = 10.60.0.2/32
"""


@pytest.fixture
def env(cli_env):
    conf = Path(cli_env["TETHERCTL_CONFIG_DIR"])
    (conf / "tp0.conf").write_text(DEVICE)
    os.chmod(conf / "tp0.conf", 0o600)
    return {**cli_env, "TETHERCTL_PUBLIC_IPV4": "203.0.113.7"}


def tetherctl(env, *args, timeout=60):
    return subprocess.run(
        [sys.executable, "-m", "tether", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def conf_path(env) -> Path:
    return Path(env["TETHERCTL_CONFIG_DIR"]) / "tp0.conf"


def test_add_with_key_prints_config_and_edits_file(env):
    key = keys.encode(keys.public_from_private(keys.generate_private()))
    out = tetherctl(env, "peer", "add", "tp0", key, "--endpoint-type", "IPv4")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f'# Config for public key "{key}"\n')
    assert "Address = 10.60.0.3/32\n" in out.stdout
    assert "Endpoint = 203.0.113.7:51999\n" in out.stdout
    assert "PrivateKey = __PLACEHOLDER__" in out.stdout
    assert out.stderr == ""
    text = conf_path(env).read_text()
    assert text.startswith(DEVICE) and "# added by tetherctl peer add" in text
    again = tetherctl(env, "peer", "add", "tp0", key)
    assert again.returncode == 1
    assert again.stderr == "tetherctl: a peer with this public key already exists\n"


def test_add_without_key_makes_a_pair(env):
    out = tetherctl(env, "peer", "add", "tp0")
    assert out.returncode == 0, out.stderr
    private = out.stdout.split("PrivateKey = ")[1].split("\n")[0]
    public = keys.pubkey(private)
    cfg = store.load(conf_path(env))
    assert cfg.peer(keys.decode(public)) is not None
    assert private not in conf_path(env).read_text()


def test_add_qr(env):
    out = tetherctl(env, "peer", "add", "tp0", "--qr")
    assert out.returncode == 0
    assert "█" in out.stdout and "PrivateKey" not in out.stdout


def test_public_addresses_from_the_device_env_file(env):
    conf = Path(env["TETHERCTL_CONFIG_DIR"])
    (conf / "tp0.env").write_text("TETHERCTL_PUBLIC_DOMAIN='vpn.example.net'\n")
    out = tetherctl(env, "peer", "config", "tp0", PEER1, "--endpoint-type", "domain")
    assert out.returncode == 0, out.stderr
    assert "Endpoint = vpn.example.net:51999\n" in out.stdout
    out = tetherctl(
        env,
        "peer",
        "config",
        "tp0",
        PEER1,
        "--endpoint-type",
        "ipv6",
        "--public-ipv6",
        "2001:db8::9",
    )
    assert out.returncode == 0 and "Endpoint = [2001:db8::9]:51999\n" in out.stdout
    out = tetherctl(env, "peer", "config", "tp0", PEER1, "--public-ipv4", "300.1.1.1")
    assert out.returncode == 1 and "300.1.1.1" in out.stderr


def test_config_remove_list(env):
    out = tetherctl(env, "peer", "config", "tp0", PEER1)
    assert out.returncode == 0 and "Address = 10.60.0.2/32\n" in out.stdout
    out = tetherctl(env, "peer", "list", "tp0")
    assert out.stdout == f"{PEER1}\t10.60.0.2/32\n"
    out = tetherctl(env, "peer", "remove", "tp0", PEER1)
    assert out.returncode == 0 and out.stdout == "peer removed\n"
    assert "Alice" not in conf_path(env).read_text()
    out = tetherctl(env, "peer", "remove", "tp0", PEER1)
    assert out.returncode == 0 and out.stdout == "no such peer (nothing to remove)\n"
    out = tetherctl(env, "peer", "config", "tp0", PEER1)
    assert out.returncode == 1 and out.stderr == "tetherctl: no peer with this public key\n"
    assert tetherctl(env, "peer", "list", "tp0").stdout == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("add", "tp0", "short="), "invalid public key"),
        (("add", "nodev"), "no device nodev"),
        (("add", ".."), "is not a valid device name"),
        (("remove", "tp0", "A" * 43 + "="), ""),
        (("config", "tp0", "not base64"), "invalid public key"),
    ],
)
def test_errors_are_one_line(env, args, message):
    out = tetherctl(env, "peer", *args)
    if not message:
        assert out.returncode == 0
        return
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and message in out.stderr


def test_usage_errors_are_2(env):
    assert tetherctl(env, "peer").returncode == 2
    assert tetherctl(env, "peer", "add", "tp0", "--endpoint-type", "carrier").returncode == 2


def test_with_a_running_daemon_add_waits_until_live(env, tmp_path):
    from tether.device.uapi.client import get

    up = tetherctl(env, "up", "tp0", timeout=90)
    if up.returncode != 0:
        pytest.fail(f"tetherctl up failed: {up.stderr}")
    try:
        key = keys.encode(keys.public_from_private(keys.generate_private()))
        out = tetherctl(env, "peer", "add", "tp0", key)
        assert out.returncode == 0 and out.stderr == "", out.stderr
        snap = get(str(tmp_path / "run" / "tp0.sock"))
        live = {p.public_key: p for p in snap.peers}
        assert [str(n) for n in live[keys.decode(key)].allowed_ips] == ["10.60.0.3/32"]
        assert (
            "\t10.60.0.3/32\thandshake=never rx=0 tx=0"
            in tetherctl(env, "peer", "list", "tp0").stdout
        )
        out = tetherctl(env, "peer", "remove", "tp0", key)
        assert out.returncode == 0 and out.stderr == ""
        assert keys.decode(key) not in {
            p.public_key for p in get(str(tmp_path / "run" / "tp0.sock")).peers
        }
    finally:
        tetherctl(env, "down", "tp0", timeout=90)
