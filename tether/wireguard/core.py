"""The WireGuard device core, sans-IO: peers, sessions, timers and the per-packet data path.

It speaks the project's one sans-IO convention. Inputs carry the monotonic time `now` and,
where handshakes are made or completed, the wall-clock time `wall` (for TAI64N timestamps and
the last-handshake time): `receive_datagram(data, source, now, wall)` (from the UDP socket),
`send_packet(packet, now, wall)` (from the inside, routed by destination), `handle_timer(now,
wall)` (the clock reached `next_timer()`), and the configuration commands. Outputs are taken,
each `take_*` returning a list and clearing it:

- `take_datagrams()`: (datagram, endpoint) pairs for the UDP socket;
- `take_packets()`: (peer public key, IP packet) pairs that decrypted, passed the replay
  window and whose source address cryptokey routing assigns to the very peer that sent them;
- `take_routes_lost()`: keys of peers that lost inner addresses (removed, AllowedIPs replaced
  or removed, a prefix taken over by another peer): whatever the inside keeps for such a peer
  (exit flows) would otherwise be answered to someone else.

Read-only views: `peer_stats()` (immutable `PeerStatus` values), `counters()` (a copy),
`has_peer`, `route`. Nothing here reads a clock, a socket or a thread, so tests drive hours of
protocol time in milliseconds.

Behaviour follows wireguard-go's device/ package (receive.go, send.go, timers.go, noise-protocol
state handling) and the paper §5-§6; deliberate differences are:

- the device is "under load" by message rate rather than queue length (see ratelimit.py);
- a responder keeps its own pending initiation when answering the peer's (see peer.py);
- a cookie reply to our pending initiation makes us resend it at once with mac2 (see
  handshakes.py), rather than after the retransmit timer;
- a response to an initiation sent over REKEY_TIMEOUT + jitter ago is refused (see
  session.PendingInitiation): wireguard-go accepts it after giving up retrying, and the two
  sides' sessions then expire far apart;
- changing the private key drops every session (wireguard-go lets old sessions keep receiving).

Datagrams and packets are `bytes`. Drops are counted by reason (`counters()["drop_<reason>"]`),
never raised: everything a remote sender can cause is a counted drop.
"""

from __future__ import annotations

import math
import os
import random
import struct
from collections import Counter
from collections.abc import Iterable

from tether.wireguard.allowedips import AllowedIPs, NetworkLike, as_network
from tether.wireguard.constants import (
    KEEPALIVE_TIMEOUT,
    KEY_LEN,
    MAX_PEERS,
    MAX_TIMER_HANDSHAKES,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_MAX_SIZE,
    MESSAGE_TRANSPORT,
    MESSAGE_TRANSPORT_HEADER_SIZE,
    MESSAGE_TRANSPORT_MIN_SIZE,
    PADDING_MULTIPLE,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
    REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX,
)
from tether.wireguard.cookie import CookieChecker
from tether.wireguard.crypto import CryptoError
from tether.wireguard.handshakes import HandshakeLayer
from tether.wireguard.messages import MessageError, message_type
from tether.wireguard.noise import LocalIdentity
from tether.wireguard.peer import DEFAULT_MAX_STAGED, Peer, PeerStatus
from tether.wireguard.ratelimit import DEFAULT_UNDER_LOAD_RATE, HandshakeRateLimiter, LoadMonitor
from tether.wireguard.session import IndexTable, Session
from tether.wireguard.stats import CoreStats
from tether.wireguard.timers import (
    NEW_HANDSHAKE,
    PERSISTENT_KEEPALIVE,
    RETRANSMIT_HANDSHAKE,
    SEND_KEEPALIVE,
    ZERO_KEY_MATERIAL,
    TimerQueue,
)

__all__ = ["DEFAULT_MTU", "UNCHANGED", "Peer", "PeerStatus", "WireGuardCore"]

