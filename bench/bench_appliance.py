"""Appliance figures: a real `tetherctl run` daemon in a subprocess, on temp directories only.

- file saved → peer usable: a peer is added to the device file with the project's atomic writer
  (`store.edit`), and the clock runs from the start of that write until the peer, with its
  AllowedIPs, shows up over the UAPI socket (polled with ≤ 1 ms sleeps); then the peer is removed
  the same way and timed until it is gone. Goal (issue #5): p50 < 250 ms, p99 < 1 s.
- daemon start with a 10,000-peer file: spawn → READY=1 on a fake $NOTIFY_SOCKET (a datagram
  socket bound here). Goal: < 2 s. Median of several runs; includes interpreter start-up.
- RSS at 10,000 idle peers: VmRSS of the daemon 1 s after READY. Goal: < 300 MB.

1,000 peers are measured too, for context. The daemon needs no root: its UAPI socket goes to a
temporary run directory and it listens on a free UDP port. Every wait is bounded, and the
daemons are stopped by pid. Run: `.venv/bin/python bench/bench_appliance.py`.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from tether import keys
from tether.config import store
from tether.config.model import Peer
from tether.device import uapi_client

REPO = Path(__file__).resolve().parents[1]
DEVICE = "bench0"
EDITS = {10: 50, 1_000: 20}  # peers already on the device: add + remove cycles
EDIT_SECONDS = 60.0  # the edit loop stops early after this long
WAIT_SECONDS = 5.0  # one edit that takes longer than this counts as a miss
POLL_SLEEP = 0.0005
START_RUNS = 3
START_SIZES = (1_000, 10_000)
READY_TIMEOUT = 60.0


def peer_key(_i: int) -> bytes:
    return keys.public_from_private(keys.generate_private())


def host(i: int) -> str:
    """The i-th /32 of 10.64.0.0/10 after the device's own address."""
    n = 0x0A400002 + i
    return f"{n >> 24}.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"


def make_device(directory: str, peers: int) -> str:
    lines = [
        "# benchmark device",
        "[Interface]",
        f"PrivateKey = {keys.genkey()}",
        "ListenPort = 0",
        "Address = 10.64.0.1/10",
        "",
    ]
    for i in range(peers):
        lines += [
            f"# peer {i}",
            "[Peer]",
            f"PublicKey = {keys.encode(peer_key(i))}",
            f"AllowedIPs = {host(i)}/32",
            "",
        ]
    path = os.path.join(directory, f"{DEVICE}.conf")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    os.chmod(path, 0o600)
    return path


