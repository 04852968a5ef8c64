"""Endpoint names are resolved off the loop: a hung resolver never stops a device serving."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time

from tether import keys
from tether.config.values import Endpoint
from tether.device.device import Device
from tether.device.resolve import WORKERS
from tether.device.uapi.client import get
from tether.device.uapi.server import UapiServer

from .support import endpoint_of, remove_peer, set_peer

PEER = keys.public_from_private(keys.generate_private())
OTHER = keys.public_from_private(keys.generate_private())
RESOLVE_THREAD = "tether-resolve"


class HangingResolver:
    """getaddrinfo's signature; blocks until released, then answers `answer`."""

    def __init__(self, answer: str = "192.0.2.77"):
        self.release = threading.Event()
        self.calls: list[str] = []
        self.answer = answer

    def __call__(self, host, port, *args, **kwargs):
        self.calls.append(host)
        self.release.wait(30)
        return [(socket.AF_INET, socket.SOCK_DGRAM, 17, "", (self.answer, port))]


def with_device(tmp_path, body, **kwargs) -> None:
    """Run `await body(device, uapi)` on a fresh loop with a started device and UAPI socket."""

    async def main():
        device = Device("tres", private_key=keys.generate_private(), **kwargs)
        device.start(asyncio.get_running_loop(), 0)
        uapi = UapiServer(device, str(tmp_path))
        await uapi.start()
        try:
            await body(device, uapi)
        finally:
            device.close()
            await uapi.close()

    asyncio.run(main())


async def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_a_hung_resolver_times_out_while_the_loop_keeps_serving(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="tether.device")
    resolver = HangingResolver()

    async def body(device, uapi):
        started = time.monotonic()
        set_peer(device, PEER, allowed_ips=[], endpoint=Endpoint("hangs.example", 51820))
        # the change did not wait for the resolver (which hangs for 30 s unless released)
        assert time.monotonic() - started < 5
        # while the resolver hangs: a timer fires and the UAPI socket answers
        loop = asyncio.get_running_loop()
        fired = loop.create_future()
        loop.call_later(0.05, lambda: fired.set_result(time.monotonic()))
        assert await asyncio.wait_for(fired, 5) - started < 5
        snap = await asyncio.wait_for(asyncio.to_thread(get, uapi.path), 2)
        assert [p.public_key for p in snap.peers] == [PEER]
        assert snap.peers[0].endpoint is None
        assert resolver.calls == ["hangs.example"]
        await wait_until(lambda: "cannot resolve" in caplog.text)
        assert time.monotonic() - started >= 0.5
        # the answer that comes after the timeout is dropped, and nothing is logged again
        resolver.release.set()
        await asyncio.sleep(0.2)
        assert endpoint_of(device, PEER) is None

    with_device(tmp_path, body, resolver=resolver, resolve_timeout=0.5)
    lines = [r.getMessage() for r in caplog.records if "cannot resolve" in r.getMessage()]
    assert lines == [
        f"tres: peer {keys.encode(PEER)}: cannot resolve endpoint hangs.example:51820: "
        "no answer within 0.5 s (the peer is reachable once it contacts us)"
    ]


def test_the_answer_arrives_later_and_a_newer_endpoint_wins(tmp_path):
    slow = HangingResolver("192.0.2.10")

    async def body(device, uapi):
        set_peer(device, PEER, allowed_ips=[], endpoint=Endpoint("slow.example", 1000))
        set_peer(device, OTHER, allowed_ips=[], endpoint=Endpoint("slow.example", 2000))
        # PEER's endpoint is replaced (an IP from the file) before the name resolves
        set_peer(device, PEER, endpoint=Endpoint("198.51.100.5", 3000))
        assert endpoint_of(device, PEER) == ("198.51.100.5", 3000)
        slow.release.set()
        await wait_until(lambda: endpoint_of(device, OTHER) is not None)
        assert endpoint_of(device, OTHER) == ("192.0.2.10", 2000)
        await asyncio.sleep(0.1)
        assert endpoint_of(device, PEER) == ("198.51.100.5", 3000)

    with_device(tmp_path, body, resolver=slow, resolve_timeout=10)


def test_a_peer_removed_and_added_again_does_not_get_the_old_answer(tmp_path):
    slow = HangingResolver()

    async def body(device, uapi):
        set_peer(device, PEER, allowed_ips=[], endpoint=Endpoint("slow.example", 1000))
        remove_peer(device, PEER)
        set_peer(device, PEER, allowed_ips=[])
        slow.release.set()
        await asyncio.sleep(0.3)
        assert endpoint_of(device, PEER) is None

    with_device(tmp_path, body, resolver=slow)


def test_hung_lookups_hold_at_most_a_few_threads(tmp_path):
    resolver = HangingResolver()

    async def body(device, uapi):
        for i in range(20):
            key = keys.public_from_private(keys.generate_private())
            set_peer(device, key, allowed_ips=[], endpoint=Endpoint(f"n{i}.example", 1))
        await asyncio.sleep(0.1)
        names = [t.name for t in threading.enumerate()]
        assert names.count(RESOLVE_THREAD) == WORKERS
        await asyncio.sleep(0.5)  # every request has timed out, queued ones included
        resolver.release.set()
        await wait_until(lambda: RESOLVE_THREAD not in [t.name for t in threading.enumerate()])
        # the queued requests were skipped, not resolved after their timeout
        assert len(resolver.calls) == WORKERS

    with_device(tmp_path, body, resolver=resolver, resolve_timeout=0.3)


def test_localhost_resolves_for_real(tmp_path):
    async def body(device, uapi):
        set_peer(device, PEER, allowed_ips=[], endpoint=Endpoint("localhost", 51999))
        await wait_until(lambda: endpoint_of(device, PEER) is not None)
        assert endpoint_of(device, PEER) in (("127.0.0.1", 51999), ("::1", 51999))

    with_device(tmp_path, body)
