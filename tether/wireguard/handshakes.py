"""The handshake half of the device core: initiations, responses and cookie replies.

Split out of core.py, which it is a base class of, to keep each module readable: everything
here runs once per handshake (a few per peer every two minutes), while core.py holds the
per-packet data path, configuration and timer dispatch. The methods use the core's state
(`_peers`, `_stats`, `_datagrams`, the index table, the cookie checker, load monitor and rate
limiter) and call back into its send path (`_send`, `_send_keepalive`).

Order of checks for an incoming initiation or response, as wireguard-go does them: mac1 (one
BLAKE2s, drops anything not addressed to our public key), then, only while under load, mac2
(else a cookie reply is the only answer) and the per-source rate limit, and only then the
Diffie-Hellman work of the Noise handshake.

One deliberate difference from wireguard-go: an initiator that receives a valid cookie reply to
its pending initiation sends that same initiation once more right away, now with mac2, instead
of waiting for the retransmit timer. The responder never processed the first copy (it answered
with the cookie instead), so the timestamp is still fresh and this costs it nothing extra; under
a flood, a legitimate peer then completes its handshake one round trip later rather than
REKEY_TIMEOUT later. Only one such resend is made per initiation, so forged cookie replies
(anyone on the path can make one) cannot multiply our traffic.

A core can be one worker of a device spread over processes (`set_owner`, docs/workers.md):
then an initiation of a peer another worker owns is checked as above, its sender read (one DH),
and handed out through `take_forwards` instead of answered; the owner consumes it with
`receive_forwarded`, and only the owner ever initiates toward a peer.
"""

from __future__ import annotations

from collections.abc import Callable

from tether.wireguard.constants import (
    KEY_LEN,
    MESSAGE_INITIATION,
    MESSAGE_INITIATION_SIZE,
    REKEY_TIMEOUT,
    REKEY_TIMEOUT_JITTER_MAX,
)
from tether.wireguard.cookie import CookieChecker, address_bytes
from tether.wireguard.crypto import tai64n
from tether.wireguard.messages import (
    MessageError,
    parse_cookie_reply,
    parse_initiation,
    parse_response,
)
from tether.wireguard.noise import (
    LocalIdentity,
    ResponderHandshake,
    create_initiation,
    open_initiation,
)
from tether.wireguard.peer import Peer
from tether.wireguard.ratelimit import HandshakeRateLimiter, LoadMonitor
from tether.wireguard.session import IndexTable, PendingInitiation, Session
from tether.wireguard.stats import CoreStats

__all__ = ["RESPONSE_MAX_DELAY", "HandshakeLayer"]

# Responses to initiations sent longer ago are refused (see session.PendingInitiation).
RESPONSE_MAX_DELAY = REKEY_TIMEOUT + REKEY_TIMEOUT_JITTER_MAX
_INITIATION_WORD = MESSAGE_INITIATION.to_bytes(4, "little")