class Daemon:
    """`python -m tether run` on temp dirs, with a fake systemd notification socket."""

    def __init__(self, tmp: str, config_dir: str):
        self.run_dir = os.path.join(tmp, "run")
        os.makedirs(self.run_dir, exist_ok=True)
        self.sock_path = os.path.join(self.run_dir, f"{DEVICE}.sock")
        self.notify_path = os.path.join(tmp, "notify.sock")
        if os.path.exists(self.notify_path):
            os.unlink(self.notify_path)
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(self.notify_path)
        self.notify.settimeout(0.1)
        # the daemon sends STATUS= after every change; an undrained socket (10 datagrams by
        # default) would block its sendto, and with it the daemon's loop, so a thread reads it
        self.ready_at: float | None = None
        self.ready_event = threading.Event()
        self.closing = False
        self.reader = threading.Thread(target=self._read_notify, daemon=True)
        self.reader.start()
        self.log_path = os.path.join(tmp, "daemon.log")
        env = dict(os.environ, NOTIFY_SOCKET=self.notify_path, PYTHONPATH=str(REPO))
        for name in list(env):
            if name.startswith("TETHERCTL_"):
                del env[name]
        with open(self.log_path, "wb") as log:  # the child keeps its own descriptor
            self.started = time.perf_counter()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tether", "run", "--config-dir", config_dir]
                + ["--run-dir", self.run_dir, "--log", "warning", DEVICE],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def _read_notify(self) -> None:
        while not self.closing:
            try:
                message = self.notify.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if self.ready_at is None and b"READY=1" in message.split(b"\n"):
                self.ready_at = time.perf_counter()
                self.ready_event.set()

    def wait_ready(self) -> float:
        """Seconds from spawn to the READY=1 datagram."""
        deadline = self.started + READY_TIMEOUT
        while not self.ready_event.wait(0.2):
            if time.perf_counter() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"daemon not ready (exit {self.proc.poll()}): {self.tail()}")
        return self.ready_at - self.started

    def rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def tail(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read()[-2000:].decode("utf-8", "replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.closing = True
        self.reader.join(timeout=2)
        self.notify.close()


def wait_for(sock: str, key: bytes, net, present: bool) -> bool:
    deadline = time.perf_counter() + WAIT_SECONDS
    while time.perf_counter() < deadline:
        snap = uapi_client.get(sock)
        peer = next((p for p in snap.peers if p.public_key == key), None)
        if present and peer is not None and net in peer.allowed_ips:
            return True
        if not present and peer is None:
            return True
        time.sleep(POLL_SLEEP)
    return False


def bench_edits(peers: int, cycles: int) -> dict:
    adds, removes, polls, misses = [], [], [], 0
    with tempfile.TemporaryDirectory(prefix="bench-appliance-") as tmp:
        conf = os.path.join(tmp, "conf")
        os.makedirs(conf)
        path = make_device(conf, peers)
        daemon = Daemon(tmp, conf)
        try:
            daemon.wait_ready()
            time.sleep(0.5)  # let the directory watch come up (it rescans once it is live)
            rss = daemon.rss_mb()
            for _ in range(5):  # one poll's cost: the resolution of the figures below
                t0 = time.perf_counter()
                uapi_client.get(daemon.sock_path)
                polls.append(time.perf_counter() - t0)
            until = time.monotonic() + EDIT_SECONDS
            for i in range(cycles + 1):  # the first cycle is a warm-up
                if time.monotonic() > until:
                    break
                key = peer_key(i)
                net = ipaddress.ip_network(f"10.100.{i // 256}.{i % 256}/32")
                peer = Peer(key, allowed_ips=[net])
                t0 = time.perf_counter()
                store.edit(path, lambda cfg, peer=peer: cfg.add_peer(peer))
                ok_add = wait_for(daemon.sock_path, key, net, True)
                t1 = time.perf_counter()
                store.edit(path, lambda cfg, key=key: cfg.remove_peer(key))
                ok_remove = wait_for(daemon.sock_path, key, net, False)
                t2 = time.perf_counter()
                if i == 0:
                    continue
                misses += (not ok_add) + (not ok_remove)
                adds.append(t1 - t0)
                removes.append(t2 - t1)
        finally:
            daemon.stop()
    return {
        "adds": adds,
        "removes": removes,
        "misses": misses,
        "rss": rss,
        "poll": statistics.median(polls),
    }


def bench_start(peers: int) -> tuple[list[float], list[float]]:
    ready, rss = [], []
    with tempfile.TemporaryDirectory(prefix="bench-appliance-") as tmp:
        conf = os.path.join(tmp, "conf")
        os.makedirs(conf)
        make_device(conf, peers)
        for _ in range(START_RUNS):
            daemon = Daemon(tmp, conf)
            try:
                ready.append(daemon.wait_ready())
                time.sleep(1.0)  # idle
                rss.append(daemon.rss_mb())
                count = len(uapi_client.get(daemon.sock_path).peers)
                if count != peers:
                    raise RuntimeError(f"device has {count} peers, file {peers}")
            finally:
                daemon.stop()
    return ready, rss


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(len(s) * q))]


def main() -> None:
    edits = {n: bench_edits(n, cycles) for n, cycles in EDITS.items()}
    starts = {n: bench_start(n) for n in START_SIZES}

    print(
        "appliance: `tetherctl run` in a subprocess; edits timed from the start of the atomic "
        f"write to the change seen over UAPI; start median of {START_RUNS} runs"
    )
    for n, e in edits.items():
        goal = "   (goal p50 < 250 ms, p99 < 1000 ms)" if n == min(EDITS) else ""
        print(
            f"  {n:>6} peers: {len(e['adds'])} add/remove cycles, one UAPI get (poll) "
            f"{e['poll'] * 1e3:.1f} ms, RSS {e['rss']:.1f} MB"
        )
        for label, times in (("add", e["adds"]), ("remove", e["removes"])):
            print(
                f"    file saved → peer {label:<7} p50 {statistics.median(times) * 1e3:7.1f} ms"
                f"  p99 {pct(times, 0.99) * 1e3:7.1f} ms{goal}"
            )
        if e["misses"]:
            print(f"    !! {e['misses']} edit(s) not visible within {WAIT_SECONDS:.0f} s")
    for n, (ready, rss) in starts.items():
        goal = "   (goal < 2000 ms)" if n == 10_000 else ""
        print(
            f"  start → READY, {n:>6} peers    {statistics.median(ready) * 1e3:7.1f} ms"
            f"  (runs: {', '.join(f'{t * 1e3:.0f}' for t in ready)}){goal}"
        )
        goal = "   (goal < 300 MB)" if n == 10_000 else ""
        print(f"  RSS 1 s after READY, {n:>6} peers {statistics.median(rss):7.1f} MB{goal}")


if __name__ == "__main__":
    main()
