"""Helpers for the device tests (no tests here): peer changes as the reconciler builds them, a
started device on a loop that never runs, an inside that does nothing, and a fake device that
drives an `ExitShell` on a real loop (the tunnel replaced by a list of packets)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
import time

import pytest

from tether.device.change import DeviceChange, PeerChange
from tether.device.device import Device
from tether.device.exit import ExitShell
from tether.device.inside import InsideContext

from ..netstack.support import PeerTcp

PEER_KEY = b"K" * 32  # the one peer of `FakeDevice`


def peer_change(key: bytes, *, allowed_ips=None, **fields) -> PeerChange:
    """A PeerChange as the reconciler makes one from a file: `allowed_ips` replaces the list."""
    if allowed_ips is not None:
        fields.update(replace_allowed_ips=True, allowed_ips=tuple(allowed_ips))
    return PeerChange(key, **fields)


def set_peer(device, key: bytes, **fields) -> None:
    device.apply(DeviceChange(peers=(peer_change(key, **fields),)))


def remove_peer(device, key: bytes) -> None:
    device.apply(DeviceChange(peers=(PeerChange(key, remove=True),)))


def endpoint_of(device, key: bytes):
    return device.snapshot().peers[key].endpoint


@contextlib.contextmanager
def idle_device(name: str, **kwargs):
    """A device bound on loopback, on a loop that is never run: enough for configuration and
    snapshots, which need no loop iteration."""
    loop = asyncio.new_event_loop()
    device = Device(name, bind_host4="127.0.0.1", bind_host6="::1", **kwargs)
    device.start(loop, 0)
    try:
        yield device
    finally:
        device.close()
        loop.close()


def loopback() -> str:
    """The loopback address a device bound with bind_host6="::1" answers on: it prefers IPv6,
    as udp.bind does."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return "::1"
    except OSError:
        return "127.0.0.1"


class QuietInside:
    """An `Inside` that takes everything and produces nothing; tests override what they watch."""

    def __init__(self, context) -> None:
        self.context = context

    def receive_packets(self, packets, now, queue_delay=None):
        pass

    def poll(self):
        return False

    def take_packets(self):
        return []

    def next_timer(self):
        return None

    def handle_timer(self, now):
        pass

    def forget_peer(self, peer_key, now, keep=None):
        pass

    def set_addresses(self, addresses):
        pass

    def set_mtu(self, mtu):
        pass

    def set_exit(self, settings):
        pass

    def set_peer_egress(self, per_peer):
        pass

    def egress_status(self):
        return {}

    def counters(self):
        return {}

    def refusals(self):
        return {}

    def close(self):
        pass


class FakeDevice:
    """What `Device` does around its `Inside`, with the tunnel replaced by a list of packets."""

    def __init__(self, loop, mtu: int = 1420) -> None:
        self.loop = loop
        self.addresses = (ipaddress.ip_interface("10.7.0.1/24"), ipaddress.ip_interface(
            "fd00:7::1/64"))  # fmt: skip
        self.mtu = mtu
        self.inside = None
        self.packets: list[bytes] = []
        self.arrived = asyncio.Event()
        self.wakes = 0
        self.sent_now: list[list[bytes]] = []  # each `send_now` call's packets, in order
        self._timer = None
        self._woken = False

    def start(self, *, send_now: bool = True, **kw) -> ExitShell:
        context = InsideContext(
            self.loop, self.wake, self.mtu, self.addresses, None,
            send_now=self.send_now if send_now else None,
        )  # fmt: skip
        self.inside = ExitShell(context, **kw)
        return self.inside

    def send_now(self, packets: list[bytes]) -> None:
        self.sent_now.append(list(packets))
        self.packets += packets
        self.arrived.set()

    def inject(self, *packets: bytes) -> None:
        self.inside.receive_packets([(PEER_KEY, p) for p in packets], time.monotonic())
        self.collect()

    def wake(self) -> None:
        self.wakes += 1
        if not self._woken:
            self._woken = True
            self.loop.call_soon(self._on_wake)

    def _on_wake(self) -> None:
        self._woken = False
        self.collect()

    def collect(self) -> None:
        out = self.inside.take_packets()
        if out:
            self.packets += out
            self.arrived.set()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        d = self.inside.next_timer()
        if d is not None:
            self._timer = self.loop.call_at(d, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.inside.handle_timer(time.monotonic())
        self.collect()

    async def next_packets(self, timeout: float = 5.0) -> list[bytes]:
        if not self.packets:
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), timeout)
        out, self.packets = self.packets, []
        return out

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.inside.close()


def run(coro, timeout: float = 60.0):
    async def bounded():
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


async def drive(dev: FakeDevice, client: PeerTcp, until, timeout: float = 30.0) -> None:
    """Feed the exit's packets to the client and the client's answers back until `until()`."""
    deadline = time.monotonic() + timeout
    while not until():
        left = deadline - time.monotonic()
        assert left > 0, "timed out"
        try:
            packets = await dev.next_packets(min(left, 1.0))
        except TimeoutError:
            dev.inject(*client.retransmit())  # the harness is lossless; this only un-sticks
            continue
        answers = []
        for p in packets:
            answers += client.receive(p)
        answers += client.output()
        dev.inject(*answers)


async def echo_handler(reader, writer) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


def skip_or_fail(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must be able to run this test (run it as root)")
    pytest.skip(reason)
