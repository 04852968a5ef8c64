"""A configured peer: its keys, its sessions, its staged packets and its timers.

The three session slots are the paper's (§5.4.6, §6.1), with wireguard-go's rotation rules:

- `current` is what we encrypt with;
- `previous` is kept for receiving only, so packets in flight during a rekey still decrypt;
- `next` is a responder session awaiting key confirmation: a responder must not send with keys
  until the initiator has proven it holds them by sending the first transport message, since
  the handshake response alone could be a replay of an old initiation answered again.

At most one `PendingInitiation` (our last handshake initiation) exists per peer. Responding to
the peer's initiation does not cancel it, unlike wireguard-go, which keeps a single handshake
slot per peer: when both sides initiate at once, each still completes the exchange it started,
instead of both dropping the other's response and waiting REKEY_TIMEOUT to retry.
"""

from __future__ import annotations

import base64
import math
from collections import deque
from dataclasses import dataclass

from tether.wireguard.allowedips import AllowedIPs, Network
from tether.wireguard.cookie import CookieGenerator
from tether.wireguard.noise import InitiationGuard, LocalIdentity, PeerKeys
from tether.wireguard.session import IndexTable, PendingInitiation, Session
from tether.wireguard.timers import PeerTimers, TimerQueue

__all__ = ["DEFAULT_MAX_STAGED", "Peer", "PeerStatus"]

# Packets staged per peer while no session can carry them; the oldest are dropped first, as
# wireguard-go drops its oldest staged batch, because a fresh packet is more likely still wanted.
DEFAULT_MAX_STAGED = 1024


@dataclass(frozen=True, slots=True)
class PeerStatus:
    """One peer as `wg show` and the UAPI `get` report it, as an immutable value: what the core
    hands to shells, reconcilers and metrics instead of its live `Peer` objects."""

    public_key: bytes
    preshared_key: bytes | None
    endpoint: tuple | None  # (host, port) as the socket layer reports it
    allowed_ips: tuple[Network, ...]  # in the table's order (most recently inserted last)
    persistent_keepalive: int  # seconds, 0 = off
    rx_bytes: int
    tx_bytes: int
    last_handshake: float | None  # wall-clock (Unix) time of the latest handshake; None: never


class Peer(PeerTimers):
    """One peer of a device. Public fields mirror `wg show` / the UAPI `get` output."""

    __slots__ = (
        "public_key",
        "preshared_key",
        "endpoint",
        "persistent_keepalive",
        "rx_bytes",
        "tx_bytes",
        "last_handshake_wall",
        "protocol_version",
        "keys",
        "cookie_generator",
        "initiation_guard",
        "pending",
        "current",
        "previous",
        "next",
        "staged",
        "max_staged",
        "last_sent_handshake",
        "removed",
        "_table",
    )

    def __init__(
        self,
        public_key: bytes,
        *,
        local: LocalIdentity | None,
        table: AllowedIPs,
        timer_queue: TimerQueue,
        max_staged: int = DEFAULT_MAX_STAGED,
    ) -> None:
        self.public_key = bytes(public_key)
        self.preshared_key: bytes | None = None
        # (host, port) as the socket layer reports it; updated by roaming.
        self.endpoint: tuple | None = None
        self.persistent_keepalive = 0  # seconds, 0 = off
        self.rx_bytes = 0
        self.tx_bytes = 0
        self.last_handshake_wall: float | None = None
        self.protocol_version = 1
        self.cookie_generator = CookieGenerator(self.public_key)
        self.initiation_guard = InitiationGuard()
        self.pending: PendingInitiation | None = None
        self.current: Session | None = None
        self.previous: Session | None = None
        self.next: Session | None = None
        self.staged: deque[bytes] = deque()
        self.max_staged = max_staged
        # When we last sent an initiation or response; initiations are at most one per
        # REKEY_TIMEOUT (§6.2), and a response counts, since the peer is about to confirm it.
        self.last_sent_handshake = -math.inf
        self.removed = False
        self._table = table
        self.keys: PeerKeys | None = None
        self.set_local(local)
        self._init_timers(timer_queue)

    @property
    def allowed_ips(self) -> list[Network]:
        """This peer's prefixes in the table's order (most recently inserted last)."""
        return self._table.entries_for_peer(self)

    def status(self) -> PeerStatus:
        """A snapshot of the reported fields."""
        return PeerStatus(
            self.public_key,
            self.preshared_key,
            self.endpoint,
            tuple(self._table.entries_for_peer(self)),
            self.persistent_keepalive,
            self.rx_bytes,
            self.tx_bytes,
            self.last_handshake_wall,
        )

    def set_local(self, local: LocalIdentity | None) -> None:
        """Recompute the handshake keys for our (new) static identity or preshared key."""
        self.keys = None if local is None else PeerKeys(local, self.public_key, self.preshared_key)

    def add_session(self, session: Session, index: IndexTable) -> None:
        """Install a freshly derived session, rotating the slots as wireguard-go does."""
        if session.is_initiator:
            # Our own handshake completed, so its session is confirmed: use it at once. An
            # unconfirmed responder session becomes `previous`, still able to receive.
            index.remove(self.previous)
            if self.next is not None:
                index.remove(self.current)
                self.previous = self.next
                self.next = None
            else:
                self.previous = self.current
            self.current = session
        else:
            index.remove(self.next)
            index.remove(self.previous)
            self.next = session
            self.previous = None
        index.add(session)

    def confirm(self, session: Session, index: IndexTable) -> None:
        """The first packet arrived under `next`: promote it to current."""
        index.remove(self.previous)
        self.previous = self.current
        self.current = session
        self.next = None

    def stage(self, packet: bytes) -> bool:
        """Queue a packet for when a session exists; False if the oldest one was dropped."""
        staged = self.staged
        staged.append(packet)
        if len(staged) > self.max_staged:
            staged.popleft()
            return False
        return True

    def drop_sessions(self, index: IndexTable) -> None:
        """Forget every session and the pending initiation (their indices too)."""
        for session in (self.previous, self.current, self.next):
            index.remove(session)
        self.previous = self.current = self.next = None
        index.remove(self.pending)
        self.pending = None

    def flush_staged(self) -> int:
        count = len(self.staged)
        self.staged.clear()
        return count

    def __repr__(self) -> str:
        key = base64.b64encode(self.public_key).decode()
        return f"<Peer {key[:8]}… endpoint={self.endpoint}>"
