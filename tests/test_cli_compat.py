"""The original's command set, each driven through `tetherctl cli` from a script (stdin)."""

from __future__ import annotations

import argparse
import http.client
import inspect
import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tether import keys
from tether.config import store

REPO = Path(__file__).resolve().parents[1]
PEER1 = "10NguWHSLJ0tUOr4AkbTtOEYHoagq1KH/PJSIJ3SwFs="
PRIV = "4HOYXaS0mtLH9ZChsPaDQ3W/L7Z/rrchr8CMDqZGgXg="
PUB = "UESAy9LgT3PR77Tl1RCnHuj+ZtFvYMeWahnTIEhEvXM="
DEVICE = f"""# article device
[Interface]
Address = 192.168.90.0/24
ListenPort = 0
PrivateKey = {PRIV}

# the first phone
[Peer]
PublicKey = {PEER1}
AllowedIPs = 192.168.90.1/32
"""


@pytest.fixture
def env(cli_env):
    return {**cli_env, "TETHERCTL_PUBLIC_IPV4": "88.42.58.36"}


def conf(env) -> Path:
    return Path(env["TETHERCTL_CONFIG_DIR"])


def device(env, name="tbywg0", text=DEVICE) -> Path:
    path = conf(env) / f"{name}.conf"
    path.write_text(text)
    os.chmod(path, 0o600)
    return path


def cli(env, *lines, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "tether", "cli"],
        input="".join(line + "\n" for line in lines),
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def new_key() -> str:
    return keys.encode(keys.public_from_private(keys.generate_private()))


def test_add(env):
    out = cli(env, "add --dname=tb1 --log=v --ipv4=1.2.3.4", "add --ipv6=2001:db8::1")
    assert out.returncode == 0, out.stderr
    path = conf(env) / "tb1.conf"
    assert out.stdout.splitlines()[0] == f"device tb1: {path} created"
    assert out.stdout.splitlines()[1] == f"device tb1: {path} exists"  # --dname kept
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    store.load(path)
    env_file = (conf(env) / "tb1.env").read_text()
    assert env_file == (
        "TETHERCTL_PUBLIC_IPV4=1.2.3.4\nTETHERCTL_LOG=verbose\nTETHERCTL_PUBLIC_IPV6=2001:db8::1\n"
    )
    bad = cli(env, "add --dname=tb1 --ipv4=2001:db8::1")
    assert bad.returncode == 1 and "not an IPv4 address" in bad.stderr


def test_remove(env):
    path = device(env)
    key = PRIV
    out = cli(env, "remove --dname=tbywg0", "get-device-names", "add")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "device tbywg0: removed (tbywg0.conf set aside as tbywg0.conf.removed)"
    assert lines[1] == f"device tbywg0: {path} restored"  # get-device-names printed nothing
    assert key in path.read_text()
    assert cli(env, "remove --dname=nothere").returncode == 1


def test_up_and_down(env, tmp_path):
    from tether.device.uapi.client import get

    device(env)
    new = tmp_path / "copy.conf"
    out = cli(env, "up --dname=tbywg0")
    assert out.returncode == 0, out.stderr
    try:
        snap = get(str(tmp_path / "run" / "tbywg0.sock"))
        assert snap.listen_port > 0 and [p.public_key for p in snap.peers] == [keys.decode(PEER1)]
        refused = cli(env, "remove --dname=tbywg0")
        assert refused.returncode == 1 and "is up; bring it down first" in refused.stderr
    finally:
        out = cli(env, f"down --dname=tbywg0 --new_file={new}")
    assert out.returncode == 0, out.stderr
    assert not (tmp_path / "run" / "tbywg0.sock").exists()
    assert new.read_text() == (conf(env) / "tbywg0.conf").read_text()


def test_get_config(env):
    device(env)
    out = cli(env, "get-config --dname=tbywg0")
    assert out.returncode == 0 and out.stdout == DEVICE