DEFAULT_MTU = 1420
# An IP packet whose transport message (header, padding, tag) would not fit one UDP datagram.
MAX_PACKET_SIZE = MESSAGE_MAX_SIZE - MESSAGE_TRANSPORT_MIN_SIZE - (PADDING_MULTIPLE - 1)
# On receive, an initiator rekeys this long before its session would be rejected, so the new
# session is in place before the old one dies even if the peer only ever receives (§6.2).
_REKEY_ON_RECEIVE_AGE = REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT
_ZERO_KEY = bytes(KEY_LEN)
_unpack_header = struct.Struct("<IIQ").unpack_from


class _Unchanged:
    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED = _Unchanged()
"""Sentinel for `add_or_update_peer` arguments that leave a setting as it is."""


class WireGuardCore(HandshakeLayer):
    """One WireGuard device's protocol state; see the module docstring for the contract.

    `rng`, when given, must offer `randbytes(n)` and `random()` (a `random.Random` seeded for
    tests); it then supplies ephemeral keys, local indices, cookie secrets and timer jitter.
    By default the first three come from os.urandom and jitter from a non-cryptographic
    generator, as wireguard-go's fastrandn. `index_residue` (k, n): every local index is
    ≡ k mod n (worker k of a device spread over n processes; docs/workers.md).
    """

    def __init__(
        self,
        private_key: bytes | None,
        *,
        rng: random.Random | None = None,
        mtu: int = DEFAULT_MTU,
        under_load_rate: int = DEFAULT_UNDER_LOAD_RATE,
        max_staged: int = DEFAULT_MAX_STAGED,
        index_residue: tuple[int, int] = (0, 1),
    ) -> None:
        if rng is None:
            self._random_bytes = os.urandom
            jitter_source = random.Random()
        else:
            self._random_bytes = rng.randbytes
            jitter_source = rng
        self._index = IndexTable(
            lambda: int.from_bytes(self._random_bytes(4), "little"), index_residue
        )
        self._timers = TimerQueue(lambda: jitter_source.random() * REKEY_TIMEOUT_JITTER_MAX)
        self._mtu = mtu
        self._max_staged = max_staged
        self._peers: dict[bytes, Peer] = {}
        self._allowed_ips = AllowedIPs()
        self._lookup = self._allowed_ips.lookup
        self._load = LoadMonitor(under_load_rate)
        self._ratelimiter = HandshakeRateLimiter()
        self._datagrams: list[tuple[bytes, tuple]] = []  # take_datagrams()
        self._packets: list[tuple[bytes, bytes]] = []  # take_packets()
        self._routes_lost: set[bytes] = set()  # take_routes_lost()
        self._stats = CoreStats()
        self._local: LocalIdentity | None = None
        self._private_key: bytes | None = None
        self._checker: CookieChecker | None = None
        self.set_private_key(private_key, 0.0)

    # ------------------------------------------------------------------ configuration

    @property
    def private_key(self) -> bytes | None:
        """Our static private key (None: none; handshakes are then impossible)."""
        return self._private_key

    @property
    def public_key(self) -> bytes | None:
        """Our static public key, what peers configure; None without a private key."""
        return None if self._local is None else self._local.spub

    @property
    def mtu(self) -> int:
        """The tunnel MTU (see `set_mtu`)."""
        return self._mtu

    def set_mtu(self, mtu: int) -> None:
        """The tunnel MTU that transport messages are padded toward (§5.4.6)."""
        self._mtu = mtu

    def set_private_key(self, key: bytes | None, now: float) -> None:
        """Set (or clear, with None or all zeros) our static key, as `wg set private-key`.

        A different key invalidates every session and pending handshake (they were made with
        the old identity); staged packets stay and start handshakes under the new one. A peer
        whose public key equals our new public key is removed, as wireguard-go does.
        """
        if key is not None:
            key = bytes(key)
            if len(key) != KEY_LEN:
                raise ValueError("a private key is 32 bytes")
            if key == _ZERO_KEY:
                key = None
        if key == self._private_key:
            return
        self._private_key = key
        self._local = None if key is None else LocalIdentity(key)
        self._checker = None
        if self._local is not None:
            self._checker = CookieChecker(self._local.spub, random=self._random_bytes)
        if self._local is not None and self._local.spub in self._peers:
            self.remove_peer(self._local.spub, now)
        for peer in self._peers.values():
            peer.drop_sessions(self._index)
            peer.set_local(self._local)
            peer.last_sent_handshake = -math.inf

    def add_or_update_peer(
        self,
        public_key: bytes,
        *,
        now: float,
        preshared_key: bytes | None | _Unchanged = UNCHANGED,
        endpoint: tuple | None | _Unchanged = UNCHANGED,
        persistent_keepalive: int | None | _Unchanged = UNCHANGED,
        allowed_ips: Iterable[NetworkLike] | _Unchanged = UNCHANGED,
        replace_allowed_ips: bool = False,
        remove_allowed_ips: Iterable[NetworkLike] = (),
    ) -> Peer:
        """Create or change a peer live, leaving its sessions (and other peers) untouched.

        `preshared_key` None or all zeros means none; `persistent_keepalive` is seconds, 0 or
        None meaning off (switching it on sends a keepalive at the next `handle_timer`, as
        wireguard-go sends one at once). Allowed-IPs are applied in the order: replace (drop
        all), `remove_allowed_ips`, then `allowed_ips` inserted (taking a prefix over from any
        other peer). Raises ValueError for bad values, before changing anything, and for our
        own public key, which the caller should treat as a no-op as wireguard-go does. Returns
        the live Peer, for tests of the protocol itself; shells use the read-only views.
        """
        public_key = bytes(public_key)
        if len(public_key) != KEY_LEN:
            raise ValueError("a public key is 32 bytes")
        if self._local is not None and public_key == self._local.spub:
            raise ValueError("a device cannot have its own public key as a peer")
        if preshared_key is not UNCHANGED and preshared_key is not None:
            preshared_key = bytes(preshared_key)
            if len(preshared_key) != KEY_LEN:
                raise ValueError("a preshared key is 32 bytes")
            if preshared_key == _ZERO_KEY:
                preshared_key = None
        if persistent_keepalive is not UNCHANGED:
            persistent_keepalive = int(persistent_keepalive or 0)
            if not 0 <= persistent_keepalive <= 0xFFFF:
                raise ValueError("persistent keepalive is 0..65535 seconds")
        if allowed_ips is not UNCHANGED:
            allowed_ips = [as_network(p) for p in allowed_ips]
        removals = [as_network(p) for p in remove_allowed_ips]

        peer = self._peers.get(public_key)
        if peer is None:
            if len(self._peers) >= MAX_PEERS:
                raise ValueError(f"a device has at most {MAX_PEERS} peers")
            peer = Peer(
                public_key,
                local=self._local,
                table=self._allowed_ips,
                timer_queue=self._timers,
                max_staged=self._max_staged,
            )
            self._peers[public_key] = peer
        if preshared_key is not UNCHANGED and preshared_key != peer.preshared_key:
            peer.preshared_key = preshared_key
            peer.set_local(self._local)
        if endpoint is not UNCHANGED:
            peer.endpoint = endpoint
        if persistent_keepalive is not UNCHANGED:
            was = peer.persistent_keepalive
            peer.persistent_keepalive = persistent_keepalive
            if not persistent_keepalive:
                peer.persistent_keepalive_at = None
            elif not was:
                peer.timers_fire_persistent_keepalive_now(now)
        table = self._allowed_ips
        had: set = set()  # prefixes the peer owned before a replace: re-inserting takes nothing
        if replace_allowed_ips:
            had = set(table.entries_for_peer(peer))
            if not had <= set(allowed_ips if allowed_ips is not UNCHANGED else ()):
                self._routes_lost.add(public_key)
            table.remove_by_peer(peer)
        for network in removals:
            if table.remove(network, peer):  # a no-op unless this peer owns it
                self._routes_lost.add(public_key)
        if allowed_ips is not UNCHANGED:
            for network in allowed_ips:
                if network not in had:
                    owner = table.owner_of(network)
                    if owner is not None and owner is not peer:
                        self._routes_lost.add(owner.public_key)
                table.insert(network, peer)
        return peer

    def remove_peer(self, public_key: bytes, now: float) -> bool:
        """Remove a peer with its sessions, indices, allowed-IPs, staged packets and timers."""
        peer = self._peers.pop(bytes(public_key), None)
        if peer is None:
            return False
        peer.drop_sessions(self._index)
        flushed = peer.flush_staged()
        if flushed:
            self._stats.drops["peer_removed"] += flushed
        self._allowed_ips.remove_by_peer(peer)
        peer.timers_stop()
        peer.removed = True
        self._routes_lost.add(peer.public_key)
        return True

    def remove_all_peers(self, now: float) -> None:
        """`wg set replace_peers`: every peer goes, as with `remove_peer`."""
        for public_key in list(self._peers):
            self.remove_peer(public_key, now)

    # ------------------------------------------------------------------ outputs and views

    def take_datagrams(self) -> list[tuple[bytes, tuple]]:
        """(datagram, endpoint) pairs to send, oldest first; the core forgets them."""
        datagrams = self._datagrams
        self._datagrams = []
        return datagrams

    def take_packets(self) -> list[tuple[bytes, bytes]]:
        """(peer public key, IP packet) pairs received from peers, oldest first."""
        packets = self._packets
        self._packets = []
        return packets

    def take_routes_lost(self) -> set[bytes]:
        """Public keys of peers that lost inner addresses since the last call (see the module
        docstring); a peer still configured keeps the addresses `route` still gives it."""
        lost = self._routes_lost
        self._routes_lost = set()
        return lost

    def has_peer(self, public_key: bytes) -> bool:
        """Whether a peer with this public key is configured."""
        return public_key in self._peers

    def peer_status(self, public_key: bytes) -> PeerStatus | None:
        """One peer's reported fields, or None if there is no such peer."""
        peer = self._peers.get(public_key)
        return None if peer is None else peer.status()

    def route(self, address: bytes) -> bytes | None:
        """The public key of the peer whose AllowedIPs cover `address` (4 or 16 bytes), the
        peer a packet to it goes to and the only one that may send from it; None if no peer."""
        peer = self._lookup(address)
        return None if peer is None else peer.public_key

    def peer_stats(self, only: Iterable[bytes] | None = None) -> tuple[PeerStatus, ...]:
        """Every peer's reported fields, in the order the peers were added; with `only`, those
        of the peers named there that exist, in `only`'s order."""
        if only is None:
            return tuple(peer.status() for peer in self._peers.values())
        peers = self._peers
        return tuple(peers[key].status() for key in only if key in peers)

    def counters(self) -> Counter:
        """The device's counters, a copy: handshake messages by kind (`initiations_sent`,
        `handshakes_completed`, ...) and drops by reason as `drop_<reason>`."""
        return self._stats.snapshot()

    # ------------------------------------------------------------------ data path: receive

    def receive_datagram(self, data: bytes, source: tuple, now: float, wall: float) -> None:
        """Process one UDP payload that arrived from `source` (host, port[, ...])."""
        size = len(data)
        if size >= MESSAGE_TRANSPORT_MIN_SIZE:
            mtype, receiver, counter = _unpack_header(data)
            if mtype == MESSAGE_TRANSPORT:
                self._receive_transport(data, size, receiver, counter, source, now, wall)
                return
        try:
            mtype = message_type(data)
        except MessageError:
            self._stats.drops["malformed"] += 1
            return
        if mtype == MESSAGE_COOKIE_REPLY:
            self._receive_cookie_reply(data, now)
        else:
            self._receive_handshake(mtype, data, source, now, wall)

    def _receive_transport(
        self,
        data: bytes,
        size: int,
        receiver: int,
        counter: int,
        source: tuple,
        now: float,
        wall: float,
    ) -> None:
        drops = self._stats.drops
        session = self._index.entries.get(receiver)
        if session.__class__ is not Session:
            drops["unknown_index"] += 1
            return
        if now - session.created > REJECT_AFTER_TIME:
            drops["session_expired"] += 1
            return
        try:
            plaintext = session.decrypt(counter, data[MESSAGE_TRANSPORT_HEADER_SIZE:])
        except CryptoError:
            drops["decrypt"] += 1
            return
        if not session.replay.check_and_update(counter):
            drops["replay"] += 1
            return
        peer = session.peer
        if session is peer.next:
            self._confirm(peer, session, source, now, wall)
        peer.endpoint = source
        peer.rx_bytes += size
        if not peer.sent_last_minute_handshake:
            current = peer.current
            if (
                current is not None
                and current.is_initiator
                and now - current.created > _REKEY_ON_RECEIVE_AGE
            ):
                peer.sent_last_minute_handshake = True
                self._send_initiation(peer, now, wall, False)
        if peer.persistent_keepalive:
            peer.timers_any_authenticated_packet_traversal(now)
        peer.new_handshake_at = None  # timers_any_authenticated_packet_received, inlined
        length = len(plaintext)
        if not length:
            self._stats.keepalives_received += 1
            return
        if peer.send_keepalive_at is None:
            peer.timers_data_received(now)
        else:
            peer.need_another_keepalive = True
        # Cryptokey routing: the inner source address must belong to the sending peer. Only the
        # version, the length (to strip padding) and the source address are read.
        version = plaintext[0] >> 4
        if version == 4:
            if length < 20:
                drops["bad_ip"] += 1
                return
            total = (plaintext[2] << 8) | plaintext[3]
            if total > length or total < 20:
                drops["bad_ip"] += 1
                return
            src = plaintext[12:16]
        elif version == 6:
            if length < 40:
                drops["bad_ip"] += 1
                return
            total = ((plaintext[4] << 8) | plaintext[5]) + 40
            if total > length:
                drops["bad_ip"] += 1
                return
            src = plaintext[8:24]
        else:
            drops["bad_ip"] += 1
            return
        if self._lookup(src) is not peer:
            drops["source_not_allowed"] += 1
            return
        self._packets.append((peer.public_key, plaintext if total == length else plaintext[:total]))

    def _confirm(
        self, peer: Peer, session: Session, source: tuple, now: float, wall: float
    ) -> None:
        """Key confirmation (§5.4.6): the initiator used the responder session we offered."""
        peer.confirm(session, self._index)
        peer.endpoint = source
        peer.timers_handshake_complete(wall)
        self._stats.handshakes_completed += 1
        self._send_staged(peer, now, wall)

    # ------------------------------------------------------------------ data path: send

    def send_packet(self, ip_packet: bytes, now: float, wall: float) -> bool:
        """Route an IP packet by destination (cryptokey routing) and send it to that peer.

        False, with a counted drop, if it is not IPv4/IPv6, too big, or no peer owns the
        destination.
        """
        size = len(ip_packet)
        version = ip_packet[0] >> 4 if size else 0
        if version == 4 and size >= 20:
            dst = ip_packet[16:20]
        elif version == 6 and size >= 40:
            dst = ip_packet[24:40]
        else:
            self._stats.drops["bad_ip"] += 1
            return False
        peer = self._lookup(dst)
        if peer is None:
            self._stats.drops["no_route"] += 1
            return False
        if size > MAX_PACKET_SIZE:
            self._stats.drops["too_big"] += 1
            return False
        self._send_to_peer(peer, ip_packet, now, wall)
        return True

    def _send_to_peer(self, peer: Peer, ip_packet: bytes, now: float, wall: float) -> None:
        """Encrypt `ip_packet` for `peer` now, or stage it and start a handshake."""
        session = peer.current
        if (
            session is not None
            and not peer.staged
            and session.send_counter < REJECT_AFTER_MESSAGES
            and now - session.created < REJECT_AFTER_TIME
        ):
            # The common case, inlined: a live session and nothing queued ahead of this packet.
            datagram = session.seal(ip_packet, self._mtu)
            endpoint = peer.endpoint
            if endpoint is None:
                self._stats.drops["no_endpoint"] += 1
            else:
                self._datagrams.append((datagram, endpoint))
                peer.tx_bytes += len(datagram)
            if peer.persistent_keepalive:
                peer.timers_any_authenticated_packet_traversal(now)
            peer.send_keepalive_at = None  # timers_any_authenticated_packet_sent, inlined
            if peer.new_handshake_at is None and ip_packet:
                peer.timers_data_sent(now)
            if session.send_counter > REKEY_AFTER_MESSAGES or (
                session.is_initiator and now - session.created > REKEY_AFTER_TIME
            ):
                self._send_initiation(peer, now, wall, False)
            return
        if peer.removed:
            self._stats.drops["peer_removed"] += 1
            return
        if not peer.stage(ip_packet):
            self._stats.drops["queue_full"] += 1
        self._send_staged(peer, now, wall)

    def _send_staged(self, peer: Peer, now: float, wall: float) -> None:
        """Send what is staged with the current session, or start a handshake to get one."""
        staged = peer.staged
        if not staged:
            return
        session = peer.current
        if session is None or not session.can_send(now):
            self._send_initiation(peer, now, wall, False)
            return
        mtu = self._mtu
        data_sent = False
        while staged and session.send_counter < REJECT_AFTER_MESSAGES:
            packet = staged.popleft()
            if packet:
                data_sent = True
            self._send(peer, session.seal(packet, mtu))
        peer.timers_any_authenticated_packet_traversal(now)
        peer.timers_any_authenticated_packet_sent()
        if data_sent:
            peer.timers_data_sent(now)
        if (
            staged
            or session.send_counter > REKEY_AFTER_MESSAGES
            or (session.is_initiator and now - session.created > REKEY_AFTER_TIME)
        ):
            self._send_initiation(peer, now, wall, False)

    def _send_keepalive(self, peer: Peer, now: float, wall: float) -> None:
        """An empty transport message, unless real packets are waiting to go anyway."""
        if not peer.staged:
            peer.staged.append(b"")
        self._send_staged(peer, now, wall)

    def _send(self, peer: Peer, datagram: bytes) -> None:
        endpoint = peer.endpoint
        if endpoint is None:
            self._stats.drops["no_endpoint"] += 1
            return
        self._datagrams.append((datagram, endpoint))
        peer.tx_bytes += len(datagram)

    # ------------------------------------------------------------------ timers

    def next_timer(self) -> float | None:
        """The exact monotonic time of the earliest pending timer of any peer, or None."""
        return self._timers.next_timer()

    def handle_timer(self, now: float, wall: float) -> None:
        """Run every timer due at `now`; safe to call early or more often than needed."""
        timers = self._timers
        for peer in timers.pop_due(now):
            if peer.removed:
                continue
            while (which := peer.pop_expired(now)) is not None:
                if which == RETRANSMIT_HANDSHAKE:
                    self._expired_retransmit_handshake(peer, now, wall)
                elif which == SEND_KEEPALIVE:
                    self._send_keepalive(peer, now, wall)
                    if peer.need_another_keepalive:
                        peer.need_another_keepalive = False
                        peer.timers_data_received(now)
                elif which == NEW_HANDSHAKE:
                    # Data went out but nothing came back for KEEPALIVE_TIMEOUT + REKEY_TIMEOUT.
                    self._send_initiation(peer, now, wall, False)
                elif which == PERSISTENT_KEEPALIVE:
                    if peer.persistent_keepalive:
                        self._send_keepalive(peer, now, wall)
                elif which == ZERO_KEY_MATERIAL:
                    peer.drop_sessions(self._index)
                    flushed = peer.flush_staged()
                    if flushed:
                        self._stats.drops["keys_zeroed"] += flushed
            timers.reschedule(peer)

    def _expired_retransmit_handshake(self, peer: Peer, now: float, wall: float) -> None:
        if peer.handshake_attempts > MAX_TIMER_HANDSHAKES:
            # REKEY_ATTEMPT_TIME is used up: stop, drop what waited for a session, and schedule
            # erasing whatever is left of the attempt.
            peer.send_keepalive_at = None
            flushed = peer.flush_staged()
            if flushed:
                self._stats.drops["handshake_gave_up"] += flushed
            if peer.zero_key_material_at is None:
                peer.timers_session_derived(now)
            return
        peer.handshake_attempts += 1
        self._send_initiation(peer, now, wall, True)
