"""A running device's configuration-relevant state, as the reconciler compares it with a file."""

from __future__ import annotations

from dataclasses import dataclass, field

from tether.config.exit_settings import ExitSettings


@dataclass
class PeerState:
    preshared_key: bytes | None
    persistent_keepalive: int
    allowed_ips: list
    endpoint: tuple[str, int] | None = None


@dataclass
class RunningState:
    private_key: bytes | None
    listen_port: int
    mtu: int
    addresses: list
    peers: dict[bytes, PeerState] = field(default_factory=dict)
    exit: ExitSettings = field(default_factory=ExitSettings)  # the [Exit] section it runs
