"""Anti-replay sliding window for transport-data counters (paper §5.4.6, RFC 6479).

A receiver must accept each counter at most once, yet UDP reorders packets, so "strictly greater
than the last one" would drop legitimate traffic. RFC 6479 keeps a ring of bit blocks behind the
highest counter seen: moving the window forward only zeroes the blocks that are entered, so the cost
of an in-order packet does not depend on the window size. WireGuard uses 128 blocks of 64 bits and
keeps one block as slack for the block being entered, which leaves 127 * 64 = 8128 counters of
reordering tolerance; a counter further behind than that is rejected even if it was never seen.

The ring is a bytearray with one byte per counter, cleared a 64-byte block at a time, so the
window behaves exactly like wireguard-go's 128 x 64-bit ring. In CPython this measured fastest for
in-order packets (about 170 ns per call against 200 ns for a list of 64-bit ints, whose
`1 << bit` builds a multi-digit int, and 340 ns for one 8192-bit int, which every shift copies).
"""

from __future__ import annotations

from tether.wireguard.constants import REJECT_AFTER_MESSAGES

BLOCK_BIT_LOG = 6
BLOCK_BITS = 1 << BLOCK_BIT_LOG
RING_BLOCKS = 128
WINDOW_SIZE = (RING_BLOCKS - 1) * BLOCK_BITS  # 8128

RING_SIZE = RING_BLOCKS * BLOCK_BITS
_BLOCK_MASK = RING_BLOCKS - 1
_RING_MASK = RING_SIZE - 1
_EMPTY_BLOCK = bytes(BLOCK_BITS)


class ReplayFilter:
    """Per-keypair receive window; a fresh keypair starts with an empty filter."""

    __slots__ = ("_last", "_ring")

    def __init__(self) -> None:
        self._last = 0
        self._ring = bytearray(RING_SIZE)

    def reset(self) -> None:
        self._last = 0
        self._ring = bytearray(RING_SIZE)

    def check_and_update(self, counter: int) -> bool:
        """Accept `counter` once; call only after the packet authenticated.

        Marking before authentication would let an attacker burn counters with forged packets and
        make the genuine ones look replayed.
        """
        # Counters at or past REJECT_AFTER_MESSAGES are never valid: the sender must rekey first,
        # and the nonce must not wrap (paper §5.4.6).
        if not 0 <= counter < REJECT_AFTER_MESSAGES:
            return False
        last = self._last
        ring = self._ring
        if counter > last:
            current = last >> BLOCK_BIT_LOG
            block = counter >> BLOCK_BIT_LOG
            if block != current:
                if block - current >= RING_BLOCKS:
                    # A jump past the whole ring: nothing behind it is still in the window.
                    ring = self._ring = bytearray(RING_SIZE)
                else:
                    for i in range(current + 1, block + 1):
                        start = (i & _BLOCK_MASK) << BLOCK_BIT_LOG
                        ring[start : start + BLOCK_BITS] = _EMPTY_BLOCK
            self._last = counter
        elif last - counter > WINDOW_SIZE:
            return False
        index = counter & _RING_MASK
        if ring[index]:
            return False
        ring[index] = 1
        return True
