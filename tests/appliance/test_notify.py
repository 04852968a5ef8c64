"""systemd notifications from a real daemon: READY with STATUS, RELOADING on SIGHUP, STOPPING."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tether import keys

REPO = Path(__file__).resolve().parents[2]


def receive_until(
    sock: socket.socket, wanted: str, seen: list[str], count: int = 1, timeout: float = 20
) -> None:
    """Collect datagrams into `seen` until `count` of them contain `wanted`."""
    deadline = time.monotonic() + timeout
    while sum(wanted in m for m in seen) < count:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            seen.append(sock.recv(4096).decode())
        except TimeoutError:
            raise AssertionError(f"no {wanted!r} among {seen}") from None


def test_ready_reloading_stopping(tmp_path):
    conf, run = tmp_path / "conf", tmp_path / "run"
    conf.mkdir()
    name = f"tn{os.getpid() % 10000}"
    (conf / f"{name}.conf").write_text(f"[Interface]\nPrivateKey = {keys.genkey()}\n")
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    env = dict(os.environ, NOTIFY_SOCKET=path, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tether",
            "run",
            "--config-dir",
            str(conf),
            "--run-dir",
            str(run),
            "--log",
            "warning",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    seen: list[str] = []
    try:
        receive_until(sock, "READY=1", seen)
        assert f"STATUS=1 device(s) up: {name}" in seen[-1]
        proc.send_signal(signal.SIGHUP)
        receive_until(sock, "RELOADING=1", seen)
        receive_until(sock, "READY=1", seen, count=2)  # READY again once re-read
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, proc.stderr.read()
        receive_until(sock, "STOPPING=1", seen)
        sock.close()
    reloading = next(m for m in seen if "RELOADING=1" in m)
    assert "MONOTONIC_USEC=" in reloading
