"""DaemonHub reads a running device only through its public views (`snapshot()`, `listen_port`),
from WSGI-like threads, crossing into the loop thread for every call."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

from tether import keys
from tether.appliance.daemon import Slot
from tether.appliance.hub import DaemonHub
from tether.device.device import Device
from tether.device.hub import DeviceCounters, DeviceHub

from ..device.support import QuietInside, loopback, set_peer

K1 = keys.public_from_private(keys.generate_private())
K2 = keys.public_from_private(keys.generate_private())
GONE = keys.public_from_private(keys.generate_private())


class CountingInside(QuietInside):
    """An inside with fixed counters and refusals, as the exit reports them."""

    def counters(self):
        return {"udp_flows": 2, "tcp_flows": 1}

    def refusals(self):
        return {K1: 3, GONE: 5}  # GONE is no peer any more: not reported


def test_counters_and_peer_stats_come_from_the_snapshot(tmp_path):
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def on_loop(fn):
        return asyncio.run_coroutine_threadsafe(_call(fn), loop).result(10)

    device = Device(
        "thub",
        private_key=keys.generate_private(),
        inside_factory=CountingInside,
        bind_host4="127.0.0.1",
        bind_host6="::1",
    )
    try:
        on_loop(lambda: device.start(loop, 0))
        on_loop(lambda: set_peer(device, K1, allowed_ips=[ipaddress.ip_network("10.0.0.2/32")]))
        on_loop(lambda: set_peer(device, K2))
        daemon = SimpleNamespace(
            loop=loop, config_dir=Path(tmp_path), slots={"d0": Slot("d0", tmp_path / "d0.conf")}
        )
        daemon.slots["d0"].device = device
        hub = DaemonHub(daemon)
        assert isinstance(hub, DeviceHub)
        assert hub.device_names() == ["d0"]
        assert hub.listen_port("d0") == device.listen_port
        assert hub.peer_is_live("d0", K1) and not hub.peer_is_live("d0", GONE)
        assert [(s.public_key, s.rx_bytes, s.last_handshake) for s in hub.peer_stats("d0")] == [
            (K1, 0, None),
            (K2, 0, None),
        ]
        # a datagram no WireGuard message starts like: the core counts it as malformed
        host = loopback()
        with socket.socket(socket.AF_INET6 if host == "::1" else socket.AF_INET,
                           socket.SOCK_DGRAM) as junk:  # fmt: skip
            junk.sendto(b"\x09junk", (host, device.listen_port))
        deadline = time.monotonic() + 5
        while not hub.counters("d0").drops:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        counters = hub.counters("d0")
        waited, reads = counters.queue_delay  # the junk datagram's read was timed
        assert reads == 1 and 0.0 <= waited < 5.0
        assert counters == DeviceCounters(
            handshakes=0,
            drops={"malformed": 1},
            exit_flows={"udp": 2, "tcp": 1},
            exit_refused={K1: 3},
            queue_delay=(waited, 1),
        )
        assert hub.counters("nope") == DeviceCounters() and hub.peer_stats("nope") == []
    finally:
        on_loop(device.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


async def _call(fn):
    return fn()
