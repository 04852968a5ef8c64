"""Transport sessions and the receiver index table (paper §5.4.6, §6.1).

A `Session` is one keypair from a completed handshake as the data path uses it: the noise
`Keypair` (the two AEADs and both indices) plus what only the transport layer knows, the send
counter, the receive replay window and the creation time that REJECT_AFTER_TIME is measured from.

The `IndexTable` maps our 32-bit local indices, which peers put in msg.receiver, to the object
that index was handed out for: a `PendingInitiation` while we wait for a handshake response, then
the `Session` derived from it. Indices are random, not sequential, so an index says nothing about
how many sessions exist or which peer owns it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import TYPE_CHECKING

from tether.wireguard.constants import (
    MESSAGE_TRANSPORT,
    PADDING_MULTIPLE,
    REJECT_AFTER_MESSAGES,
    REJECT_AFTER_TIME,
)
from tether.wireguard.noise import InitiatorHandshake, Keypair
from tether.wireguard.replay import ReplayFilter

if TYPE_CHECKING:
    from tether.wireguard.peer import Peer

__all__ = [
    "IndexTable",
    "PendingInitiation",
    "Session",
    "padded_length",
]

_ZEROS = bytes(PADDING_MULTIPLE)
_pack_header = struct.Struct("<IIQ").pack


def padded_length(length: int, mtu: int) -> int:
    """Plaintext length after zero padding (paper §5.4.6), the rule wireguard-go applies.

    Padding rounds up to a multiple of 16 to blur packet sizes, but never past the MTU, so a
    full-size packet does not grow into a second IP fragment on the outer path. A packet already
    over the MTU is padded as if it were its last MTU-sized piece.
    """
    if mtu <= 0:
        return length + (-length % PADDING_MULTIPLE)
    last = length % mtu if length > mtu else length
    padded = min(last + (-last % PADDING_MULTIPLE), mtu)
    return length + padded - last


class Session:
    """One transport keypair in use by the data path.

    `send_counter` is the next nonce to use; the caller checks `can_send` before `seal`, so it
    never passes REJECT_AFTER_MESSAGES. The replay window is only updated after a packet
    authenticated, so forgeries cannot burn counters.

    `decrypt(counter, content)` is the receiving AEAD's bound method (raises
    crypto.CryptoError), exposed as an attribute so the hot path makes one call, not two.
    """

    __slots__ = (
        "keypair",
        "peer",
        "created",
        "is_initiator",
        "local_index",
        "remote_index",
        "send_counter",
        "replay",
        "decrypt",
        "_encrypt",
    )

    def __init__(self, keypair: Keypair, peer: Peer, created: float) -> None:
        self.keypair = keypair
        self.peer = peer
        self.created = created
        self.is_initiator = keypair.is_initiator
        self.local_index = keypair.local_index
        self.remote_index = keypair.remote_index
        self.send_counter = 0
        self.replay = ReplayFilter()
        self.decrypt: Callable[[int, bytes], bytes] = keypair.receive.decrypt
        self._encrypt: Callable[[int, bytes], bytes] = keypair.send.encrypt

    def can_send(self, now: float) -> bool:
        """The sending half is usable: not past REJECT_AFTER_TIME or REJECT_AFTER_MESSAGES."""
        return self.send_counter < REJECT_AFTER_MESSAGES and now - self.created < REJECT_AFTER_TIME

    def seal(self, packet: bytes, mtu: int) -> bytes:
        """A complete transport message carrying `packet` padded for `mtu`.

        The caller has checked `can_send`; this only consumes the counter. Header and ciphertext
        are joined with one concatenation, which measured cheaper than sealing into a
        preallocated buffer and copying that out as bytes.
        """
        counter = self.send_counter
        self.send_counter = counter + 1
        size = len(packet)
        pad = -size % PADDING_MULTIPLE
        if pad and size + pad > mtu:
            pad = mtu - size if size <= mtu else padded_length(size, mtu) - size
        if pad:
            packet = packet + _ZEROS[:pad]
        return _pack_header(MESSAGE_TRANSPORT, self.remote_index, counter) + self._encrypt(
            counter, packet
        )

    def __repr__(self) -> str:
        role = "initiator" if self.is_initiator else "responder"
        return f"<Session {role} local={self.local_index:#010x} sent={self.send_counter}>"


class PendingInitiation:
    """Our handshake initiation that awaits its response.

    `packet` is the initiation as sent without macs, kept so that a cookie reply can be answered
    by sending the very same initiation again with mac2 (the responder never processed it, so
    its timestamp is still fresh) instead of waiting REKEY_TIMEOUT for the retransmit timer.

    `sent_at` bounds how stale an acceptable response is. The responder dates its session from
    when it answered, we date ours from when the answer arrives; were a response accepted long
    after the initiation (wireguard-go accepts one until the keys are zeroed, after giving up
    retrying), our session would outlive the responder's by that delay and our last packets
    before a rekey would be rejected as expired. Retransmission replaces a pending initiation
    after REKEY_TIMEOUT plus jitter anyway, so refusing responses older than that only matters
    once retrying stopped.
    """

    __slots__ = ("peer", "handshake", "local_index", "packet", "sent_at", "sent_with_cookie")

    def __init__(
        self,
        peer: Peer,
        handshake: InitiatorHandshake,
        local_index: int,
        packet: bytes,
        sent_at: float,
    ) -> None:
        self.peer = peer
        self.handshake = handshake
        self.local_index = local_index
        self.packet = packet
        self.sent_at = sent_at
        self.sent_with_cookie = False


class IndexTable:
    """Local index -> Session or PendingInitiation; `entries` is the dict itself, for speed."""

    __slots__ = ("entries", "_random_index", "_residue", "_modulus")

    def __init__(self, random_index: Callable[[], int], residue: tuple[int, int] = (0, 1)) -> None:
        """`residue` (k, n): every index allocated here is ≡ k mod n. A device spread over n
        worker processes gives worker k the class k, so that the kernel's steering program
        (tether/device/steering.py) can send a message naming one of our indices to the worker
        that holds it; (0, 1) is the whole index space."""
        k, n = residue
        if not 0 <= k < n:
            raise ValueError(f"index residue {k} is not in 0..{n - 1}")
        self.entries: dict[int, Session | PendingInitiation] = {}
        self._random_index = random_index
        self._residue = k
        self._modulus = n

    def allocate(self) -> int:
        """A fresh random index of our residue class not in use; collisions (and the few
        candidates of the class past 2**32 - 1) are retried: 2**32 / n indices, few in use."""
        entries = self.entries
        k, n = self._residue, self._modulus
        while True:
            index = self._random_index() & 0xFFFFFFFF
            index += k - index % n
            if index <= 0xFFFFFFFF and index not in entries:
                return index

    def add(self, entry: Session | PendingInitiation) -> None:
        self.entries[entry.local_index] = entry

    def remove(self, entry: Session | PendingInitiation | None) -> None:
        """Forget `entry` if the table still maps its index to it."""
        if entry is not None and self.entries.get(entry.local_index) is entry:
            del self.entries[entry.local_index]

    def __len__(self) -> int:
        return len(self.entries)
