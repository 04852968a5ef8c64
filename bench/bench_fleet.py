"""A fleet of two hosts sharing one device through etcd (DESIGN.md §7), on loopback.

Two real `tetherctl run --fleet-etcd` daemons (host A and host B, each with its own copy of the
device file) and one etcd member from Debian, all on 127.0.0.1. For devices that already have
10, 1,000 and 10,000 fleet peers (written into etcd before the hosts start):

- add -> live on the other host: from the start of `POST /peer/add` on A until B's daemon logs
  that it applied the new peer (its reconciler's `applied ... set_peer <key>` line, written once
  the peer is on B's running device), p50 and p99 (goal: p50 < 200 ms, all < 1 s), once both
  hosts have applied the fleet's existing peers;
- API add latency on A in fleet mode (the etcd transaction, then A's own render and apply), p50,
  beside the same add on a file-only daemon (no --fleet-etcd) with as many peers in its file.

Every loop is bounded in count and time; every process started is ended by pid.
Run: `.venv/bin/python bench/bench_fleet.py [--sizes 10,1000,10000] [--adds 40]`.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.etcdlab import EtcdCluster, free_port  # noqa: E402
from tether import keys  # noqa: E402

NAME = "bf0"
PREFIX = "/tetherctl/"
BATCH = 50  # peers per etcd transaction while filling (2 keys each; etcd allows 128 ops)
LIVE_TIMEOUT = 10.0
RUN_SECONDS = 120.0  # per size, all adds


def fake_key(i: int, salt: str) -> str:
    return keys.encode(hashlib.sha256(f"{salt}-{i}".encode()).digest())


def host_address(i: int) -> str:
    """The i-th host address of 10.200.0.0/16 (room for 10,000 peers)."""
    n = i + 2
    return f"10.200.{n // 256}.{n % 256}/32"


def device_text(private: str, peers: int = 0) -> str:
    text = f"[Interface]\nPrivateKey = {private}\nAddress = 10.200.0.1/16\n"
    for i in range(peers):
        text += f"\n[Peer]\nPublicKey = {fake_key(i, 'file')}\nAllowedIPs = {host_address(i)}\n"
    return text


def fill_etcd(etcd: EtcdCluster, n: int) -> None:
    root = f"{PREFIX}{NAME}/".encode()

    def b64(b: bytes) -> str:
        return base64.b64encode(b).decode()

    for start in range(0, n, BATCH):
        ops = []
        for i in range(start, min(n, start + BATCH)):
            key, net = fake_key(i, "fleet"), host_address(i)
            peer = {"public_key": key, "allowed_ips": [net], "preshared_key": None, "comment": ""}
            for k, v in (
                (b"peers/" + key.encode(), peer),
                (b"addresses/" + net.encode(), {"peer": key}),
            ):
                ops.append(
                    {"request_put": {"key": b64(root + k), "value": b64(json.dumps(v).encode())}}
                )
        etcd.call("/v3/kv/txn", {"compare": [], "success": ops})


class Daemon:
    def __init__(self, tmp: Path, label: str, text: str, fleet: str | None) -> None:
        self.dir = tmp / label
        (self.dir / "run").mkdir(parents=True)
        path = self.dir / f"{NAME}.conf"
        path.write_text(text)
        path.chmod(0o600)
        self.port = free_port()
        self.log = self.dir / "log"
        args = [sys.executable, "-m", "tether", "run", NAME, "--config-dir", str(self.dir),
                "--run-dir", str(self.dir / "run"), "--log", "info",
                "--api-listen", f"127.0.0.1:{self.port}", "--api-rate-limit", "0",
                "--public-ipv4", "203.0.113.7"]  # fmt: skip
        if fleet:
            args += ["--fleet-etcd", fleet]
        env = {k: v for k, v in os.environ.items() if not k.startswith("TETHERCTL_")}
        env |= {"PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=out, env=env)
        self.conn = None
        deadline = time.monotonic() + 120
        while True:
            try:
                if self.request("GET", "/healthz")[0] == 200:
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{label} did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.2)
        self.seen = self.log.stat().st_size

    def request(self, method: str, path: str) -> tuple[int, bytes]:
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            self.conn.request(method, path)
            r = self.conn.getresponse()
            return r.status, r.read()
        except OSError:
            self.conn.close()
            self.conn = None
            raise

    def settle(self, timeout: float = 120.0) -> None:
        """Wait until the first rendering of the fleet's peers is live here (a host answers
        /healthz before its reconciler has applied 10,000 peers; adds made meanwhile would
        measure that start-up, not an add)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_bytes()
            at = text.find(b"rendered (")
            if at >= 0 and text.find(b"applied set_peer", at) >= 0:
                self.seen = len(text)
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.log}: the fleet's peers were not applied in {timeout} s")

    def wait_applied(self, key: str, deadline: float) -> float | None:
        """When this daemon's log says it applied peer `key` (monotonic clock of ours)."""
        mark = f"set_peer {key[:8]}".encode()
        with open(self.log, "rb") as f:
            while time.monotonic() < deadline:
                f.seek(self.seen)
                chunk = f.read()
                at = chunk.find(mark)
                if at >= 0:
                    now = time.monotonic()
                    self.seen += chunk.rfind(b"\n", 0, at) + 1
                    return now
                time.sleep(0.002)
        return None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def one_size(tmp: Path, n: int, adds: int) -> dict:
    private = keys.genkey()
    (tmp / f"etcd{n}").mkdir()
    etcd = EtcdCluster(tmp / f"etcd{n}")
    daemons = []
    try:
        fill_etcd(etcd, n)
        a = Daemon(tmp, f"a{n}", device_text(private), etcd.urls)
        daemons.append(a)
        b = Daemon(tmp, f"b{n}", device_text(private), etcd.urls)
        daemons.append(b)
        a.settle()
        b.settle()
        live, api = [], []
        stop = time.monotonic() + RUN_SECONDS
        for i in range(adds):
            if time.monotonic() > stop:
                break
            key = fake_key(i, f"new{n}")
            t0 = time.monotonic()
            status, body = a.request("POST", f"/peer/add/any/{key}")
            api.append(time.monotonic() - t0)
            if status != 200:
                raise RuntimeError(f"add on A: {status} {body[:200]!r}")
            seen = b.wait_applied(key, t0 + LIVE_TIMEOUT)
            if seen is None:
                raise RuntimeError(f"peer {key} not live on B within {LIVE_TIMEOUT} s")
            live.append(seen - t0)
        for d in daemons:
            d.close()
        daemons.clear()
        plain = Daemon(tmp, f"f{n}", device_text(private, n), None)
        daemons.append(plain)
        file_api = []
        for i in range(len(api)):
            key = fake_key(i, f"file-new{n}")
            t0 = time.monotonic()
            status, body = plain.request("POST", f"/peer/add/any/{key}")
            file_api.append(time.monotonic() - t0)
            if status != 200:
                raise RuntimeError(f"add on the file-only daemon: {status} {body[:200]!r}")
        return {"live": live, "api": api, "file_api": file_api}
    finally:
        for d in daemons:
            d.close()
        etcd.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,1000,10000")
    parser.add_argument("--adds", type=int, default=40)
    args = parser.parse_args()
    print(f"{'peers':>6} {'adds':>5} {'live on B p50':>14} {'p99':>8} {'max':>8} "
          f"{'API add fleet p50':>18} {'file-only p50':>14}")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as d:
        for n in (int(x) for x in args.sizes.split(",")):
            r = one_size(Path(d), n, args.adds)
            ms = 1000
            print(
                f"{n:>6} {len(r['live']):>5} {statistics.median(r['live']) * ms:>11.1f} ms"
                f" {pct(r['live'], 99) * ms:>5.0f} ms {max(r['live']) * ms:>5.0f} ms"
                f" {statistics.median(r['api']) * ms:>15.1f} ms"
                f" {statistics.median(r['file_api']) * ms:>11.1f} ms",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
