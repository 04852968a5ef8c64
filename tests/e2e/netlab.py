"""Network namespaces for end-to-end tests (DESIGN.md §6), made and removed by each test.

Every name carries a per-lab prefix (pid + counter), so parallel or leftover runs never collide,
and `close()` removes everything the lab made — processes by pid first, then namespaces and
UAPI sockets by name — even when the test failed half-way. Traffic stays inside these
namespaces: tunnel addresses exist only inside WireGuard, and veth links join only our own
namespaces.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

UAPI_DIR = Path("/var/run/wireguard")
REPO = Path(__file__).resolve().parents[2]
_serial = itertools.count()


def require(*tools: str) -> None:
    """Skip (fail in CI) unless root and the tools are present."""
    reasons = [] if os.geteuid() == 0 else ["not running as root"]
    reasons += [f"{t} not installed" for t in tools if shutil.which(t) is None]
    if reasons:
        message = "end-to-end test cannot run: " + "; ".join(reasons)
        if os.environ.get("CI"):
            pytest.fail(message + " (CI is set: a failure, not a skip)")
        pytest.skip(message)


class NetLab:
    def __init__(self) -> None:
        self.prefix = f"t{os.getpid() % 100000}x{next(_serial)}"
        self.namespaces: list[str] = []
        self.processes: list[subprocess.Popen] = []
        self.sockets: list[Path] = []
        self.etc_dirs: list[Path] = []
        self.links = 0

    def name(self, short: str) -> str:
        return f"{self.prefix}{short}"[:15]

    def netns(self, short: str) -> str:
        ns = self.name(short)
        self.sh("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        self.sh("ip", "-n", ns, "link", "set", "lo", "up")
        return ns

    def link(self, ns_a: str, ns_b: str, addrs_a: list[str], addrs_b: list[str]) -> tuple[str, str]:
        """A veth pair between two of our namespaces, with addresses on both ends."""
        self.links += 1
        a, b = self.name(f"a{self.links}"), self.name(f"b{self.links}")
        self.sh("ip", "link", "add", a, "netns", ns_a, "type", "veth", "peer", b, "netns", ns_b)
        for ns, dev, addrs in ((ns_a, a, addrs_a), (ns_b, b, addrs_b)):
            for addr in addrs:
                extra = ["nodad"] if ":" in addr else []
                self.sh("ip", "-n", ns, "addr", "add", addr, "dev", dev, *extra)
            self.sh("ip", "-n", ns, "link", "set", dev, "up")
        return a, b

    def etc_file(self, ns: str, name: str, text: str) -> None:
        """/etc/netns/NS/NAME, which `ip netns exec NS` mounts over /etc/NAME for the processes
        it starts afterwards (e.g. `hosts`, to give a name to an address of the lab)."""
        folder = Path("/etc/netns") / ns
        folder.mkdir(parents=True, exist_ok=True)
        if folder not in self.etc_dirs:
            self.etc_dirs.append(folder)
        (folder / name).write_text(text)

    def sh(
        self, *argv: str, check: bool = True, timeout: float = 30, **kw
    ) -> subprocess.CompletedProcess:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
        if check and done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr.strip()}")
        return done

    def ns_sh(self, ns: str, *argv: str, **kw) -> subprocess.CompletedProcess:
        return self.sh("ip", "netns", "exec", ns, *argv, **kw)

    def spawn(
        self, ns: str, *argv: str, env: dict | None = None, log: Path | None = None, **kw
    ) -> subprocess.Popen:
        out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 (closed by the child)
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv],
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
            **kw,
        )
        if log:
            out.close()
        self.processes.append(proc)
        return proc

    # -- WireGuard pieces ------------------------------------------------------------------

    def wireguard_go(self, ns: str, ifname: str, conf: str, addresses: list[str]) -> None:
        """A stock wireguard-go interface configured with `wg setconf` (the independent peer)."""
        env = dict(os.environ, WG_PROCESS_FOREGROUND="1")
        self.spawn(ns, "wireguard-go", "-f", ifname, env=env)
        sock = UAPI_DIR / f"{ifname}.sock"
        self.sockets.append(sock)
        wait_for(lambda: sock.exists(), 10, f"wireguard-go {ifname} UAPI socket")
        path = Path(f"/tmp/{ifname}.wgconf")
        path.write_text(conf)
        try:
            self.ns_sh(ns, "wg", "setconf", ifname, str(path))
        finally:
            path.unlink()
        for addr in addresses:
            self.sh("ip", "-n", ns, "addr", "add", addr, "dev", ifname)
        self.sh("ip", "-n", ns, "link", "set", ifname, "up")

    def tetherctl(
        self,
        ns: str,
        config_dir: Path,
        *devices: str,
        log: Path,
        extra_env: dict | None = None,
        args: tuple = (),
    ) -> subprocess.Popen:
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(extra_env or {}))
        env["PYTHONPATH"] = str(REPO)
        for dev in devices:
            self.sockets.append(UAPI_DIR / f"{dev}.sock")
        return self.spawn(
            ns,
            sys.executable,
            "-m",
            "tether",
            "run",
            "--config-dir",
            str(config_dir),
            "--run-dir",
            str(UAPI_DIR),
            "--log",
            "debug",
            *args,
            *devices,
            env=env,
            log=log,
        )

    def wg_show(self, ifname: str, what: str = "dump") -> str:
        return self.sh("wg", "show", ifname, what).stdout

    # -- teardown --------------------------------------------------------------------------

    def close(self) -> None:
        for proc in reversed(self.processes):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in self.processes:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        for ns in self.namespaces:
            # anything still running in the namespace was started by us (e.g. a child of ip)
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            for pid in pids.stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for sock in self.sockets:
            with contextlib.suppress(FileNotFoundError):
                sock.unlink()
        for folder in self.etc_dirs:
            shutil.rmtree(folder, ignore_errors=True)
            with contextlib.suppress(OSError):
                folder.parent.rmdir()  # /etc/netns, when nothing else is in it


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
