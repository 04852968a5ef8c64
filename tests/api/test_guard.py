"""Hostile clients against the real server on loopback: slowloris and made-up methods.

Each attack is bounded in connections, requests and seconds. Attackers use their own loopback
source addresses (127.0.0.0/8 is all local), so the per-client cap tells them apart from the
well-behaved client, whose every request must be answered within a second throughout.
"""

from __future__ import annotations

import gc
import http.client
import random
import socket
import string
import threading
import time
import tracemalloc

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tether.api.http.app import make_app
from tether.api.http.server import start_api

from .conftest import PUBLIC
from .support import FakeHub

TOKEN = "admin-token-0123456789abcdef"
PARTIAL = b"GET /healthz HTTP/1.1\r\nHost: api\r\nX-Slow: "  # never finished


@pytest.fixture
def served(conf_dir):
    app = make_app(FakeHub(conf_dir), public=PUBLIC, token=TOKEN, rate_limit=None)
    handle = start_api(app, "127.0.0.1", 0)
    yield handle
    handle.stop()


def half_open(port: int, source: str) -> socket.socket | None:
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=2, source_address=(source, 0))
        s.sendall(PARTIAL)
        return s
    except OSError:
        return None


def timed_get(port: int, path: str = "/healthz", source: str = "127.0.0.3") -> tuple[int, float]:
    t0 = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5, source_address=(source, 0))
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        r.read()
        return r.status, time.monotonic() - t0
    finally:
        conn.close()


def open_channels(handle) -> int:
    return sum(len(s.active_channels) for s in handle.servers)


def wait_until(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def traced_kib() -> float:
    gc.collect()
    return tracemalloc.get_traced_memory()[0] / 1024


def test_slowloris_does_not_keep_others_out(served):
    port = served.port
    for _ in range(20):
        timed_get(port)  # warm up before measuring memory
    tracemalloc.start()
    try:
        base = traced_kib()
        held: list[socket.socket] = []
        stop = threading.Event()
        reconnects = [0]

        def reconnect_loop():
            # one attacker address that reconnects as fast as the server closes it (bounded)
            mine: list[socket.socket] = []
            deadline = time.monotonic() + 4
            while not stop.is_set() and time.monotonic() < deadline and reconnects[0] < 3000:
                mine = [s for s in mine if _alive(s)]
                while len(mine) < 40 and reconnects[0] < 3000:
                    s = half_open(port, "127.0.0.4")
                    reconnects[0] += 1
                    if s is not None:
                        mine.append(s)
                time.sleep(0.01)
            for s in mine:
                s.close()

        loop = threading.Thread(target=reconnect_loop)
        loop.start()
        # 400 half-sent requests from one address, then 16 from each of 20 more addresses:
        # more than the server's 256 connections in all
        held += [s for s in (half_open(port, "127.0.0.2") for _ in range(400)) if s]
        for i in range(20):
            held += [s for s in (half_open(port, f"127.0.1.{i + 1}") for _ in range(16)) if s]
        latencies = []
        for _ in range(20):
            status, took = timed_get(port)
            assert status == 200
            latencies.append(took)
            time.sleep(0.05)
        stop.set()
        loop.join(10)
        assert max(latencies) < 1.0, latencies
        server = served.servers[0]
        assert server.refused > 300  # the per-client cap closed most at once
        assert server.evicted > 0  # the 20 addresses filled the server: waiting ones made room
        assert open_channels(served) <= 256 + 1
        for s in held:
            s.close()
        assert wait_until(lambda: open_channels(served) == 0, 10), open_channels(served)
        grown = traced_kib() - base
        assert grown < 512, f"{grown:.0f} KiB more after the attack"
    finally:
        tracemalloc.stop()
    assert timed_get(port)[0] == 200


def _alive(s: socket.socket) -> bool:
    try:
        s.setblocking(False)
        try:
            return s.recv(1, socket.MSG_PEEK) != b""
        except BlockingIOError:
            return True
        finally:
            s.setblocking(True)
    except OSError:
        return False


def test_a_trickling_request_is_cut_off_at_the_deadline(conf_dir):
    app = make_app(FakeHub(conf_dir), public=PUBLIC, rate_limit=None)
    handle = start_api(app, "127.0.0.1", 0, request_timeout=1.0)
    try:
        s = socket.create_connection(("127.0.0.1", handle.port), timeout=5)
        s.sendall(b"GET /healthz HTTP/1.1\r\n")
        t0 = time.monotonic()
        closed = False
        while time.monotonic() - t0 < 5:
            try:
                s.sendall(b"X-A: b\r\n")  # a byte now and then keeps stock waitress waiting
            except OSError:
                closed = True
                break
            s.settimeout(0.2)
            try:
                if s.recv(1) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
            except ConnectionResetError:  # cut off while our last bytes were unread: a reset
                closed = True
                break
        took = time.monotonic() - t0
        s.close()
        assert closed and 0.9 < took < 3.5, took
        assert handle.servers[0].timed_out >= 1
        # a normal keep-alive client is unaffected while it keeps asking
        conn = http.client.HTTPConnection("127.0.0.1", handle.port, timeout=5)
        for _ in range(3):
            conn.request("GET", "/healthz")
            assert conn.getresponse().read() == b"ok: 1 device\n"
        conn.close()
    finally:
        handle.stop()


def test_random_methods_do_not_grow_the_metrics(served):
    port = served.port
    rnd = random.Random(9)

    def flood(count: int, deadline: float) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        sent = 0
        try:
            while sent < count and time.monotonic() < deadline:
                method = "".join(rnd.choices(string.ascii_uppercase, k=rnd.randint(3, 24)))
                conn.request(method, "/healthz")
                r = conn.getresponse()
                r.read()
                assert r.status in (404, 405, 501)
                sent += 1
        finally:
            conn.close()
        return sent

    flood(300, time.monotonic() + 20)  # warm up
    tracemalloc.start()
    try:
        base = traced_kib()
        sent = flood(3000, time.monotonic() + 30)
        grown = traced_kib() - base
    finally:
        tracemalloc.stop()
    assert sent >= 1000
    assert grown < 256, f"{grown:.0f} KiB more after {sent} requests"
    assert timed_get(port)[1] < 1.0
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    text = conn.getresponse().read().decode()
    conn.close()
    methods = {
        s.labels["method"]
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name.startswith("tetherctl_api_requests")
    }
    assert methods == {"GET", "other"}
