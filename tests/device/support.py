"""Helpers for the device tests (no tests here): peer changes as the reconciler builds them."""

from __future__ import annotations

from tether.device.change import DeviceChange, PeerChange


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
