"""`tetherctl demo` (the README's run command): no root, a ready client config, clean stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tether.device.uapi_client import get

REPO = Path(__file__).resolve().parents[2]


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.bind(("::", 0))
        return s.getsockname()[1]


def start(tmp_path, port):
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    return subprocess.Popen(
        [sys.executable, "-m", "tether", "demo", "--dir", str(tmp_path), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def wait_socket(path: Path, proc) -> None:
    deadline = time.monotonic() + 20
    while not path.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "demo did not come up"
        time.sleep(0.05)


def test_demo_runs_prints_client_config_and_stops(tmp_path):
    port = free_udp_port()
    proc = start(tmp_path, port)
    sock = tmp_path / "run" / "demo0.sock"
    try:
        wait_socket(sock, proc)
        snap = get(str(sock))
        assert snap.listen_port == port and len(snap.peers) == 1
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "[Interface]\nPrivateKey = " in out and "__PLACEHOLDER__" not in out
    assert "Address = 10.123.0.2/32, fd00:123::2/128" in out
    assert f"Endpoint = 127.0.0.1:{port}" in out
    conf = tmp_path / "conf" / "demo0.conf"
    assert oct(conf.stat().st_mode & 0o777) == "0o600"
    # a second run reuses the device and does not invent another client
    proc = start(tmp_path, port)
    try:
        wait_socket(sock, proc)
        assert len(get(str(sock)).peers) == 1
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert "shown on the first run only" in out
