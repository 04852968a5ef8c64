"""Bounded byte stores of a TCP connection: send buffer, reassembly queue, SACK scoreboard.

All sequence numbers here are *absolute* (unwrapped) integers: the connection converts 32-bit wire
values once at the edge, so these structures can compare with `<` and never think about wrap.

Each structure has a hard bound, because a peer controls what arrives: the send buffer by its
byte limit, the reassembly queue by the receive window plus a cap on the number of disjoint
ranges, the scoreboard by a cap on ranges (losing SACK information is always safe: the data is
still retransmitted once it is found missing).
"""

from __future__ import annotations

from bisect import bisect_right

__all__ = ["ReassemblyQueue", "SackScoreboard", "SendBuffer"]


class SendBuffer:
    """Host bytes not yet acknowledged by the peer; `data[0]` has sequence number `seq`.

    A bytearray trimmed from the front on ACK: CPython moves the start pointer instead of copying,
    so acknowledging is O(1) and appending amortised O(n) in the bytes appended.
    """

    __slots__ = ("data", "seq", "limit")

    def __init__(self, seq: int, limit: int) -> None:
        self.data = bytearray()
        self.seq = seq
        self.limit = limit

    @property
    def end(self) -> int:
        """Sequence number one past the last buffered byte."""
        return self.seq + len(self.data)

    def space(self) -> int:
        return self.limit - len(self.data)

    def append(self, data: bytes | bytearray | memoryview) -> int:
        """Take as much of `data` as fits; return how many bytes were taken."""
        n = min(len(data), self.limit - len(self.data))
        if n <= 0:
            return 0
        if n == len(data):
            self.data += data
        else:
            with memoryview(data) as mv:
                self.data += mv[:n]
        return n

    def ack_to(self, seq: int) -> None:
        """Forget bytes below `seq` (a cumulative ACK; may point past the end for the FIN)."""
        n = seq - self.seq
        if n > 0:
            n = min(n, len(self.data))
            del self.data[:n]
            self.seq += n

    def get(self, seq: int, n: int) -> bytearray:
        """Copy of `n` bytes starting at `seq` (the caller makes sure they are buffered)."""
        off = seq - self.seq
        return self.data[off : off + n]


class ReassemblyQueue:
    """Out-of-order data above RCV.NXT (RFC 9293 §3.10.7.4), as disjoint, non-adjacent ranges.

    `starts[i]` is the sequence number of `chunks[i][0]`. The queue only ever holds data inside the
    advertised window (the caller trims), so its bytes are bounded by the receive buffer; the range
    count is capped separately so that tiny segments sprinkled across the window cannot make the
    per-segment bookkeeping grow. `recent` remembers where data last arrived, newest first: RFC 2018
    §4 wants the first SACK block to cover the most recent segment and the rest to repeat recent
    blocks.
    """

    __slots__ = ("starts", "chunks", "nbytes", "max_ranges", "recent", "fin_seq")

    def __init__(self, max_ranges: int) -> None:
        self.starts: list[int] = []
        self.chunks: list[bytearray] = []
        self.nbytes = 0
        self.max_ranges = max_ranges
        self.recent: list[int] = []
        self.fin_seq: int | None = None  # sequence number of a FIN that arrived out of order

    def __bool__(self) -> bool:
        return bool(self.starts)

    def insert(self, seq: int, data: bytes | memoryview) -> bool:
        """Store `data` at `seq`, merging with neighbours; False if the range cap refused it."""
        end = seq + len(data)
        starts = self.starts
        chunks = self.chunks
        i = bisect_right(starts, seq)
        lo = i
        if i and starts[i - 1] + len(chunks[i - 1]) >= seq:
            lo = i - 1
        hi = i
        while hi < len(starts) and starts[hi] <= end:
            hi += 1
        if lo == hi:
            if len(starts) >= self.max_ranges:
                return False
            starts.insert(i, seq)
            chunks.insert(i, bytearray(data))
            self.nbytes += len(data)
        elif hi == lo + 1 and starts[lo] <= seq:
            # Common case after a loss: the segment extends (or repeats) the range it follows.
            chunk = chunks[lo]
            chunk_end = starts[lo] + len(chunk)
            if end > chunk_end:
                chunk += data[chunk_end - seq :]
                self.nbytes += end - chunk_end
        else:
            new_start = min(seq, starts[lo])
            new_end = max(end, starts[hi - 1] + len(chunks[hi - 1]))
            merged = bytearray(new_end - new_start)
            merged[seq - new_start : end - new_start] = data
            old = 0
            for k in range(lo, hi):
                s = starts[k] - new_start
                merged[s : s + len(chunks[k])] = chunks[k]
                old += len(chunks[k])
            starts[lo:hi] = [new_start]
            chunks[lo:hi] = [merged]
            self.nbytes += len(merged) - old
        recent = self.recent
        if seq in recent:
            recent.remove(seq)
        recent.insert(0, seq)
        del recent[8:]
        return True

    def pop_ready(self, rcv_nxt: int) -> list[bytearray | bytes]:
        """Remove and return, in order, data that has become contiguous with `rcv_nxt`."""
        out: list[bytearray | bytes] = []
        starts = self.starts
        while starts and starts[0] <= rcv_nxt:
            start = starts.pop(0)
            chunk = self.chunks.pop(0)
            self.nbytes -= len(chunk)
            skip = rcv_nxt - start
            if skip < len(chunk):
                out.append(chunk[skip:] if skip else chunk)
                rcv_nxt = start + len(chunk)
        return out

    def sack_blocks(self, limit: int) -> list[tuple[int, int]]:
        """Up to `limit` SACK blocks, the range holding the newest arrival first (RFC 2018 §4)."""
        blocks: list[tuple[int, int]] = []
        starts = self.starts
        keep: list[int] = []
        for seq in self.recent:
            k = bisect_right(starts, seq) - 1
            if k < 0 or seq >= starts[k] + len(self.chunks[k]):
                continue  # delivered in order since, or never stored
            keep.append(seq)
            block = (starts[k], starts[k] + len(self.chunks[k]))
            if block not in blocks and len(blocks) < limit:
                blocks.append(block)
        self.recent = keep
        if len(blocks) < limit:
            for k in range(len(starts) - 1, -1, -1):
                block = (starts[k], starts[k] + len(self.chunks[k]))
                if block not in blocks:
                    blocks.append(block)
                    if len(blocks) == limit:
                        break
        return blocks

    def clear(self) -> None:
        self.starts.clear()
        self.chunks.clear()
        self.recent.clear()
        self.nbytes = 0
        self.fin_seq = None


