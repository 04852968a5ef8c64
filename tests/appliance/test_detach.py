"""`tetherctl up` / `down`: detached daemons that report success only once the device is up."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tether import keys
from tether.device.uapi.client import get

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
    os.chmod(tmp_path / "conf" / f"{name}.conf", 0o600)
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


def _device(tmp_path) -> str:
    (tmp_path / "conf").mkdir(exist_ok=True)
    name = f"ts{os.getpid() % 10000}"
    (tmp_path / "conf" / f"{name}.conf").write_text(f"[Interface]\nPrivateKey = {keys.genkey()}\n")
    os.chmod(tmp_path / "conf" / f"{name}.conf", 0o600)
    return name


def _refused(out, state: Path, problem: str) -> None:
    assert out.returncode == 1
    assert out.stderr == (
        f"tetherctl: state directory {state} {problem}; refusing to use it "
        "(remove it, or choose another with --state-dir)\n"
    )


def test_a_state_directory_made_by_someone_else_is_refused(tmp_path):
    """In a shared temporary directory another user may have made it first: `up` would log
    there and `down` would signal the pid they wrote. As root, chown it to nobody."""
    if os.geteuid() != 0:
        if os.environ.get("CI"):
            raise AssertionError("needs root to chown a directory to another user (CI is set)")
        pytest.skip("needs root")
    name = _device(tmp_path)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    nobody = pwd.getpwnam("nobody").pw_uid
    os.chown(state, nobody, -1)
    _refused(
        tetherctl("up", name, tmp=tmp_path), state, f"is owned by uid {nobody}, not by us (uid 0)"
    )
    (state / f"{name}.pid").write_text(f"{os.getpid()}\n")  # "their" pid: never signalled
    _refused(
        tetherctl("down", name, tmp=tmp_path), state, f"is owned by uid {nobody}, not by us (uid 0)"
    )
    assert list(state.iterdir()) == [state / f"{name}.pid"]


def test_a_symlinked_or_group_writable_state_directory_is_refused(tmp_path):
    name = _device(tmp_path)
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    state = tmp_path / "state"
    state.symlink_to(real)
    _refused(tetherctl("up", name, tmp=tmp_path), state, "is a symlink")
    _refused(tetherctl("down", name, tmp=tmp_path), state, "is a symlink")
    assert list(real.iterdir()) == []
    state.unlink()
    state.mkdir()
    os.chmod(state, 0o770)
    _refused(
        tetherctl("up", name, tmp=tmp_path), state, "is writable by group or others (mode 0770)"
    )


def test_new_file_copy_and_log_are_private_whatever_the_umask(tmp_path):
    """`down --new_file` copies the device file (a private key) and `up` writes a log: both are
    0600 even under umask 0 (the old copy-then-chmod left a window at 0666)."""
    name = _device(tmp_path)
    copy = tmp_path / "copy.conf"
    old = os.umask(0)
    try:
        out = tetherctl("up", name, tmp=tmp_path)
        assert out.returncode == 0, out.stderr
        out = tetherctl("down", name, "--new_file", str(copy), tmp=tmp_path)
        assert out.returncode == 0, out.stderr
    finally:
        os.umask(old)
    assert copy.read_bytes() == (tmp_path / "conf" / f"{name}.conf").read_bytes()
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "state" / f"{name}.log").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "state").stat().st_mode) == 0o700


def test_up_and_check_warn_about_a_device_file_others_can_read(tmp_path):
    name = _device(tmp_path)
    path = tmp_path / "conf" / f"{name}.conf"
    os.chmod(path, 0o640)
    warning = (
        f"Warning: `{path}' is accessible by group or others (mode 0640); "
        "it holds a private key: chmod 600 it\n"
    )
    check = tetherctl("check", name, tmp=tmp_path)
    assert check.returncode == 0 and check.stderr == warning
    out = tetherctl("up", name, tmp=tmp_path)
    try:
        assert out.returncode == 0 and out.stderr == warning
    finally:
        assert tetherctl("down", name, tmp=tmp_path).returncode == 0
    os.chmod(path, 0o600)
    check = tetherctl("check", name, tmp=tmp_path)
    assert check.returncode == 0 and check.stderr == ""
