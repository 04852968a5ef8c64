"""`make install` / `make uninstall` (issue 13) into throwaway roots, never the machine's /opt.

The install builds a real virtual environment with pip (from PyPI or pip's cache), so each test
here costs seconds; they are few and cover what an operator relies on: the command runs from the
installed tree, the units verify and name a command that exists, a second run upgrades in place,
the configuration directory is created 0700 but never changed once it exists, and uninstall
removes everything except that directory.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tether import __version__

REPO = Path(__file__).resolve().parents[1]


def make(target: str, **variables: str) -> subprocess.CompletedProcess:
    if shutil.which("make") is None:
        if os.environ.get("CI"):
            pytest.fail("make is required in CI")
        pytest.skip("make not installed")
    argv = ["make", "--no-print-directory", "-C", str(REPO), target]
    argv += [f"{k}={v}" for k, v in variables.items()]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHERCTL_")}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def layout(root: Path) -> dict[str, str]:
    return {
        "PYTHON": sys.executable,
        "PREFIX": str(root / "opt/tetherctl"),
        "BINDIR": str(root / "usr/local/bin"),
        "UNITDIR": str(root / "etc/systemd/system"),
        "CONFDIR": str(root / "etc/tetherctl"),
        "MANDIR": str(root / "usr/local/share/man"),
        "COMPLETIONDIR": str(root / "usr/local/share/bash-completion/completions"),
    }


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def verify_unit(unit: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        if os.environ.get("CI"):
            pytest.fail("systemd-analyze is required in CI (Debian package systemd)")
        pytest.skip("systemd-analyze not installed")
    target = unit
    if "@" in unit.name:  # a template verifies as one of its instances
        target = unit.with_name("tetherctl@bywg0.service")
        target.write_text(unit.read_text())
    out = subprocess.run(
        [tool, "verify", "--man=no", str(target)], capture_output=True, text=True, timeout=60
    )
    problems = [line for line in (out.stdout + out.stderr).splitlines() if "tetherctl" in line]
    if target is not unit:
        target.unlink()
    assert out.returncode == 0 and not problems, out.stdout + out.stderr


JOIN_DATA = REPO / "tether/api/join"
SERVE_THE_PAGE = """
import json, sys
from tether.api.http.app import make_app
from tether.api.peers.clientconf import PublicEndpoints
from tether.api.hub import FileOnlyHub
from tether.api.join.page import STATIC_TYPES
app = make_app(FileOnlyHub(sys.argv[1]), public=PublicEndpoints("203.0.113.7"), rate_limit=None)
out = {}
for path in ["/join", *("/static/" + name for name in STATIC_TYPES)]:
    got = {}
    env = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "REMOTE_ADDR": "127.0.0.1",
           "SERVER_NAME": "x", "SERVER_PORT": "80", "wsgi.url_scheme": "http"}
    body = b"".join(app(env, lambda status, headers, exc=None: got.update(status=status)))
    out[path] = [got["status"], body.decode("utf-8")]
