"""`tetherctl up DEVICE` / `down DEVICE`: a detached daemon per device, like `wg-quick up`.

`up` must not return before the device works (scripts run `up` then use the tunnel), and must
fail with the reason when it cannot come up. So the command forks; the child becomes a proper
daemon with python-daemon (detached session, closed descriptors, pidfile, log file) and reports
back through a pipe once the device is up — or why it is not. `down` signals the pid in the
pidfile and waits for the process to finish its orderly shutdown (PreDown, SaveConfig,
PostDown).

The state directory holds the pidfile `down` signals and the log, so it must be ours alone: in
a shared temporary directory another user could create it first (or a symlink in its place)
and then read our log or make `down` signal a process of their choosing. So `up` and `down`
refuse a state directory that is a symlink, is not owned by us, or that group or others may
write, with a message naming the problem; the log file is created 0600.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import stat
import time
from pathlib import Path

READY_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0


def state_dir(explicit: str | None = None) -> Path:
    """Where pidfiles and logs of detached daemons go: /run/tetherctl as root, else per user."""
    if explicit:
        return Path(explicit)
    if os.environ.get("TETHERCTL_STATE_DIR"):
        return Path(os.environ["TETHERCTL_STATE_DIR"])
    if os.geteuid() == 0:
        return Path("/run/tetherctl")
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    return Path(runtime) / "tetherctl" if runtime else Path(f"/tmp/tetherctl-{os.getuid()}")


class StateDirError(Exception):
    """The state directory cannot be trusted; the message says why and what to do."""


def check_state_dir(directory: Path, *, create: bool) -> Path:
    """Make (with `create`) and vet the state directory: a real directory, owned by us, that
    group and others cannot write. Raises StateDirError otherwise."""
    if create:
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise StateDirError(f"state directory {directory}: cannot create it: {e}") from None
    try:
        st = os.lstat(directory)
    except FileNotFoundError:
        return directory  # nothing there yet, so nothing to trust (only `down` gets here)
    except OSError as e:
        raise StateDirError(f"state directory {directory}: {e.strerror}") from None
    problem = None
    if stat.S_ISLNK(st.st_mode):
        problem = "is a symlink"
    elif not stat.S_ISDIR(st.st_mode):
        problem = "is not a directory"
    elif st.st_uid != os.geteuid():
        problem = f"is owned by uid {st.st_uid}, not by us (uid {os.geteuid()})"
    elif st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        problem = f"is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    if problem:
        raise StateDirError(
            f"state directory {directory} {problem}; refusing to use it "
            "(remove it, or choose another with --state-dir)"
        )
    return directory


def pidfile_path(directory: Path, name: str) -> Path:
    """Where the detached daemon of a device records its pid (what `down` signals)."""
    return directory / f"{name}.pid"


def read_pid(path: Path) -> int | None:
    """The pid in a pidfile if that process still exists; None for a stale or missing file,
    so a crashed daemon never makes `up` refuse or `down` signal a stranger's pid."""
    try:
        pid = int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return pid


def up(name: str, make_daemon, *, directory: Path, log_level: int) -> tuple[bool, str]:
    """Start a detached daemon for `name`. `make_daemon()` builds the Daemon (in the child).
    Returns (ok, message) once the device is up or has failed."""
    import daemon as pydaemon

    try:
        check_state_dir(directory, create=True)
    except StateDirError as e:
        return False, str(e)
    pidfile = pidfile_path(directory, name)
    running = read_pid(pidfile)
    if running is not None:
        return False, f"{name} is already running (pid {running})"
    logfile = directory / f"{name}.log"
    read_end, write_end = os.pipe()
    child = os.fork()
    if child:
        os.close(write_end)
        status = _read_status(read_end, READY_TIMEOUT)
        os.waitpid(child, 0)  # the first child exits as soon as python-daemon detaches
        if status.startswith("ok"):
            return True, status[3:] or f"{name} is up"
        return False, status[6:] if status.startswith("error ") else (
            f"{name} did not come up; see {logfile}"
        )

    # child: detach for good, then run the daemon
    os.close(read_end)
    code = 1
    try:
        # 0600 from the start, whatever the umask: hook output lands here
        fd = os.open(logfile, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        log_out = open(fd, "a", buffering=1)  # noqa: SIM115 (lives as long as the daemon)
        context = pydaemon.DaemonContext(
            working_directory="/",
            umask=0o077,
            files_preserve=[write_end, log_out.fileno()],
            stdout=log_out,
            stderr=log_out,
            signal_map={},
        )  # the daemon installs its own
        with context:
            pidfile.write_text(f"{os.getpid()}\n")
            logging.basicConfig(
                level=log_level,
                stream=log_out,
                format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            )
            code = asyncio.run(_serve(name, make_daemon, write_end))
            pidfile.unlink(missing_ok=True)
    finally:
        os._exit(code)


async def _serve(name: str, make_daemon, status_fd: int) -> int:
    daemon = make_daemon()
    task = asyncio.create_task(daemon.run())
    ready = asyncio.create_task(daemon.ready.wait())
    await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    slot = daemon.slots.get(name)
    if slot is not None and slot.up:
        port = slot.device.listen_port
        _write_status(status_fd, f"ok {name} is up (pid {os.getpid()}, UDP port {port})")
        return await task
    reason = slot.error if slot is not None and slot.error else f"{name} did not come up"
    _write_status(status_fd, f"error {reason}")
    daemon.stop()
    await task
    return 1


def _write_status(fd: int, text: str) -> None:
    try:
        os.write(fd, text.encode() + b"\n")
        os.close(fd)
    except OSError:
        pass


def _read_status(fd: int, timeout: float) -> str:
    import select

    deadline = time.monotonic() + timeout
    data = b""
    with os.fdopen(fd, "rb", buffering=0) as f:
        while not data.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([f], [], [], left)[0]:
                return "error timed out waiting for the daemon to report"
            chunk = f.read(4096)
            if not chunk:
                break
            data += chunk
    return data.decode("utf-8", "replace").strip()


def down(name: str, *, directory: Path) -> tuple[bool, str]:
    """`tetherctl down DEVICE`: stop the detached daemon of a device by its pidfile (SIGTERM:
    PreDown, SaveConfig, PostDown) and wait for it; (ok, message for the user)."""
    try:
        check_state_dir(directory, create=False)
    except StateDirError as e:
        return False, str(e)
    pidfile = pidfile_path(directory, name)
    pid = read_pid(pidfile)
    if pid is None:
        return False, f"{name} is not running (no live pid in {pidfile})"
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            pidfile.unlink(missing_ok=True)
            return True, f"{name} is down"
        time.sleep(0.05)
    return False, f"{name} (pid {pid}) did not stop within {STOP_TIMEOUT:.0f}s"
