"""Fixtures every test directory shares.

- `fuzz_target`: the fuzz targets in fuzz/ are scripts for atheris, not a package, so each smoke
  test that runs a target's TestOneInput without atheris (keeping the target from rotting) loads
  it by path; this is the one loader they all use.
- `cli_env`: the environment of a `tetherctl` subprocess confined to a temporary directory
  (config, run and state directories, this checkout on PYTHONPATH, no TETHERCTL_* leaking in from
  the caller), for tests that run the command line as a user would.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
FUZZ = REPO / "fuzz"


def load_fuzz_target(name: str) -> ModuleType:
    """fuzz/<name>.py as a module (atheris is only imported by its `__main__` block)."""
    path = FUZZ / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def fuzz_target():
    """`fuzz_target("fuzz_config")` → the loaded target module."""
    return load_fuzz_target


@pytest.fixture
def cli_env(tmp_path) -> dict[str, str]:
    conf = tmp_path / "conf"
    conf.mkdir()
    return {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": str(REPO),
        "TETHERCTL_CONFIG_DIR": str(conf),
        "TETHERCTL_RUN_DIR": str(tmp_path / "run"),
        "TETHERCTL_STATE_DIR": str(tmp_path / "state"),
    }
