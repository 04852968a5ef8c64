"""A running device as a value: what `Device.snapshot()` returns.

One snapshot serves every reader: the appliance's reconciler compares it with a file (and
SaveConfig folds it into one), the UAPI adapter turns it into a `get` reply, and the hub reads
transfer figures and counters from it for the API's metrics. It is a copy, immutable, safe to
hand to another thread.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from tether.config.egress import Egress
from tether.config.exit_settings import ExitSettings

__all__ = ["PeerState", "RunningState"]


@dataclass(frozen=True)
class PeerState:
    """One peer as the device runs it."""

    preshared_key: bytes | None
    persistent_keepalive: int  # seconds, 0 = off
    allowed_ips: tuple | list  # networks, in `wg show`'s order
    endpoint: tuple[str, int] | None = None  # the address it sends to (learned by roaming too)
    rx_bytes: int = 0
    tx_bytes: int = 0
    last_handshake: float | None = None  # Unix time of the latest handshake; None: never


@dataclass(frozen=True)
class RunningState:
    """The device's configuration as it runs, its peers (by public key, in the order they were
    added) and its counters."""

    private_key: bytes | None
    listen_port: int
    mtu: int
    addresses: tuple | list  # ip_interface objects
    peers: Mapping[bytes, PeerState] = field(default_factory=dict)
    exit: ExitSettings = field(default_factory=ExitSettings)  # the [Exit] section it runs
    # the protocol core's counters: handshake messages by kind, drops as `drop_<reason>`
    counters: Mapping[str, int] = field(default_factory=dict)
    inside: Mapping[str, int] = field(default_factory=dict)  # the inside's (exit flows)
    refusals: Mapping[bytes, int] = field(default_factory=dict)  # exit refusals per peer key
    peer_egress: Mapping[bytes, Egress] = field(default_factory=dict)  # the peers' own Egress
    # whether each upstream proxy in use works, by its label (no password); untried ones absent
    egress_up: Mapping[str, bool] = field(default_factory=dict)
    # (seconds, reads): the summed wait of each socket read's first datagram in the socket
    # queue, and the reads measured; a rate of the first over the second is the mean wait
    queue_delay: tuple[float, int] = (0.0, 0)
