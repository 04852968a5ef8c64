"""What the daemon does when something goes wrong underneath it: a fatal error ends it with
status 1 and a reason, a local one is logged and serving goes on."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys

from tether import keys
from tether.api.settings import ApiSettings
from tether.appliance.daemon import Daemon

from .daemon_harness import REPO, wait_for
from .test_daemon import server_conf, write


def test_config_dir_moved_away_is_fatal_after_an_orderly_shutdown(daemon, tmp_path):
    dev = daemon.name("g")
    trace = tmp_path / "trace"
    write(
        daemon.dir / f"{dev}.conf",
        server_conf(keys.genkey(), 42141, extra=f"PostDown = echo down %i >> {trace}\n"),
    )
    daemon.start()
    daemon.wait_up(dev)
    wait_for(lambda: daemon.logged(f"watching {daemon.dir} for changes"), 10, "the watch")
    os.rename(daemon.dir, tmp_path / "elsewhere")
    wait_for(lambda: daemon.proc.poll() is not None, 15, "the daemon to exit")
    log = daemon.log.read_text()
    assert daemon.proc.returncode == 1, log
    assert (
        f"CRITICAL tether.daemon: fatal: config directory {daemon.dir} was removed or moved "
        "away; its files can no longer be watched; stopping (exit status 1)"
    ) in log, log
    assert trace.read_text() == f"down {dev}\n"  # PreDown/SaveConfig/PostDown still ran
    assert not daemon.uapi_up(dev)


def test_run_without_its_config_dir_says_so_and_exits_1(tmp_path):
    missing = tmp_path / "nope"
    out = subprocess.run(
        [sys.executable, "-m", "tether", "run", "--config-dir", str(missing), "--log", "error"],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert out.returncode == 1
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].endswith(
        f"ERROR tether.daemon: config directory {missing} does not exist or is not a directory"
    )


def test_hooks_that_cannot_start_fail_up_and_never_stop_a_removal(daemon, tmp_path):
    """No bash on PATH: PreUp fails with the reason; the down hooks of a removed device are
    logged as failed and the device goes down anyway; the daemon keeps serving."""
    empty = tmp_path / "empty-path"
    empty.mkdir()
    daemon.env["PATH"] = str(empty)
    up_hook, down_hooks = daemon.name("h"), daemon.name("i")
    write(daemon.dir / f"{up_hook}.conf", server_conf(keys.genkey(), 42151, extra="PreUp = true\n"))
    write(
        daemon.dir / f"{down_hooks}.conf",
        server_conf(keys.genkey(), 42152, extra="PreDown = echo a\nPostDown = echo b\n"),
    )
    daemon.start()
    daemon.wait_up(down_hooks)
    wait_for(
        lambda: daemon.logged(
            f"{up_hook}: not brought up: PreUp hook `true` could not be started "
            "(bash: No such file or directory)"
        ),
        10,
        "PreUp failure logged",
    )
    (daemon.dir / f"{down_hooks}.conf").unlink()
    wait_for(lambda: daemon.logged(f"{down_hooks}: down"), 10, "device down")
    for phase, command in (("PreDown", "echo a"), ("PostDown", "echo b")):
        assert daemon.logged(
            f"{down_hooks}: {phase} hook `{command}` could not be started "
            "(bash: No such file or directory)"
        )
    assert not daemon.uapi_up(down_hooks)
    assert daemon.proc.poll() is None
    assert daemon.stop() == 0


def test_a_device_file_others_can_read_is_warned_about_once(daemon):
    dev = daemon.name("j")
    path = daemon.dir / f"{dev}.conf"
    priv = keys.genkey()
    write(path, server_conf(priv, 42161))
    os.chmod(path, 0o644)
    daemon.start()
    daemon.wait_up(dev)
    warning = f"Warning: `{path}' is accessible by group or others (mode 0644)"
    wait_for(lambda: daemon.logged(warning), 5, "the warning")
    # an edit re-reads the file (still 0644): no second warning in this run
    path.write_text(server_conf(priv, 42162))
    wait_for(lambda: daemon.dump(dev) and daemon.dump(dev)[0][2] == "42162", 5, "edit applied")
    assert daemon.log.read_text().count(warning) == 1
    assert daemon.stop() == 0


# -- in-process: failures injected through the loop and the API server ---------------------------


def run_daemon(tmp_path, act, **kwargs) -> tuple[int, Daemon]:
    """Run a Daemon on an empty, watched directory; `act(daemon)` runs once it is ready and
    returns whether to stop it (True) or to wait for it to stop by itself."""
    (tmp_path / "conf").mkdir(exist_ok=True)
    daemon = Daemon(tmp_path / "conf", run_dir=str(tmp_path / "run"), **kwargs)

    async def main() -> int:
        task = asyncio.create_task(daemon.run())
        await asyncio.wait_for(daemon.ready.wait(), 10)
        if await act(daemon):
            daemon.stop()
        return await asyncio.wait_for(task, 20)

    return asyncio.run(main()), daemon


def test_an_error_in_a_loop_callback_is_logged_once_and_serving_goes_on(tmp_path, caplog):
    caplog.set_level(logging.ERROR, logger="tether.daemon")

    def broken_callback():
        raise ValueError("one bad datagram")

    async def act(daemon):
        loop = asyncio.get_running_loop()
        for _ in range(5):
            loop.call_soon(broken_callback)
        await asyncio.sleep(0.2)
        assert not daemon._stop.is_set()
        return True

    status, daemon = run_daemon(tmp_path, act)
    assert status == 0 and daemon.fatal is None
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1  # the same origin again within a minute is counted, not logged
    assert "broken_callback" in errors[0].getMessage()
    assert errors[0].getMessage().endswith("; serving goes on")
    assert errors[0].exc_info[1].args == ("one bad datagram",)


def test_out_of_memory_in_a_loop_callback_is_fatal(tmp_path, caplog):
    def exhausted():
        raise MemoryError

    async def act(daemon):
        asyncio.get_running_loop().call_soon(exhausted)
        return False

    status, daemon = run_daemon(tmp_path, act)
    assert status == 1
    assert daemon.fatal.endswith(": out of memory")
    assert "fatal: Exception in callback" in caplog.text


class Exploding:
    """Something in the API server's socket map whose poll check raises: the serving loop dies."""

    def readable(self):
        raise RuntimeError("the API loop broke")

    writable = readable

    def close(self):
        pass


def test_the_api_server_thread_dying_is_fatal(tmp_path, caplog):
    api = ApiSettings.from_options(
        "127.0.0.1:0", public_ipv4="192.0.2.1", public_ipv6="2001:db8::1"
    )

    async def act(daemon):
        daemon._api_handle._map[10**6] = Exploding()
        return False

    status, daemon = run_daemon(tmp_path, act, api=api)
    assert status == 1
    assert daemon.fatal == "the peer API server stopped: RuntimeError: the API loop broke"
    assert (
        "fatal: the peer API server stopped: RuntimeError: the API loop broke; "
        "stopping (exit status 1)" in caplog.text
    )
