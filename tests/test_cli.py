"""The command line's contract: exit codes, one-line errors, env-var defaults."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

CORPUS = Path(__file__).parent / "config" / "corpus"
TETHERCTL = [sys.executable, "-m", "tether"]


def run(*args, env=None, stdin=b""):
    return subprocess.run(
        TETHERCTL + list(args), input=stdin, capture_output=True, timeout=30, env=env
    )


def test_check_good_files():
    out = run("check", str(CORPUS / "article-server.conf"), str(CORPUS / "ipv6-only.conf"))
    assert out.returncode == 0, out.stderr
    assert (
        b"article-server.conf: ok: public key UESAy9LgT3PR77Tl1RCnHuj+ZtFvYMeWahnTIEhEvXM="
        in out.stdout
    )


def test_check_bad_file_reports_file_and_line(tmp_path):
    good = tmp_path / "good.conf"
    shutil.copy(CORPUS / "article-server.conf", good)
    good.chmod(0o600)  # a checkout's 0644 would add the "accessible by others" warning
    bad = CORPUS / "err-bad-cidr.conf"
    out = run("check", str(good), str(bad))
    assert out.returncode == 1
    assert out.stderr.decode() == f"{bad}:7: AllowedIPs: '10.0.0.300/32' is not an IP network\n"


def test_check_devices_by_name_from_env_config_dir(tmp_path):
    shutil.copy(CORPUS / "tbywg0.conf", tmp_path / "tbywg0.conf")
    shutil.copy(CORPUS / "err-unknown-key.conf", tmp_path / "broken.conf")
    env = {"TETHERCTL_CONFIG_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    assert run("check", "tbywg0", env=env).returncode == 0
    everything = run("check", env=env)
    assert everything.returncode == 1
    assert b"broken.conf:3: unknown key 'ListenPrt' in [Interface]" in everything.stderr
    assert b"tbywg0.conf: ok" in everything.stdout
    assert run("check", "--config-dir", str(tmp_path), "-q", "tbywg0").stdout == b""


def test_check_missing_and_invalid_names(tmp_path):
    out = run("check", "--config-dir", str(tmp_path), "nope")
    assert out.returncode == 1 and b"nope.conf: cannot read" in out.stderr
    out = run("check", "--config-dir", str(tmp_path))
    assert out.returncode == 1 and b"no device files" in out.stderr
    out = run("check", "--config-dir", str(tmp_path), "name-that-is-far-too-long")
    assert out.returncode == 1 and b"not a valid device name" in out.stderr


def test_usage_errors_exit_2():
    assert run().returncode == 2
    assert run("no-such-command").returncode == 2
    assert run("genkey", "extra").returncode == 2


def test_python_dash_m_and_version():
    out = run("--version")
    assert out.returncode == 0 and out.stdout.startswith(b"tetherctl ")


def test_check_duplicate_public_key_names_the_second_key_line():
    """The line of the second `PublicKey` key (not its `[Peer]` header), the first one's line
    in the message."""
    path = CORPUS / "err-duplicate-key-late.conf"
    out = run("check", str(path))
    assert out.returncode == 1
    assert out.stderr.decode() == (
        f"{path}:14: PublicKey 10NguWHSLJ0tUOr4AkbTtOEYHoagq1KH/PJSIJ3SwFs= is given twice "
        "(first on line 8); each peer needs its own\n"
    )
    assert path.read_text().splitlines()[13].lower().startswith("publickey = ")
