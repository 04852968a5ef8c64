"""Helpers for the device tests (no tests here): peer changes as the reconciler builds them, a
started device on a loop that never runs, and an inside that does nothing."""

from __future__ import annotations

import asyncio
import contextlib
import socket

from tether.device.change import DeviceChange, PeerChange
from tether.device.device import Device


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

    def receive_packets(self, packets, now):
        pass

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

    def counters(self):
        return {}

    def refusals(self):
        return {}

    def close(self):
        pass