print(json.dumps({"module": __import__("tether").__file__, "answers": out}))
"""


def check_join_page_ships(python: Path, tmp_path: Path) -> None:
    """The join page's template, script, style and vendored libraries (with their licenses) are
    package data of the installed wheel: the installed tree, not this checkout, serves them."""
    conf = tmp_path / "join-conf"
    conf.mkdir()
    (conf / "bywg0.conf").write_text("[Interface]\nAddress = 10.9.0.1/24\nPrivateKey = "
                                     "4HOYXaS0mtLH9ZChsPaDQ3W/L7Z/rrchr8CMDqZGgXg=\n")  # fmt: skip
    done = subprocess.run(
        [str(python), "-I", "-c", SERVE_THE_PAGE, str(conf)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["module"].startswith(str(python.parent.parent)), doc["module"]
    status, page = doc["answers"].pop("/join")
    assert status.startswith("200") and 'id="config"' in page and 'id="qr"' in page
    for path, (status, body) in doc["answers"].items():
        assert status.startswith("200"), path
        assert body == (JOIN_DATA / path.replace("/static/", "static/", 1)).read_text(), path
    installed = python.parent.parent.glob("lib/python3*/site-packages/tether/api/join/static")
    vendor = {p.name for p in next(installed).glob("vendor/*")}
    assert {"LICENSE.tweetnacl", "LICENSE.qrcode-generator", "README.md"} <= vendor


def test_install_upgrade_uninstall(tmp_path):
    v = layout(tmp_path)
    confdir = Path(v["CONFDIR"])
    make("install", **v)

    tetherctl = Path(v["BINDIR"]) / "tetherctl"
    assert tetherctl.is_symlink() and os.readlink(tetherctl) == v["PREFIX"] + "/bin/tetherctl"
    out = subprocess.run([str(tetherctl), "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"tetherctl {__version__}"
    # runtime dependencies only: no test tools in the service's environment
    site = subprocess.run(
        [v["PREFIX"] + "/bin/python", "-m", "pip", "list", "--format=freeze"],
        capture_output=True,
        text=True,
    ).stdout.lower()
    assert "tetherctl==" in site and "pytest" not in site and "hypothesis" not in site
    check_join_page_ships(Path(v["PREFIX"]) / "bin/python", tmp_path)

    for name in ("tetherctl@.service", "tetherctl.service"):
        unit = Path(v["UNITDIR"]) / name
        assert mode(unit) == 0o644
        assert f"ExecStart={tetherctl} run" in unit.read_text()
        verify_unit(unit)

    assert mode(confdir) == 0o700
    example = confdir / "bywg0.conf.example"
    assert mode(example) == 0o600
    assert example.read_bytes() == (REPO / "etc/tetherctl/bywg0.conf.example").read_bytes()
    man = Path(v["MANDIR"]) / "man8/tetherctl.8"
    assert man.read_text().startswith(".TH TETHERCTL")
    assert (Path(v["COMPLETIONDIR"]) / "tetherctl").read_text().count("tetherctl") > 10

    # The operator's files and choices are never touched by a second run, which upgrades in place.
    confdir.chmod(0o750)
    example.write_text("# mine\n")
    (confdir / "bywg0.conf").write_text("[Interface]\n")
    (confdir / "bywg0.conf").chmod(0o640)
    venv_inode = Path(v["PREFIX"]).stat().st_ino
    make("install", **v)
    assert Path(v["PREFIX"]).stat().st_ino == venv_inode
    assert mode(confdir) == 0o750 and example.read_text() == "# mine\n"
    assert mode(confdir / "bywg0.conf") == 0o640
    out = subprocess.run([str(tetherctl), "--version"], capture_output=True, text=True)
    assert out.returncode == 0

    make("uninstall", **v)
    assert not tetherctl.exists() and not tetherctl.is_symlink()
    assert not Path(v["PREFIX"]).exists()
    assert not any(Path(v["UNITDIR"]).iterdir())
    assert not man.exists() and not (Path(v["COMPLETIONDIR"]) / "tetherctl").exists()
    assert (confdir / "bywg0.conf").read_text() == "[Interface]\n"  # configuration kept


def test_install_into_a_staging_root(tmp_path):
    """DESTDIR stages the tree for where it will live: every script names PREFIX, not the
    staging path, and the staged interpreter runs tetherctl."""
    root = tmp_path / "stage"
    v = {k: val for k, val in layout(Path("/")).items()}
    v["PREFIX"] = "/opt/tetherctl-test"
    make("install", DESTDIR=str(root), **v)
    staged = root / "opt/tetherctl-test"
    script = (staged / "bin/tetherctl").read_text()
    assert script.startswith("#!/opt/tetherctl-test/bin/python")
    assert str(root) not in script and str(root) not in (staged / "pyvenv.cfg").read_text()
    assert os.readlink(root / "usr/local/bin/tetherctl") == "/opt/tetherctl-test/bin/tetherctl"
    out = subprocess.run(
        [str(staged / "bin/python"), "-m", "tether", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0 and __version__ in out.stdout
    assert mode(root / "etc/tetherctl") == 0o700
    make("uninstall", DESTDIR=str(root), **v)
    assert not staged.exists() and (root / "etc/tetherctl").is_dir()


def test_uninstall_leaves_a_foreign_tetherctl(tmp_path):
    """A tetherctl on PATH that make install did not put there (pipx, a package) stays."""
    v = layout(tmp_path)
    bindir = Path(v["BINDIR"])
    bindir.mkdir(parents=True)
    (bindir / "tetherctl").symlink_to("/somewhere/else/tetherctl")
    make("uninstall", **v)
    assert os.readlink(bindir / "tetherctl") == "/somewhere/else/tetherctl"


def test_man_page_and_completion_are_current():
    """They are generated from the parser; a CLI change must be followed by `make docs`."""
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts/gen-docs"), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


def test_package_data_names_every_file_of_the_join_page():
    """pyproject's package-data patterns cover every non-Python file under tether/ (the install
    test above may not notice a missing pattern: a checkout's stale *.egg-info/SOURCES.txt still
    lists the file, but a wheel built from a clean tree would lack it)."""
    import re
    import tomllib

    def glob_match(name: str, pattern: str) -> bool:  # as setuptools globs: `*` stays in a dir
        return re.fullmatch(re.escape(pattern).replace(r"\*", "[^/]*"), name) is not None

    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = data["package-data"]
    missing = []
    for path in sorted((REPO / "tether").rglob("*")):
        if path.is_dir() or path.suffix in (".py", ".pyc") or "__pycache__" in path.parts:
            continue
        rel = path.relative_to(REPO)
        covered = any(
            rel.is_relative_to(Path(*package.split(".")))
            and any(
                glob_match(str(rel.relative_to(Path(*package.split(".")))), pattern)
                for pattern in globs
            )
            for package, globs in patterns.items()
        )
        if not covered:
            missing.append(str(rel))
    assert not missing, f"files under tether/ that no package-data pattern ships: {missing}"
