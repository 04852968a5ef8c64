"""A configuration change for a running device, as a value: what `Device.apply()` takes.

Its meaning is `wg set`'s (the UAPI `set` operation), so that the two writers of a device's
configuration speak one language: the appliance's reconciler builds a change from the
difference between a file and `Device.snapshot()`, and the UAPI adapter builds one from a parsed
`set` request. Fields left at None (or False, or empty) change nothing; tetherctl's own
settings (MTU, addresses, the `[Exit]` section, the peers' own `Egress`), which `wg set` cannot
express, ride along.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tether.config.egress import Egress
from tether.config.exit_settings import ExitSettings
from tether.config.values import Endpoint

__all__ = ["ZERO_KEY", "DeviceChange", "PeerChange"]

ZERO_KEY = bytes(32)  # as in wg: the private or preshared key that means "none"


@dataclass(frozen=True)
class PeerChange:
    """One peer's part of a change. Applied in wg's order: remove (which ignores every other
    field), update_only, keys and endpoint, then allowed IPs: replace (drop all), remove, add."""

    public_key: bytes
    remove: bool = False
    update_only: bool = False  # only if the peer exists already
    preshared_key: bytes | None = None  # ZERO_KEY: none
    # an IP literal is used at once; a host name is resolved off the loop (device/resolve.py)
    endpoint: Endpoint | None = None
    persistent_keepalive: int | None = None  # seconds, 0 = off
    replace_allowed_ips: bool = False
    allowed_ips: tuple = ()  # networks added (after replace and remove)
    remove_allowed_ips: tuple = ()  # networks taken away, if this peer owns them


@dataclass(frozen=True)
class DeviceChange:
    """Device fields first (the listen port before anything else, so that a port in use
    refuses the whole change), then `replace_peers`, then the peers in order."""

    private_key: bytes | None = None  # ZERO_KEY: none
    listen_port: int | None = None  # 0: any free port
    mtu: int | None = None
    addresses: tuple | None = None  # the device's own tunnel addresses (ip_interface objects)
    exit: ExitSettings | None = None  # the `[Exit]` section
    # every peer's own Egress (public key → Egress; peers without one are left out), replacing
    # the ones before; for the exit's new flows
    peer_egress: Mapping[bytes, Egress] | None = None
    replace_peers: bool = False  # remove every peer first (those named are then made afresh)
    peers: tuple[PeerChange, ...] = ()

    def __bool__(self) -> bool:
        return bool(
            self.peers
            or self.replace_peers
            or any(
                value is not None
                for value in (
                    self.private_key,
                    self.listen_port,
                    self.mtu,
                    self.addresses,
                    self.exit,
                    self.peer_egress,
                )
            )
        )