class SackScoreboard:
    """What the peer has SACKed above SND.UNA (RFC 6675 §3), as sorted disjoint [start, end).

    Ranges are clipped to [SND.UNA, SND.MAX) on the way in, so `sacked` is exactly the number of
    octets in flight that are known to have arrived.
    """

    __slots__ = ("starts", "ends", "sacked", "max_ranges")

    def __init__(self, max_ranges: int) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.sacked = 0
        self.max_ranges = max_ranges

    def __bool__(self) -> bool:
        return bool(self.starts)

    def clear(self) -> None:
        self.starts.clear()
        self.ends.clear()
        self.sacked = 0

    def update(self, blocks: list[tuple[int, int]], snd_una: int, snd_max: int) -> bool:
        """Merge SACK blocks (absolute numbers); True if they told us anything new."""
        grew = False
        starts = self.starts
        ends = self.ends
        for left, right in blocks:
            left = max(left, snd_una)
            right = min(right, snd_max)
            if left >= right:
                continue
            i = bisect_right(starts, left)
            lo = i - 1 if i and ends[i - 1] >= left else i
            hi = i
            while hi < len(starts) and starts[hi] <= right:
                hi += 1
            if lo < hi:
                new_left = min(left, starts[lo])
                new_right = max(right, ends[hi - 1])
                covered = sum(ends[k] - starts[k] for k in range(lo, hi))
            else:
                new_left, new_right, covered = left, right, 0
            added = (new_right - new_left) - covered
            if added:
                grew = True
                starts[lo:hi] = [new_left]
                ends[lo:hi] = [new_right]
                self.sacked += added
        while len(starts) > self.max_ranges:
            # Forget the highest ranges first: they matter least for finding the next hole.
            self.sacked -= ends.pop() - starts.pop()
        return grew

    def advance(self, snd_una: int) -> None:
        """Drop what the cumulative ACK now covers."""
        starts = self.starts
        ends = self.ends
        while starts and starts[0] < snd_una:
            if ends[0] <= snd_una:
                self.sacked -= ends[0] - starts[0]
                del starts[0], ends[0]
            else:
                self.sacked -= snd_una - starts[0]
                starts[0] = snd_una

    def highest(self) -> int:
        """One past the highest SACKed octet (only meaningful when non-empty)."""
        return self.ends[-1]

    def lost_edge(self, snd_una: int, mss: int, dupthresh: int = 3) -> int:
        """Every un-SACKed octet below the returned number is lost by RFC 6675 IsLost().

        IsLost(s) holds when `dupthresh` discontiguous SACKed ranges lie above s or more than
        (dupthresh - 1) * SMSS SACKed octets do; both only get truer as s decreases, so the lost
        octets are exactly the holes below one edge, found in one walk down from the top.
        """
        starts = self.starts
        ends = self.ends
        n = len(starts)
        edge = starts[n - dupthresh] if n >= dupthresh else snd_una
        need = (dupthresh - 1) * mss
        acc = 0
        for k in range(n - 1, -1, -1):
            size = ends[k] - starts[k]
            if acc + size > need:
                edge = max(edge, ends[k] - (need - acc))
                break
            acc += size
        return edge

    def unsacked_between(self, a: int, b: int) -> int:
        """Octets in [a, b) that are not SACKed."""
        if a >= b:
            return 0
        total = b - a
        starts = self.starts
        ends = self.ends
        for k in range(max(bisect_right(starts, a) - 1, 0), len(starts)):
            s = starts[k]
            if s >= b:
                break
            e = ends[k]
            if e > a:
                total -= min(e, b) - max(s, a)
        return total

    def next_hole(self, seq: int, below: int) -> tuple[int, int] | None:
        """The first un-SACKed run [start, end) at or after `seq` that starts below `below`."""
        starts = self.starts
        ends = self.ends
        k = bisect_right(starts, seq) - 1
        if k >= 0 and ends[k] > seq:
            seq = ends[k]
        k += 1
        if seq >= below:
            return None
        return seq, (starts[k] if k < len(starts) else below)
