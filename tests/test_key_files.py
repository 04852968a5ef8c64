"""Every file holding a key is 0600 from the moment it exists, whatever the umask.

A final `stat` cannot tell "created 0600" from "created 0666, then chmod-ed": the window is
microseconds. So the command runs in a child under umask 0 with a Python audit hook that, at
every audited operation (each open, chmod, rename, write of the standard library), looks at
every file in the directory: a file our command created that group or others could read at any
of those moments is reported. Copy-then-chmod is caught at its `chmod` event, which is why the
first test runs exactly that, to show the detector sees the window.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tether import keys

REPO = Path(__file__).resolve().parents[1]

DETECTOR = textwrap.dedent(
    """
    import json, os, stat, sys
    watch, action = sys.argv[1], sys.argv[2]
    before = {os.lstat(os.path.join(r, n)).st_ino
              for r, _, files in os.walk(watch) for n in files}
    exposed, busy = set(), False

    def look(event, args):
        global busy
        if busy:
            return
        busy = True
        try:
            for root, _, files in os.walk(watch):
                for n in files:
                    try:
                        st = os.lstat(os.path.join(root, n))
                    except OSError:
                        continue
                    if st.st_ino not in before and st.st_mode & 0o077:
                        exposed.add(f"{n} {stat.S_IMODE(st.st_mode):04o} at {event}")
        finally:
            busy = False

    os.umask(0)
    import shutil
    from tether.cli.main import main
    from tether.cli.demo import ensure_demo
    from pathlib import Path
    sys.addaudithook(look)
    if action == "copy-then-chmod":
        shutil.copyfile(sys.argv[3], sys.argv[4])
        os.chmod(sys.argv[4], 0o600)
        code = 0
    elif action == "demo":
        ensure_demo(Path(sys.argv[3]), 51999)
        code = 0
    else:
        code = main(sys.argv[2:])
    busy = True
    print(json.dumps(sorted(exposed)))
    sys.exit(code)
    """
)


def exposed_during(watch: Path, *args: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", DETECTOR, str(watch), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def private_file(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with open(fd, "w") as f:
        f.write(text)
    return path


def test_the_detector_sees_the_copy_then_chmod_window(tmp_path):
    source = private_file(tmp_path / "a.conf", f"[Interface]\nPrivateKey = {keys.genkey()}\n")
    exposed = exposed_during(tmp_path, "copy-then-chmod", str(source), str(tmp_path / "b.conf"))
    assert exposed == ["b.conf 0666 at os.chmod"]


def test_add_creates_the_device_file_and_its_env_file_private(tmp_path):
    assert (
        exposed_during(tmp_path, "add", "--dname=tk0", f"--config={tmp_path}", "--ipv4=192.0.2.1")
        == []
    )
    for name in ("tk0.conf", "tk0.env"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600, name
    assert "PrivateKey = " in (tmp_path / "tk0.conf").read_text()


def test_save_config_new_file_is_private_even_over_a_readable_file(tmp_path):
    conf = tmp_path / "conf"
    conf.mkdir()
    private_file(conf / "tk1.conf", f"[Interface]\nPrivateKey = {keys.genkey()}\n")
    fresh, existing = tmp_path / "fresh.conf", tmp_path / "existing.conf"
    existing.write_text("old\n")
    os.chmod(existing, 0o644)
    for target in (fresh, existing):
        exposed = exposed_during(
            tmp_path,
            "save-config",
            "--dname=tk1",
            f"--config={conf}",
            f"--new_file={target}",
        )
        assert exposed == []
        assert target.read_bytes() == (conf / "tk1.conf").read_bytes()
        assert target.stat().st_mode & 0o777 == 0o600


def test_demo_files_are_private(tmp_path):
    assert exposed_during(tmp_path, "demo", str(tmp_path / "demo")) == []
    conf = tmp_path / "demo" / "conf" / "demo0.conf"
    assert conf.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "demo" / "conf").stat().st_mode & 0o777 == 0o700
