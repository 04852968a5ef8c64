"""The real WSGI server on 127.0.0.1: serving, limits, and a clean stop from another thread."""

from __future__ import annotations

import http.client
import socket
import threading

import pytest

from tether.api.http.app import make_app
from tether.api.http.server import parse_listen, start_api

from .conftest import PUBLIC
from .support import PEER1, FakeHub, new_key


@pytest.fixture
def served(conf_dir):
    handle = start_api(make_app(FakeHub(conf_dir), public=PUBLIC, rate_limit=None), "127.0.0.1", 0)
    yield handle
    handle.stop()


def request(handle, method, path, body=None, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", handle.port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def test_serves_the_routes(served):
    assert served.host == "127.0.0.1" and served.port > 0
    key = new_key()
    status, headers, body = request(served, "POST", f"/peer/add/ipv4/{key}")
    assert status == 200 and b"Address = 10.8.0.3/32" in body
    assert headers["Server"] == "tetherctl"
    status, _, body = request(served, "GET", f"/peer/config/ipv4/{key}")
    assert status == 200
    status, _, body = request(
        served, "GET", f"/peer/config/ipv4/{key}", headers={"X-A": "b" * 20000}
    )
    assert status == 431 or status == 400  # header block over the server's limit
    status, _, _ = request(served, "DELETE", f"/peer/remove/{PEER1}")
    assert status == 200


def test_percent_encoded_slash_in_key(served):
    key = PEER1.replace("/", "%2F")
    status, _, body = request(served, "GET", f"/peer/config/ipv4/{key}")
    assert status == 200, body


def test_big_body_is_refused_by_the_server(served):
    status, _, _ = request(served, "POST", f"/peer/add/ipv4/{new_key()}", body=b"x" * 200_000)
    assert status == 413


def test_many_parallel_clients(served):
    results = []

    def worker():
        for _ in range(10):
            results.append(request(served, "GET", f"/peer/config/ipv4/{PEER1}")[0])

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 80


def test_stop_releases_the_port_and_closes_connections(conf_dir):
    handle = start_api(make_app(FakeHub(conf_dir), public=PUBLIC), "127.0.0.1", 0)
    idle = socket.create_connection(("127.0.0.1", handle.port))  # a keep-alive client
    assert handle.serving
    handle.stop()
    handle.stop()  # idempotent
    assert not handle.serving
    idle.settimeout(5)
    assert idle.recv(1) == b""  # closed by the server
    idle.close()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", handle.port), timeout=2)
    again = start_api(make_app(FakeHub(conf_dir), public=PUBLIC), "127.0.0.1", handle.port)
    again.stop()


def test_port_in_use_is_an_error_at_start(served, conf_dir):
    with pytest.raises(OSError):
        start_api(make_app(FakeHub(conf_dir), public=PUBLIC), "127.0.0.1", served.port)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("localhost:9090", ("127.0.0.1", 9090)),
        (":9090", ("*", 9090)),
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("[::1]:9091", ("::1", 9091)),
        ("::1", ("::1", 9090)),
        ("9092", ("*", 9092)),
        ("127.0.0.1", ("127.0.0.1", 9090)),
        ("http://localhost:9093/", ("127.0.0.1", 9093)),
    ],
)
def test_parse_listen(text, expected):
    assert parse_listen(text) == expected


@pytest.mark.parametrize("text", ["example.com:80", "127.0.0.1:99999", "[::1:80", "1.2.3.4:x"])
def test_parse_listen_refuses(text):
    with pytest.raises(ValueError):
        parse_listen(text)