class HandshakeLayer:
    """Handshake message processing; see the module docstring. Not used on its own."""

    # Worker ownership (docs/workers.md): None, or a function telling whether this core owns a
    # peer (by public key). Set with `set_owner`; the class default keeps core.py unaware.
    _owns: Callable[[bytes], bool] | None = None
    _forwards: list[tuple[bytes, bytes, tuple]]

    # Provided by WireGuardCore.
    _peers: dict[bytes, Peer]
    _stats: CoreStats
    _datagrams: list[tuple[bytes, tuple]]
    _local: LocalIdentity | None
    _index: IndexTable
    _checker: CookieChecker | None
    _load: LoadMonitor
    _ratelimiter: HandshakeRateLimiter
    _random_bytes: Callable[[int], bytes]
    _send: Callable[[Peer, bytes], None]
    _send_keepalive: Callable[[Peer, float, float], None]

    def set_owner(self, owns: Callable[[bytes], bool] | None) -> None:
        """Make this core one worker of a device spread over several processes: `owns(key)`
        says whether this worker owns the peer with that public key. For a peer it does not
        own, the core starts no handshake (no initiations, so no keepalives either: only the
        owner holds the peer's sessions) and passes an initiation from it, once it has checked
        mac1 (and under load mac2 and the rate limit) and read the sender's key, to
        `take_forwards()` for the owner instead of answering it. None: every peer is ours."""
        self._owns = owns
        self._forwards = []

    def take_forwards(self) -> list[tuple[bytes, bytes, tuple]]:
        """Initiations for peers another worker owns: (peer key, datagram, source)."""
        if self._owns is None or not self._forwards:
            return []
        out, self._forwards = self._forwards, []
        return out

    def receive_forwarded(self, data: bytes, source: tuple, now: float) -> None:
        """An initiation another worker checked and forwarded because we own its peer: consumed
        as if it came from `source`, without the mac and load checks (the receiving worker made
        them; a second cookie round would send the peer to a worker whose cookie secret differs).
        One we do not own (ownership changed on the way) is dropped, never sent on again."""
        if len(data) != MESSAGE_INITIATION_SIZE or data[:4] != _INITIATION_WORD:
            self._stats.drops["malformed"] += 1
            return
        self._consume_initiation(data, source, now, forwarded=True)

    def _receive_handshake(
        self, mtype: int, data: bytes, source: tuple, now: float, wall: float
    ) -> None:
        drops = self._stats.drops
        checker = self._checker
        if checker is None:
            drops["no_private_key"] += 1
            return
        if not checker.check_mac1(data):
            drops["mac1"] += 1
            return
        if self._load.record(now):
            try:
                src = address_bytes(source[0], source[1])
            except (ValueError, IndexError, TypeError):
                drops["bad_source"] += 1
                return
            if not checker.check_mac2(data, src, now):
                self._datagrams.append((checker.create_reply(data, src, now), source))
                self._stats.cookie_replies_sent += 1
                return
            if not self._ratelimiter.allow(source[0], now):
                drops["ratelimited"] += 1
                return
        if mtype == MESSAGE_INITIATION:
            self._consume_initiation(data, source, now)
        else:
            self._consume_response(data, source, now, wall)

    def _consume_initiation(
        self, data: bytes, source: tuple, now: float, forwarded: bool = False
    ) -> None:
        drops = self._stats.drops
        if self._local is None:
            drops["no_private_key"] += 1
            return
        try:
            opened = open_initiation(self._local, parse_initiation(data))
        except MessageError:
            drops["handshake_invalid"] += 1
            return
        peer = self._peers.get(opened.initiator_static)
        if peer is None or peer.keys is None:
            drops["unknown_peer"] += 1
            return
        owns = self._owns
        if owns is not None and not owns(peer.public_key):
            if forwarded:
                drops["forwarded_not_owned"] += 1
            else:
                self._stats.initiations_forwarded += 1
                self._forwards.append((peer.public_key, bytes(data), source))
            return
        try:
            state = opened.authenticate(peer.keys)
        except MessageError:
            drops["handshake_invalid"] += 1
            return
        if not peer.initiation_guard.admit(state.timestamp, now):
            drops["initiation_replay_or_flood"] += 1
            return
        self._stats.initiations_received += 1
        peer.timers_any_authenticated_packet_traversal(now)
        peer.timers_any_authenticated_packet_received()
        peer.endpoint = source
        peer.rx_bytes += len(data)
        self._send_response(peer, state, now)

    def _send_response(self, peer: Peer, state: ResponderHandshake, now: float) -> None:
        peer.last_sent_handshake = now
        try:
            response, keypair = state.create_response(
                sender=self._index.allocate(), epriv=self._random_bytes(KEY_LEN)
            )
        except MessageError:  # the initiator's ephemeral was a low-order point
            self._stats.drops["handshake_invalid"] += 1
            return
        packet = peer.cookie_generator.add_macs(response.pack(), now)
        peer.add_session(Session(keypair, peer, now), self._index)
        peer.timers_session_derived(now)
        peer.timers_any_authenticated_packet_traversal(now)
        peer.timers_any_authenticated_packet_sent()
        self._stats.responses_sent += 1
        self._send(peer, packet)

    def _consume_response(self, data: bytes, source: tuple, now: float, wall: float) -> None:
        drops = self._stats.drops
        try:
            msg = parse_response(data)
        except MessageError:
            drops["malformed"] += 1
            return
        pending = self._index.entries.get(msg.receiver)
        if pending.__class__ is not PendingInitiation or pending.peer.pending is not pending:
            drops["unexpected_response"] += 1
            return
        if now - pending.sent_at > RESPONSE_MAX_DELAY:
            drops["stale_response"] += 1
            return
        try:
            keypair = pending.handshake.consume_response(msg)
        except MessageError:
            drops["handshake_invalid"] += 1
            return
        peer = pending.peer
        peer.pending = None
        self._stats.responses_received += 1
        self._stats.handshakes_completed += 1
        peer.endpoint = source
        peer.rx_bytes += len(data)
        peer.timers_any_authenticated_packet_traversal(now)
        peer.timers_any_authenticated_packet_received()
        # The session takes over the pending initiation's index, as wireguard-go swaps it.
        peer.add_session(Session(keypair, peer, now), self._index)
        peer.timers_session_derived(now)
        peer.timers_handshake_complete(wall)
        # Confirm the session to the responder at once: staged packets, or a keepalive.
        self._send_keepalive(peer, now, wall)

    def _receive_cookie_reply(self, data: bytes, now: float) -> None:
        drops = self._stats.drops
        try:
            reply = parse_cookie_reply(data)
        except MessageError:
            drops["malformed"] += 1
            return
        entry = self._index.entries.get(reply.receiver)
        if entry is None:
            drops["unknown_index"] += 1
            return
        peer = entry.peer
        try:
            peer.cookie_generator.consume_reply(reply, now)
        except MessageError:
            drops["cookie_invalid"] += 1
            return
        self._stats.cookie_replies_received += 1
        if (
            entry.__class__ is PendingInitiation
            and entry is peer.pending
            and not entry.sent_with_cookie
        ):
            entry.sent_with_cookie = True
            entry.sent_at = now
            packet = peer.cookie_generator.add_macs(entry.packet, now)
            peer.timers_any_authenticated_packet_traversal(now)
            peer.timers_any_authenticated_packet_sent()
            self._stats.initiations_sent += 1
            self._send(peer, packet)

    def _send_initiation(self, peer: Peer, now: float, wall: float, is_retry: bool) -> None:
        """Start (or retry) a handshake, at most once per REKEY_TIMEOUT per peer (§6.2); never
        for a peer another worker owns (`set_owner`)."""
        if self._owns is not None and not self._owns(peer.public_key):
            return
        if not is_retry:
            peer.handshake_attempts = 0
        if now - peer.last_sent_handshake < REKEY_TIMEOUT:
            return
        peer.last_sent_handshake = now
        keys = peer.keys
        if keys is None or keys.ss is None:
            self._stats.drops["handshake_impossible"] += 1
            return
        index = self._index
        index.remove(peer.pending)
        local_index = index.allocate()
        msg, handshake = create_initiation(
            keys, tai64n(wall), sender=local_index, epriv=self._random_bytes(KEY_LEN)
        )
        body = msg.pack()
        pending = PendingInitiation(peer, handshake, local_index, body, now)
        peer.pending = pending
        index.add(pending)
        packet = peer.cookie_generator.add_macs(body, now)
        peer.timers_any_authenticated_packet_traversal(now)
        peer.timers_any_authenticated_packet_sent()
        self._stats.initiations_sent += 1
        self._send(peer, packet)
        peer.timers_handshake_initiated(now)
