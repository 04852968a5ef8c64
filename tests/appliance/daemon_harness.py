"""A real `tetherctl run` on a temporary config directory, observed through the real `wg`."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UAPI_DIR = Path("/var/run/wireguard")
_serial = iter(range(10**6))


def require_root_and_wg() -> None:
    reasons = [] if os.geteuid() == 0 else ["not root (the UAPI socket must be where wg looks)"]
    if shutil.which("wg") is None:
        reasons.append("wg not installed")
    if reasons:
        message = "daemon integration test cannot run: " + "; ".join(reasons)
        if os.environ.get("CI"):
            pytest.fail(message + " (CI is set)")
        pytest.skip(message)


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


class DaemonProcess:
    def __init__(self, tmp_path: Path, *args: str, env: dict | None = None):
        self.dir = tmp_path / "conf"
        self.dir.mkdir(exist_ok=True)
        self.log = tmp_path / "daemon.log"
        self.args = args
        self.env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", **(env or {}))
        self.proc: subprocess.Popen | None = None
        self.sockets: list[Path] = []

    def name(self, short: str) -> str:
        return f"tt{os.getpid() % 10000}{next(_serial)}{short}"[:15]

    def start(self, *devices: str) -> None:
        for dev in devices:
            self.sockets.append(UAPI_DIR / f"{dev}.sock")
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tether",
                    "run",
                    "--config-dir",
                    str(self.dir),
                    "--run-dir",
                    str(UAPI_DIR),
                    "--log",
                    "debug",
                    *self.args,
                    *devices,
                ],
                stdout=out,
                stderr=out,
                env=self.env,
                start_new_session=True,
            )

    def uapi_up(self, dev: str) -> bool:
        return (UAPI_DIR / f"{dev}.sock").exists()

    def wait_up(self, dev: str, timeout: float = 15) -> None:
        wait_for(lambda: self.uapi_up(dev) or self.proc.poll() is not None, timeout, f"{dev} up")
        assert self.proc.poll() is None, self.log.read_text()
        self.sockets.append(UAPI_DIR / f"{dev}.sock")

    def dump(self, dev: str) -> list[list[str]]:
        out = subprocess.run(
            ["wg", "show", dev, "dump"], capture_output=True, text=True, timeout=10
        )
        if out.returncode != 0:
            return []
        return [line.split("\t") for line in out.stdout.strip().splitlines()]

    def peers(self, dev: str) -> dict[str, list[str]]:
        return {row[0]: row for row in self.dump(dev)[1:]}

    def logged(self, text: str) -> bool:
        return text in self.log.read_text()

    def signal(self, sig: int) -> None:
        os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 20) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.proc.wait(5)
                raise
        return self.proc.returncode

    def close(self) -> None:
        try:
            self.stop()
        finally:
            for sock in self.sockets:
                sock.unlink(missing_ok=True)


@pytest.fixture
def daemon(tmp_path):
    require_root_and_wg()
    d = DaemonProcess(tmp_path)
    try:
        yield d
    finally:
        d.close()
