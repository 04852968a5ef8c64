"""API figures through the real WSGI server (waitress) on 127.0.0.1.

- POST /peer/add latency, p50 and p99, on devices with 10, 1,000 and 10,000 existing peers
  (goal: p50 < 20 ms at 10,000). Each add is a locked read-modify-write of the file with fsync,
  made by an anonymous caller with a token configured, so it takes every access step: caller
  check, self-service cap, quarantine, owner secret and the state file's write. The existing
  peers are written by hand, or (", API-added") all have owner entries in the state file, with
  100 addresses in quarantine: the state file's worst case.
- GET /peer/config requests per second from several keep-alive clients (goal: >= 1,000/s).

The server runs in its own process (as in the daemon, it does not share the GIL with the
clients). Every loop is bounded in count and time. Run: `.venv/bin/python bench/bench_api.py`.
"""

from __future__ import annotations

import hashlib
import http.client
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from tether import keys

REPO = Path(__file__).resolve().parents[1]
ADDS = 200
ADD_SECONDS = 30.0
GET_SECONDS = 4.0
GET_CLIENTS = 2  # processes
GET_THREADS = 4  # keep-alive connections per process

SERVER = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
from tether.api.http.app import make_app
from tether.api.peers.clientconf import PublicEndpoints
from tether.api.hub import FileOnlyHub
from tether.api.http.server import start_api
public = PublicEndpoints(ipv4="203.0.113.7")
app = make_app(
    FileOnlyHub(sys.argv[2]), public=public, rate_limit=None, token="bench-admin-token-0123456789",
    self_service_max=0,
)
handle = start_api(app, "127.0.0.1", 0)
print(handle.port, flush=True)
sys.stdin.read()
handle.stop()
"""


def fake_key(i: int, salt: str) -> str:
    return keys.encode(hashlib.sha256(f"{salt}-{i}".encode()).digest())


def make_device(directory: str, peers: int) -> None:
    lines = [
        "# benchmark device",
        "[Interface]",
        "Address = 10.64.0.1/10, fd64::1/64",
        "ListenPort = 51820",
        f"PrivateKey = {keys.genkey()}",
        "",
    ]
    for i in range(peers):
        host = 0x0A400002 + i
        ip = f"{host >> 24}.{host >> 16 & 255}.{host >> 8 & 255}.{host & 255}"
        lines += [
            f"# peer {i}",
            "[Peer]",
            f"PublicKey = {fake_key(i, 'existing')}",
            f"AllowedIPs = {ip}/32, fd64::{i + 2:x}/128",
            "",
        ]
    path = os.path.join(directory, "bench.conf")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    os.chmod(path, 0o600)


def make_state(directory: str, peers: int) -> None:
    """Owner entries for every existing peer, and 100 quarantined addresses."""
    from tether.api.registry import FileRegistry, state_path
    from tether.api.state import Owner

    def fill(state) -> None:
        for i in range(peers):
            host = 0x0A400002 + i
            ip = f"{host >> 24}.{host >> 16 & 255}.{host >> 8 & 255}.{host & 255}"
            state.set_owner(
                fake_key(i, "existing"),
                Owner("ab" * 32, 1_700_000_000, True, None, (f"{ip}/32", f"fd64::{i + 2:x}/128")),
            )
        far = 0x0A800000  # 10.128.0.0: inside 10.64/10, beyond every existing peer
        nets = [f"10.128.{(far + i) >> 8 & 255}.{(far + i) & 255}/32" for i in range(100)]
        state.release(nets, time.time(), 3600, True)

    FileRegistry(state_path(directory, "bench")).update(fill)


def start_server(directory: str):
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(REPO), directory],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    port = int(proc.stdout.readline())
    return proc, port


def stop_server(proc) -> None:
    proc.stdin.close()
    proc.wait(timeout=30)


def bench_adds(peers: int, owners: bool = False) -> tuple[float, float, int]:
    with tempfile.TemporaryDirectory(prefix="bench-api-") as d:
        make_device(d, peers)
        if owners:
            make_state(d, peers)
        proc, port = start_server(d)
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            # the first request parses the file (cold cache); that is start-up, not an add
            conn.request("GET", f"/peer/config/ipv4/{fake_key(0, 'existing')}")
            conn.getresponse().read()
            times = []
            deadline = time.monotonic() + ADD_SECONDS
            for i in range(ADDS):
                if time.monotonic() > deadline:
                    break
                t0 = time.perf_counter()
                conn.request("POST", f"/peer/add/ipv4/{fake_key(i, 'new')}")
                r = conn.getresponse()
                r.read()
                times.append(time.perf_counter() - t0)
                assert r.status == 200 and r.getheader("Tether-Peer-Secret"), r.status
            conn.close()
        finally:
            stop_server(proc)
    times.sort()
    p50 = statistics.median(times) * 1000
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))] * 1000
    return p50, p99, len(times)


def _get_worker(port: int, path: str, until: float, out) -> None:
    counts = []

    def loop():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        n = 0
        while time.monotonic() < until:
            conn.request("GET", path)
            r = conn.getresponse()
            r.read()
            if r.status != 200:
                raise RuntimeError(f"status {r.status}")
            n += 1
        conn.close()
        counts.append(n)

    threads = [threading.Thread(target=loop) for _ in range(GET_THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put(sum(counts))


def bench_gets(peers: int) -> float:
    with tempfile.TemporaryDirectory(prefix="bench-api-") as d:
        make_device(d, peers)
        proc, port = start_server(d)
        try:
            path = f"/peer/config/ipv4/{fake_key(peers // 2, 'existing')}"
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", path)
            conn.getresponse().read()
            conn.close()
            ctx = mp.get_context("spawn")
            out = ctx.Queue()
            start = time.monotonic()
            until = start + GET_SECONDS
            workers = [
                ctx.Process(target=_get_worker, args=(port, path, until, out))
                for _ in range(GET_CLIENTS)
            ]
            for w in workers:
                w.start()
            total = sum(out.get(timeout=GET_SECONDS + 60) for _ in workers)
            for w in workers:
                w.join(timeout=30)
            elapsed = time.monotonic() - start
        finally:
            stop_server(proc)
    return total / elapsed


def main() -> None:
    print("POST /peer/add through waitress on 127.0.0.1 (anonymous, access checks, fsync):")
    for peers, owners in ((10, False), (1_000, False), (10_000, False), (10_000, True)):
        p50, p99, n = bench_adds(peers, owners)
        goal = "  (goal p50 < 20 ms)" if peers == 10_000 else ""
        kind = ", API-added" if owners else ""
        print(
            f"  {peers:>6} existing peers{kind}: p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  "
            f"({n} adds){goal}"
        )
    for peers in (10, 10_000):
        rate = bench_gets(peers)
        print(
            f"GET /peer/config, {peers} peers, {GET_CLIENTS * GET_THREADS} keep-alive clients: "
            f"{rate:,.0f} requests/s  (goal >= 1,000/s)"
        )


if __name__ == "__main__":
    main()
