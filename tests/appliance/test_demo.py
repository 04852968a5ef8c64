"""`tetherctl demo` (the README's run command): no root, a ready client config, the peer API with
two curl lines that work as printed, a clear error when the API's port is taken, clean stop."""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tether import keys
from tether.config.editor import ConfigFile
from tether.device.uapi.client import get

REPO = Path(__file__).resolve().parents[2]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.bind(("::", 0))
        return s.getsockname()[1]


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(tmp_path, port, *extra):
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "tether", "demo", "--dir", str(tmp_path / "demo")]
        + ["--port", str(port), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=tmp_path,
    )


def wait_socket(path: Path, proc) -> None:
    deadline = time.monotonic() + 20
    while not path.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "demo did not come up"
        time.sleep(0.05)


def request(port: int, method: str, path: str, deadline: float = 20) -> tuple[int, str]:
    """The API is up once the device is; retry briefly while the daemon starts it."""
    end = time.monotonic() + deadline
    while True:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request(method, path)
            resp = conn.getresponse()
            return resp.status, resp.read().decode()
        except ConnectionRefusedError:
            if time.monotonic() > end:
                raise
            time.sleep(0.1)
        finally:
            conn.close()


def stop(proc) -> str:
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    return out


def check_client_config(text: str, server_public: str, udp_port: int, *, complete: bool):
    """What a wg-quick client file needs, read by our own parser as a device file."""
    cfg = ConfigFile.parse(text.replace("__PLACEHOLDER__", keys.genkey()), "client.conf")
    iface = cfg.config.interface
    assert [a.version for a in iface.addresses] == [4, 6]
    assert iface.dns == ["1.1.1.1", "8.8.8.8"]
    assert ("__PLACEHOLDER__" not in text) == complete
    [server] = cfg.config.peers
    assert server.public_key_b64 == server_public
    assert [str(n) for n in server.allowed_ips] == ["0.0.0.0/0", "::/0"]
    assert str(server.endpoint) == f"127.0.0.1:{udp_port}"
    return cfg


def test_demo_runs_prints_client_config_and_serves_the_api(tmp_path):
    port, api_port = free_udp_port(), free_tcp_port()
    proc = start(tmp_path, port, "--api-listen", f"127.0.0.1:{api_port}")
    sock = tmp_path / "demo" / "run" / "demo0.sock"
    try:
        wait_socket(sock, proc)
        snap = get(str(sock))
        assert snap.listen_port == port and len(snap.peers) == 1
        server_public = keys.encode(keys.public_from_private(snap.private_key))
        assert request(api_port, "GET", "/healthz")[0] == 200
        status, text = request(api_port, "POST", "/peer/new/any")
        assert status == 200, text
        new = check_client_config(text, server_public, port, complete=True)
        assert [str(a) for a in new.config.interface.addresses] == [
            "10.123.0.3/32",
            "fd00:123::3/128",
        ]
        # the peer is in the file and live on the device
        assert len(get(str(sock)).peers) == 2
    finally:
        out = stop(proc)
    assert "[Interface]\nPrivateKey = " in out.split("Peer API")[0]
    assert "Address = 10.123.0.2/32, fd00:123::2/128" in out
    assert f"Endpoint = 127.0.0.1:{port}" in out
    url = f"http://127.0.0.1:{api_port}"
    assert f"Peer API: {url} (loopback only, no token" in out
    assert f'    curl -X POST {url}/peer/add/any/"$(' in out
    assert f"    curl -X POST {url}/peer/new/any\n" in out
    conf = tmp_path / "demo" / "conf" / "demo0.conf"
    assert oct(conf.stat().st_mode & 0o777) == "0o600"
    assert not (tmp_path / "demo" / "conf" / "api-token").exists()  # loopback: no token
    # a second run reuses the device and does not invent another client; no API when off
    proc = start(tmp_path, port, "--api-listen", "off")
    try:
        wait_socket(sock, proc)
        assert len(get(str(sock)).peers) == 2
    finally:
        out = stop(proc)
    assert "shown on the first run only" in out and "Peer API" not in out


def test_the_printed_curl_lines_work_as_printed(tmp_path):
    """Paste-ready: the key line, then both curl lines, run by a shell exactly as printed."""
    if shutil.which("curl") is None:
        if os.environ.get("CI"):
            pytest.fail("curl is required in CI; .ci/run installs it")
        pytest.skip("curl not installed: apt-get install curl")
    port, api_port = free_udp_port(), free_tcp_port()
    proc = start(tmp_path, port, "--api-listen", f"127.0.0.1:{api_port}", "--log", "warning")
    sock = tmp_path / "demo" / "run" / "demo0.sock"
    lines: list[str] = []
    try:
        wait_socket(sock, proc)
        server_public = keys.encode(keys.public_from_private(get(str(sock)).private_key))
        while not any(line.startswith("State: ") for line in lines):
            lines.append(proc.stdout.readline())
        make_key = re.search(r"make one first with `([^`]+)`", "".join(lines)).group(1)
        add, new = (line.strip() for line in lines if line.startswith("    curl "))
        assert request(api_port, "GET", "/healthz")[0] == 200

        def shell(command: str) -> str:
            done = subprocess.run(
                ["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=30
            )
            assert done.returncode == 0, done.stderr
            return done.stdout

        shell(make_key)
        assert oct((tmp_path / "my.key").stat().st_mode & 0o777) == "0o600"
        private = keys.decode((tmp_path / "my.key").read_text().strip())
        mine = keys.encode(keys.public_from_private(private))
        added = shell(add)
        assert f'# Config for public key "{mine}"' in added
        check_client_config(added, server_public, port, complete=False)
        check_client_config(shell(new), server_public, port, complete=True)
        assert {keys.encode(p.public_key) for p in get(str(sock)).peers} >= {mine}
    finally:
        stop(proc)


def test_api_port_in_use_is_one_clear_line(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        proc = start(tmp_path, free_udp_port(), "--api-listen", f"127.0.0.1:{busy}")
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert out == (
        f"tetherctl: --api-listen 127.0.0.1:{busy}: the address is in use (another demo, or "
        "another service); choose another with --api-listen HOST:PORT, or --api-listen off\n"
    )
    assert not (tmp_path / "demo").exists()  # nothing written before the check


@pytest.mark.parametrize(
    "listen, message",
    [
        ("127.0.0.1:0", "name a port"),
        ("127.0.0.1:99999", "bad port"),
        ("api.example:9090", "host"),
        ("[::1", "missing ']'"),
    ],
)
def test_bad_api_listen_is_one_line(tmp_path, listen, message):
    proc = start(tmp_path, free_udp_port(), "--api-listen", listen)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1 and out.count("\n") == 1, out
    assert out.startswith(f"tetherctl: --api-listen {listen}: ") and message in out
