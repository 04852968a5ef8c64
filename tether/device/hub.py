"""The seam between the HTTP API and whatever runs the devices: the `DeviceHub` protocol and the
values it answers with.

The API is a file editor: it changes `<config dir>/<device>.conf` under the directory lock and
then asks the hub to make the running device match the file *now*. That second step is what lets
a 200 mean "the peer is in the file and live on the device" without racing the daemon's file
watcher: the watcher may apply the same change a moment later, which is a no-op.

It lives at the device layer, below both of its sides, because the API (which calls a hub) and
the appliance (which implements one over its running devices, `DaemonHub`) must not import each
other: the API sits below the appliance, and the interface is about running devices. It imports
nothing of tetherctl. The API's own implementation for processes without the daemon in them,
`FileOnlyHub`, stays in `tether.api.hub`.

Every method may be called from several WSGI worker threads at once.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

__all__ = ["ApplyError", "DeviceCounters", "DeviceHub", "PeerStats"]


class ApplyError(Exception):
    """The running device could not be brought in line with its file; the message is one line
    and safe to show to an API client (no keys, no paths)."""


@dataclass(frozen=True)
class PeerStats:
    """One peer's transfer figures, for metrics, the peer list and the idle-peer janitor."""

    public_key: bytes
    rx_bytes: int = 0
    tx_bytes: int = 0
    last_handshake: float | None = None  # Unix time of the latest handshake; None: never


@dataclass(frozen=True)
class DeviceCounters:
    """A device's counters for metrics."""

    handshakes: int = 0  # completed handshakes since the device came up (a counter)
    drops: Mapping[str, int] = field(default_factory=dict)  # dropped packets by reason (counters)
    exit_flows: Mapping[str, int] = field(default_factory=dict)  # open exit flows by protocol
    # packets the exit refused by policy, per peer public key (counters; live peers only)
    exit_refused: Mapping[bytes, int] = field(default_factory=dict)
    # per upstream proxy in use (its label: `socks5://user@host:port`, never a password),
    # whether it works (gauge); proxies not tried yet are left out
    egress_up: Mapping[str, bool] = field(default_factory=dict)
    # (seconds, reads): how long the first datagram of each socket read had waited in the
    # device's socket queue, summed, and how many reads were measured (a Prometheus summary)
    queue_delay: tuple[float, int] = (0.0, 0)


@runtime_checkable
class DeviceHub(Protocol):
    """What the API needs from the thing that runs devices."""

    @property
    def config_dir(self) -> Path:
        """Where the device files are (the API edits `<config_dir>/<name>.conf`)."""

    def device_names(self) -> list[str]:
        """The devices the API may address, sorted (the daemon: those it serves)."""

    def apply_now(self, name: str, changed: Collection[bytes] = (), written=None) -> None:
        """Make the running device match its file as it is now, and return once it does.
        `written` (tether.config.store.Written): the file as the caller's edit left it, which
        a hub that parses the file may use instead while the file still holds those bytes.

        Called WITHOUT the directory lock held (the daemon may need it, e.g. for SaveConfig).
        `changed` names the peers (public keys) this request added or removed; a hub that applies
        the whole file may ignore it. Raises ApplyError when the device cannot be made to match
        (not running, file refused, timeout). A hub that runs no device returns at once."""

    def listen_port(self, name: str) -> int | None:
        """The UDP port the running device really listens on (ListenPort may be 0 or absent in
        the file); None when not known (then the file's ListenPort is used)."""

    def peer_is_live(self, name: str, public_key: bytes) -> bool:
        """Whether the running device has this peer now."""

    def peer_stats(self, name: str) -> list[PeerStats]:
        """Transfer and latest handshake of every peer of the running device ([] if none)."""

    def counters(self, name: str) -> DeviceCounters:
        """Device-wide counters (zeros when nothing is known)."""