def test_save_config(env, tmp_path):
    from tether.device.uapi.client import request

    text = DEVICE.replace("ListenPort = 0\n", "")  # a random port, not pinned by SaveConfig
    device(env, text=text)
    saved = tmp_path / "saved.conf"
    assert cli(env, "up --dname=tbywg0").returncode == 0
    try:
        runtime = new_key()
        reply = request(
            str(tmp_path / "run" / "tbywg0.sock"),
            f"set=1\npublic_key={keys.decode(runtime).hex()}\nallowed_ip=192.168.90.77/32\n\n".encode(),
        )
        assert reply == b"errno=0\n\n"
        out = cli(env, f"save-config --dname=tbywg0 --new_file={saved}")
        assert out.returncode == 0, out.stderr
        got = saved.read_text()
        assert got.startswith(text)  # comments and layout kept, the runtime peer appended
        assert (
            got[len(text) :] == f"\n[Peer]\nPublicKey = {runtime}\nAllowedIPs = 192.168.90.77/32\n"
        )
        assert (conf(env) / "tbywg0.conf").read_text() == text  # only the copy changed
    finally:
        cli(env, "down --dname=tbywg0")
    out = cli(env, "save-config --dname=tbywg0")
    assert out.returncode == 0 and "is not running" in out.stdout


def test_gen_priv_key(env):
    out = cli(env, "gen-priv-key")
    assert out.returncode == 0 and keys.is_valid(out.stdout.strip())


def test_gen_pub_key(env):
    out = cli(env, f"gen-pub-key --priv_key={PRIV}", "gen-pub-key --priv_key=nope")
    assert out.stdout == PUB + "\n"
    assert out.returncode == 1 and "--priv_key" in out.stderr


def test_get_device_names(env):
    device(env, "b-one")
    device(env, "a-two")
    (conf(env) / "notes.txt").write_text("x")
    out = cli(env, "get-device-names")
    assert out.returncode == 0 and out.stdout == "a-two\nb-one\n"


def test_get_device(env):
    device(env)
    assert cli(env, "up --dname=tbywg0").returncode == 0
    try:
        out = cli(env, "get-device --dname=tbywg0")
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("interface: tbywg0\n")
        assert f"public key: {PUB}" in out.stdout and f"peer: {PEER1}" in out.stdout
        assert PRIV not in out.stdout
    finally:
        cli(env, "down --dname=tbywg0")
    out = cli(env, "get-device --dname=tbywg0")
    assert out.returncode == 1 and "is not running" in out.stderr


def test_change_device(env):
    path = device(env)
    new_priv = keys.genkey()
    out = cli(env, f"change-device --dname=tbywg0 --lport=33336 --priv_key={new_priv}")
    assert out.returncode == 0, out.stderr
    text = path.read_text()
    assert "ListenPort = 33336\n" in text and f"PrivateKey = {new_priv}\n" in text
    assert text.startswith("# article device\n") and "# the first phone\n" in text
    for bad in ("--lport=70000", "--priv_key=xyz", ""):
        assert cli(env, f"change-device {bad}").returncode == 1


def test_add_peer(env):
    path = device(env)
    key = "vi2iosrlXoDeZT08aXlq4AxXUNKO04NDuEeCw2Z7sD0="
    out = cli(env, f"add-peer --dname=tbywg0 --pub_key={key}")
    # ListenPort 0 and not running: the port clients must use is unknown, nothing is added
    assert out.returncode == 1 and out.stdout == ""
    assert "no known listen port" in out.stderr and key not in path.read_text()
    path.write_text(DEVICE.replace("ListenPort = 0", "ListenPort = 33336"))
    out = cli(env, f"add-peer --dname=tbywg0 --pub_key={key}")
    assert out.returncode == 0, out.stderr
    assert out.stdout == (
        f'# Config for public key "{key}"\n'
        "[Interface]\n"
        "PrivateKey = __PLACEHOLDER__ # replace with your private key\n"
        "Address = 192.168.90.2/32\n"
        "DNS = 1.1.1.1, 8.8.8.8\n"
        "\n"
        "[Peer]\n"
        f"PublicKey = {PUB}\n"
        "AllowedIPs = 0.0.0.0/0\n"
        "Endpoint = 88.42.58.36:33336\n"
    )
    again = cli(env, f"add-peer --dname=tbywg0 --pub_key={key}")
    assert again.returncode == 1 and "already exists" in again.stderr


