"""`tetherctl up` / `down`: detached daemons that report success only once the device is up."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tether import keys
from tether.device.uapi_client import get

REPO = Path(__file__).resolve().parents[2]


def tetherctl(*args, tmp):
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO),
        TETHERCTL_CONFIG_DIR=str(tmp / "conf"),
        TETHERCTL_RUN_DIR=str(tmp / "run"),
        TETHERCTL_STATE_DIR=str(tmp / "state"),
    )
    return subprocess.run(
        [sys.executable, "-m", "tether", *args], capture_output=True, text=True, timeout=90, env=env
    )


def test_up_down_cycle_runs_hooks_and_reports(tmp_path):
    (tmp_path / "conf").mkdir()
    trace = tmp_path / "trace"
    name = f"tu{os.getpid() % 10000}"
    (tmp_path / "conf" / f"{name}.conf").write_text(
        f"[Interface]\nPrivateKey = {keys.genkey()}\nPostUp = echo up %i >> {trace}\n"
        f"PostDown = echo down %i >> {trace}\n"
    )
    out = tetherctl("up", name, tmp=tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"{name} is up (pid" in out.stdout
    # up returned: the device answers on its UAPI socket right now, and PostUp has run
    snap = get(str(tmp_path / "run" / f"{name}.sock"))
    assert snap.listen_port > 0
    assert trace.read_text() == f"up {name}\n"
    again = tetherctl("up", name, tmp=tmp_path)
    assert again.returncode == 1 and "already running" in again.stderr
    pid = int((tmp_path / "state" / f"{name}.pid").read_text())
    down = tetherctl("down", name, tmp=tmp_path)
    assert down.returncode == 0, down.stderr
    assert trace.read_text() == f"up {name}\ndown {name}\n"
    assert not (tmp_path / "state" / f"{name}.pid").exists()
    try:
        os.kill(pid, 0)
        raise AssertionError("daemon still running after down")
    except ProcessLookupError:
        pass
    assert tetherctl("down", name, tmp=tmp_path).returncode == 1


def test_up_fails_with_the_reason_and_leaves_nothing_running(tmp_path):
    (tmp_path / "conf").mkdir()
    name = f"tf{os.getpid() % 10000}"
    (tmp_path / "conf" / f"{name}.conf").write_text(
        f"[Interface]\nPrivateKey = {keys.genkey()}\nPreUp = echo nope; exit 5\n"
    )
    started = time.monotonic()
    out = tetherctl("up", name, tmp=tmp_path)
    assert out.returncode == 1
    assert out.stderr.strip() == (
        f"tetherctl: {name}: not brought up: PreUp hook "
        "`echo nope; exit 5` exited with status 5: nope"
    )
    assert time.monotonic() - started < 30
    time.sleep(0.3)
    assert not (tmp_path / "state" / f"{name}.pid").exists()
    assert not (tmp_path / "run" / f"{name}.sock").exists()
    missing = tetherctl("up", "nosuchdev", tmp=tmp_path)
    assert missing.returncode == 1 and "does not exist" in missing.stderr
