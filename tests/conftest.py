"""Fixtures every test directory shares.

- `fuzz_target`: the fuzz targets in fuzz/ are scripts for atheris, not a package, so each smoke
  test that runs a target's TestOneInput without atheris (keeping the target from rotting) loads
  it by path; this is the one loader they all use.
- `cli_env`: the environment of a `tetherctl` subprocess confined to a temporary directory
  (config, run and state directories, this checkout on PYTHONPATH, no TETHERCTL_* leaking in from
  the caller), for tests that run the command line as a user would.
- `join_browser`: tests/e2e/tools/join_browser.py (headless Chromium through chromium-driver) run
  on a join page URL, after checking that Chromium, its driver, zbarimg and selenium are there:
  a visible skip without them, a failure when CI is set (scripts/install-system-deps installs the
  Debian packages, the test extra selenium).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
FUZZ = REPO / "fuzz"


def load_fuzz_target(name: str) -> ModuleType:
    """fuzz/<name>.py as a module (atheris is only imported by its `__main__` block)."""
    path = FUZZ / f"{name}.py"
    if str(FUZZ) not in sys.path:
        sys.path.insert(0, str(FUZZ))  # as when run as a script: its helpers (wsgi_call) import
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


JOIN_BROWSER = REPO / "tests" / "e2e" / "tools" / "join_browser.py"


def require_browser() -> None:
    missing = [p for p in ("/usr/bin/chromium", "/usr/bin/chromedriver") if not os.path.exists(p)]
    if shutil.which("zbarimg") is None:
        missing.append("zbarimg")
    if importlib.util.find_spec("selenium") is None:
        missing.append("selenium")
    if missing:
        message = "browser test cannot run: missing " + ", ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(message + " (CI is set: a failure, not a skip)")
        pytest.skip(message)


def run_join_browser(url: str, outdir: Path, *flags: str, prefix: tuple = ()) -> dict:
    """join_browser.py on `url` (`prefix`: e.g. `ip netns exec NS`); the JSON it printed."""
    done = subprocess.run(
        [*prefix, sys.executable, str(JOIN_BROWSER), url, str(outdir), *flags],
        capture_output=True,
        text=True,
        timeout=180,
    )
    try:
        result = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise AssertionError(f"join_browser.py: {done.stdout}\n{done.stderr}") from None
    assert done.returncode == 0 and "error" not in result, (result, done.stderr[-2000:])
    return result


@pytest.fixture
def join_browser():
    """`join_browser(url, outdir, *flags, prefix=())` → the page's result as a dict."""
    require_browser()
    return run_join_browser
