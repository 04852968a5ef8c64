"""Hooks that cannot even be started fail like hooks that fail, and never stop a tear-down."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tether.appliance import hooks

REPO = Path(__file__).resolve().parents[2]


def test_a_hook_runs_and_its_failure_names_status_and_output(tmp_path):
    results = hooks.run_hooks("PreUp", ["echo hi %i"], "wg7")
    assert [(r.returncode, r.output, r.ok) for r in results] == [(0, "hi wg7\n", True)]
    with pytest.raises(hooks.HookError) as e:
        hooks.run_hooks("PreUp", ["echo nope; exit 4"], "wg7")
    assert str(e.value) == "PreUp hook `echo nope; exit 4` exited with status 4: nope"


def test_no_bash_on_path_is_a_hook_failure_with_the_reason(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no bash to be found
    with pytest.raises(hooks.HookError) as e:
        hooks.run_hooks("PreUp", ["true"], "wg7", config_file="/x/wg7.conf")
    assert str(e.value) == (
        "PreUp hook `true` could not be started (bash: No such file or directory)"
    )
    assert not e.value.result.ok and e.value.result.spawn_error


def test_down_hooks_that_cannot_start_are_logged_and_the_rest_still_run(
    tmp_path, monkeypatch, caplog
):
    monkeypatch.setenv("PATH", str(tmp_path))
    caplog.set_level(logging.INFO, logger="tether.hooks")
    results = hooks.run_hooks("PostDown", ["first", "second"], "wg7", stop_on_error=False)
    assert [r.spawn_error for r in results] == ["bash: No such file or directory"] * 2
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        "wg7: PostDown hook `first` could not be started (bash: No such file or directory)",
        "wg7: PostDown hook `second` could not be started (bash: No such file or directory)",
    ]


def test_out_of_file_descriptors_is_a_hook_failure_not_a_crash():
    """EMFILE from the pipe Popen makes, in a child whose descriptor limit is exhausted."""
    script = textwrap.dedent(
        """
        import os, resource
        from tether.appliance import hooks
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        held = []
        try:
            while True:
                held.append(os.open("/dev/null", os.O_RDONLY))
        except OSError:
            pass
        results = hooks.run_hooks("PreDown", ["true"], "wg7", stop_on_error=False)
        print(results[0].spawn_error)
        try:
            hooks.run_hooks("PreUp", ["true"], "wg7")
        except hooks.HookError as e:
            print(e)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "Too many open files",
        "PreUp hook `true` could not be started (Too many open files)",
    ]