def test_remove_peer(env):
    path = device(env)
    out = cli(
        env, f"remove-peer --dname=tbywg0 --pub_key={PEER1}", f"remove-peer --pub_key={PEER1}"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout == "peer removed\nno such peer (nothing to remove)\n"
    assert PEER1 not in path.read_text() and "first phone" not in path.read_text()


def test_get_peer_config(env):
    device(env, text=DEVICE.replace("ListenPort = 0", "ListenPort = 33336"))
    out = cli(env, f"get-peer-config --dname=tbywg0 --pub_key={PEER1}")
    assert out.returncode == 0, out.stderr
    assert "Address = 192.168.90.1/32\n" in out.stdout
    assert "Endpoint = 88.42.58.36:33336\n" in out.stdout
    out = cli(env, f"get-peer-config --dname=tbywg0 --pub_key={new_key()}")
    assert out.returncode == 1 and "no peer with this public key" in out.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port, method, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path)
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


class Script(io.StringIO):
    """stdin for the REPL that runs a check before handing out certain lines."""

    def __init__(self, lines, before):
        super().__init__("".join(x + "\n" for x in lines))
        self.before = before
        self.n = 0

    def readline(self, *a):
        self.n += 1
        if self.n in self.before:
            self.before[self.n]()
        return super().readline(*a)

    def isatty(self):
        return False


def test_start_api_and_stop_api_in_the_prompt(env, monkeypatch, capsys):
    from tether.cli import repl

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    device(env, text=DEVICE.replace("ListenPort = 0", "ListenPort = 33336"))
    port = free_port()
    key = "vi2iosrlXoDeZT08aXlq4AxXUNKO04NDuEeCw2Z7sD0="
    seen = {}

    def while_running():
        seen["add"] = request(port, "POST", f"/peer/add/any/{key}")
        seen["config"] = request(port, "GET", f"/peer/config/ipv4/{key}")

    def after_stop():
        with pytest.raises(OSError):
            request(port, "GET", "/healthz")
        seen["stopped"] = True

    stdin = Script(
        [
            f"start-api --dname=tbywg0 --api_url=127.0.0.1:{port}",
            "get-device-names",
            "stop-api",
            "gen-priv-key",
        ],
        {2: while_running, 4: after_stop},
    )
    args = argparse.Namespace(dname=None, config_dir=None, run_dir=None)
    assert repl.cmd_cli(args, stdin=stdin) == 0
    assert seen["add"][0] == 200 and "Address = 192.168.90.2/32" in seen["add"][1]
    assert "Endpoint = 88.42.58.36:33336" in seen["config"][1]
    assert seen["stopped"]
    out = capsys.readouterr().out
    assert f"API for tbywg0 listening on http://127.0.0.1:{port}\n" in out
    assert f"API at http://127.0.0.1:{port} stopped\n" in out


def test_start_api_as_a_command_and_stop_api_from_the_prompt(env):
    device(env, text=DEVICE.replace("ListenPort = 0", "ListenPort = 33336"))
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tether",
            "start-api",
            "--dname=tbywg0",
            f"--api_url=127.0.0.1:{port}",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                assert request(port, "GET", "/healthz") == (200, "ok: 1 device\n")
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)
        out = cli(env, "stop-api")
        assert out.returncode == 0 and out.stdout == "API stopped\n", out.stderr
        assert proc.wait(timeout=20) == 0
        assert cli(env, "stop-api").returncode == 1  # nothing left to stop
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)


def test_default_builder(env):
    from tether.appliance.daemon import Daemon

    if "api" not in inspect.signature(Daemon).parameters:
        pytest.skip("the daemon does not take api= yet (tether.appliance.daemon.Daemon)")
    device(env)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tether", "cli"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    line = f"default-builder --dname=tbywg0 --config={conf(env)}/ --api_url=127.0.0.1:{port}"
    proc.stdin.write(f"{line} --log=e\n".encode())
    proc.stdin.close()
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status, body = request(port, "POST", f"/peer/add/ipv4/{new_key()}")
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
                time.sleep(0.1)
        assert status == 200 and "Address = 192.168.90.2/32" in body, body
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0


def test_prompt_basics(env):
    out = cli(
        env, "# a comment", "", "help", "bogus", "gen-priv-key --nope", "exit", "gen-priv-key"
    )
    assert "commands (options as in the original" in out.stdout
    assert "unknown command 'bogus'" in out.stderr
    assert out.stdout.count("\n") > 10 and out.returncode == 1  # two lines failed
    ok = subprocess.run(
        [sys.executable, "-m", "tether", "cli"], input="", capture_output=True, text=True, env=env
    )
    assert ok.returncode == 0 and ok.stdout == ""  # clean exit on EOF, no prompt when piped
