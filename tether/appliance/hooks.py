"""PreUp/PostUp/PreDown/PostDown, run the way wg-quick runs them.

wg-quick evaluates each hook with bash after replacing `%i` with the interface name, logs it as
`[#] command`, and stops bringing the interface up when one fails (it runs under `set -e`).
Its hooks also see wg-quick's own variables (INTERFACE, CONFIG_FILE); ours get those in the
environment. Each hook has a timeout, because a hung hook must not hang the daemon: on expiry
its whole process group is killed and the hook counts as failed. A hook that cannot even be
started (no `bash` on PATH, no file descriptors or memory left for the pipe and the fork) is a
failed hook too, reported the same way: PreUp/PostUp abort the bring-up with that reason, and
PreDown/PostDown log it and carry on, so tearing a device down never stops half way.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
from dataclasses import dataclass

log = logging.getLogger("tether.hooks")

DEFAULT_TIMEOUT = 60.0
OUTPUT_LIMIT = 64 * 1024
_PROGRAM_ERRORS = (errno.ENOENT, errno.EACCES, errno.ENOEXEC, errno.ENOTDIR)


@dataclass
class HookResult:
    """What one hook command did: the daemon logs it and decides whether bring-up goes on."""

    command: str
    returncode: int
    output: str
    timed_out: bool = False
    spawn_error: str | None = None  # why the hook could not be started at all

    @property
    def ok(self) -> bool:
        """Exited 0 in time: what wg-quick calls success."""
        return self.returncode == 0 and not self.timed_out and self.spawn_error is None


class HookError(RuntimeError):
    """A PreUp/PostUp hook failed: it aborts that device's bring-up, as in wg-quick; the
    message names the hook and its last line of output."""

    def __init__(self, phase: str, result: HookResult):
        self.phase = phase
        self.result = result
        if result.spawn_error is not None:
            reason = f"could not be started ({result.spawn_error})"
        elif result.timed_out:
            reason = "timed out"
        else:
            reason = f"exited with status {result.returncode}"
        detail = result.output.strip().splitlines()[-1:] or [""]
        super().__init__(
            f"{phase} hook `{result.command}` {reason}" + (f": {detail[0]}" if detail[0] else "")
        )


def expand(command: str, device: str) -> str:
    """wg-quick's only substitution: `%i` becomes the device name."""
    return command.replace("%i", device)


def run_hooks(
    phase: str,
    commands: list[str],
    device: str,
    *,
    config_file: str = "",
    timeout: float = DEFAULT_TIMEOUT,
    stop_on_error: bool = True,
) -> list[HookResult]:
    """Run `commands` in order. With `stop_on_error` (PreUp/PostUp) the first failure raises
    HookError; down hooks (PreDown/PostDown) log failures and carry on, as tearing down must."""
    results = []
    env = dict(os.environ, INTERFACE=device, CONFIG_FILE=config_file)
    for command in commands:
        expanded = expand(command, device)
        log.info("%s: [#] %s", device, expanded)
        result = _run_one(expanded, env, timeout)
        results.append(result)
        for line in result.output.splitlines():
            log.info("%s: %s: %s", device, phase, line)
        if not result.ok:
            error = HookError(phase, result)
            if stop_on_error:
                raise error
            log.error("%s: %s", device, error)
    return results


def _run_one(command: str, env: dict, timeout: float) -> HookResult:
    try:
        proc = subprocess.Popen(
            ["bash", "-c", command],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    except (OSError, subprocess.SubprocessError) as e:
        return HookResult(command, -1, "", spawn_error=_spawn_reason(e))
    try:
        out, _ = proc.communicate(timeout=timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, _ = proc.communicate()
        timed_out = True
    text = out[-OUTPUT_LIMIT:].decode("utf-8", "replace")
    return HookResult(
        command, proc.returncode if not timed_out else -signal.SIGKILL, text, timed_out
    )


def _spawn_reason(error: Exception) -> str:
    """`bash: No such file or directory`, `Too many open files`: what went wrong, in one line."""
    if isinstance(error, OSError) and error.strerror:
        if error.filename and error.errno in _PROGRAM_ERRORS:  # about bash itself, so name it
            return f"{error.filename}: {error.strerror}"
        return error.strerror
    return str(error) or type(error).__name__
