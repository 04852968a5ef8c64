"""The shipped systemd units pass `systemd-analyze verify`, and their command lines parse."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "systemd"


def need_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is required in CI (Debian package systemd)")
        pytest.skip("systemd-analyze not installed")
    return tool


@pytest.mark.parametrize("unit", ["tetherctl@.service", "tetherctl.service"])
def test_units_verify_clean(unit, tmp_path):
    tool = need_analyze()
    # verify checks that ExecStart exists: point it at this checkout's console script
    exe = tmp_path / "tetherctl"
    exe.write_text(f'#!/bin/sh\nexec {sys.executable} -m tether "$@"\n')
    exe.chmod(0o755)
    text = (UNITS / unit).read_text().replace("/usr/local/bin/tetherctl", str(exe))
    name = "tetherctl@bywg0.service" if "@" in unit else unit
    (tmp_path / name).write_text(text)
    out = subprocess.run(
        [tool, "verify", "--man=no", str(tmp_path / name)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    problems = [
        line
        for line in (out.stdout + out.stderr).splitlines()
        if name in line or "tetherctl" in line
    ]
    assert out.returncode == 0 and not problems, out.stdout + out.stderr


def test_unit_command_lines_are_valid_cli():
    for unit in ("tetherctl@.service", "tetherctl.service"):
        for line in (UNITS / unit).read_text().splitlines():
            if line.startswith("ExecStart="):
                argv = line.split("=", 1)[1].replace("%i", "bywg0").split()[1:]
                out = subprocess.run(
                    [sys.executable, "-m", "tether", *argv, "--help"],
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
                assert out.returncode == 0, out.stderr
