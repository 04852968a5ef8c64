"""The receiving half of a TCP connection: RCV.NXT, the offered window, reassembly, ACK timing.

Counterpart of `sender.SendSide`. The connection decides *whether* a segment is processed
(state, RST, SYN, ACK checks); this class decides which of its octets are kept, where they go, what
window to offer and when an ACK is due. Sequence numbers are absolute (see `buffers`).

Memory bound: every octet kept lies in [first unread octet, RCV.ADV), and RCV.ADV never exceeds the
first unread octet + buffer size + one window-scale step, so in-order plus out-of-order data never
exceed `bufsize + 2**wscale` bytes, whatever the peer sends.

ACK policy (RFC 5681 §4.2, RFC 9293 §3.8.6.3): ACK at once for out-of-order or duplicate data, for
data that fills a hole, for a FIN, and when reading opens the window substantially; otherwise ACK
every second full-sized segment, with the delayed-ACK timer for a lone one. ACKs are built when
the shell next collects output, so a batch of segments processed together is answered by one
cumulative ACK, as with receive offload on a kernel stack.
"""

from __future__ import annotations

from tether.netstack.tcp.buffers import ReassemblyQueue
from tether.netstack.tcp.window_rtt import WindowRtt

__all__ = ["ReceiveSide"]


class ReceiveSide:
    """Receiver state of one connection."""

    __slots__ = (
        "rcv_nxt",
        "rcv_adv",
        "wscale",
        "bufsize",
        "sws",
        "buf",
        "ooo",
        "rcv_mss",
        "mss",
        "unacked",
        "ack_now",
        "delack_deadline",
        "delayed_ack",
        "last_ack_sent",
        "clamp",
        "governed",
        "window_rtt",
    )

    def __init__(
        self,
        *,
        irs: int,
        bufsize: int,
        wscale: int,
        mss: int,
        max_ooo_ranges: int,
        delayed_ack: float,
    ) -> None:
        self.rcv_nxt = irs + 1
        self.rcv_adv = self.rcv_nxt  # RCV.NXT + RCV.WND as last advertised: the right edge
        self.wscale = wscale
        self.bufsize = bufsize
        # Receiver SWS avoidance (RFC 9293 §3.8.6.2.2): move the edge by min(buffer/2, MSS) or more.
        self.sws = min(bufsize // 2, mss)
        self.buf = bytearray()  # in order, not yet read by the host
        self.ooo = ReassemblyQueue(max_ooo_ranges)
        self.rcv_mss = 536  # estimate of the peer's segment size, for "every second segment"
        self.mss = mss
        self.unacked = 0
        self.ack_now = False
        self.delack_deadline: float | None = None
        self.delayed_ack = delayed_ack
        self.last_ack_sent = self.rcv_nxt  # RFC 7323 Last.ACK.sent
        # The window clamp: the most the peer may have in flight beyond RCV.NXT, whatever the
        # buffer could hold; moved by `receive_queue_delay` (unbounded until a delay is known).
        self.clamp = 1 << 62
        self.governed = self.rcv_nxt  # RCV.NXT when the clamp was last moved
        self.window_rtt = WindowRtt(self.rcv_nxt)

    def acceptable(self, seq: int, seg_len: int) -> bool:
        """RFC 9293 §3.10.7.4 first check, with the zero-window allowance for SEG.SEQ = RCV.NXT.

        A segment at RCV.NXT is let through even into a zero window so that its ACK, window and
        FIN are processed (RFC 9293 asks for this "special allowance"); its data is trimmed.
        """
        nxt = self.rcv_nxt
        wnd = self.rcv_adv - nxt
        if seq == nxt:
            return True
        if seg_len == 0:
            return wnd > 0 and nxt <= seq < nxt + wnd
        return wnd > 0 and (nxt <= seq < nxt + wnd or nxt < seq + seg_len <= nxt + wnd)

    def receive(self, seq: int, payload: bytes | memoryview, now: float) -> bool:
        """Keep the in-window part of `payload` at `seq`. True if it made data readable."""
        nxt = self.rcv_nxt
        end = seq + len(payload)
        self.window_rtt.data_arrived(seq, end, now)
        adv = self.rcv_adv
        if end > adv:
            payload = payload[: max(adv - seq, 0)]
            end = seq + len(payload)
        if seq < nxt:
            payload = payload[nxt - seq :]
            seq = nxt
        if end <= seq:
            self.ack_now = True  # a duplicate or no room: the peer may have lost our ACK
            return False
        if seq != nxt:
            self.ooo.insert(seq, payload)  # refused when at the range cap: it comes again
            self.ack_now = True  # out of order: ACK at once, with SACK blocks
            return False
        buf = self.buf
        was_empty = not buf
        buf += payload
        n = end - seq
        ooo = self.ooo
        if ooo:
            for chunk in ooo.pop_ready(end):
                buf += chunk
                end += len(chunk)
            self.ack_now = True  # a hole was filled
        self.rcv_nxt = end
        if n > self.rcv_mss:
            self.rcv_mss = min(n, self.mss)
        self.unacked += n
        if self.unacked >= 2 * self.rcv_mss:
            self.ack_now = True
        elif self.delack_deadline is None:
            self.delack_deadline = now + self.delayed_ack
        return was_empty

    def fin_ready(self) -> bool:
        """A FIN that arrived out of order has become next in sequence."""
        return self.ooo.fin_seq == self.rcv_nxt

    def note_fin(self, fin_seq: int) -> bool:
        """A FIN at `fin_seq`; True if it is next in sequence (else kept if inside the window)."""
        if fin_seq == self.rcv_nxt:
            return True
        if self.rcv_nxt < fin_seq <= self.rcv_adv:
            self.ooo.fin_seq = fin_seq
            self.ack_now = True
        return False

    def take_fin(self) -> None:
        """The FIN occupies RCV.NXT; nothing can follow it."""
        self.rcv_nxt += 1
        self.ooo.clear()
        self.ack_now = True

    def read(self, max_bytes: int | None, window_open: bool) -> bytes | bytearray:
        """Hand in-order data to the host; ask for a window update if that opened the window."""
        buf = self.buf
        if not buf:
            return b""
        if max_bytes is None or max_bytes >= len(buf):
            self.buf = bytearray()
            data: bytes | bytearray = buf  # hand over the buffer itself: no copy
        else:
            data = bytes(buf[: max(max_bytes, 0)])
            del buf[: len(data)]
        if window_open:
            # Like Linux's tcp_cleanup_rbuf: announce at once when the window at least doubled.
            cur = self.rcv_adv - self.rcv_nxt
            free = min(self.bufsize - len(self.buf), self.clamp)
            if free >= 2 * cur and free - cur >= self.sws:
                self.ack_now = True
        return data

    def window_field(self) -> int:
        """The window to advertise (RFC 9293 §3.8.6.2.2 receiver SWS avoidance, RFC 7323 §2.4).

        The right edge moves only in steps of at least `sws`. Scaling forces it onto the grid
        RCV.NXT + k * 2**wscale: round up so it does not retreat, unless that would promise more
        than the buffer plus one grid step, in which case round down (a retreat of less than one
        step, which RFC 7323 §2.4 tells senders to expect). Without that cap the rounding could
        creep forward with every tiny segment while the host is not reading.
        """
        nxt = self.rcv_nxt
        limit = nxt + min(self.bufsize - len(self.buf), self.clamp)
        adv = self.rcv_adv
        edge = adv if limit < adv + self.sws else limit
        if edge < nxt:
            edge = nxt
        ws = self.wscale
        step = 1 << ws
        win = (edge - nxt + step - 1) >> ws
        if nxt + (win << ws) >= limit + step:
            win = (edge - nxt) >> ws
        if win > 0xFFFF:
            win = 0xFFFF
        edge = nxt + (win << ws)
        if edge > adv:
            self.rcv_adv = edge
        return win

    def receive_queue_delay(self, delay: float, target: float, now: float) -> None:
        """Move the window clamp toward `target` seconds of queue in front of the exit.

        When the exit is the bottleneck (a peer uploads faster than the process decrypts and
        forwards), every byte the peer may keep in flight beyond one pipeline's worth waits in
        the device's socket queue, and so does every other packet of every peer: a video call
        next to an upload. `delay` is that queue's age as the device read it; the peer's own
        queues (its WireGuard's, its interface's) show as the window's round trip above its
        least (`WindowRtt.excess`), and the larger of the two counts. Like LEDBAT
        (RFC 6817), the clamp moves in proportion to the data received since the last call and
        to how far the delay is from the target: at no delay it grows by an eighth per window
        (a 50 ms path opens 16-fold in about a second), at twice the target it halves per
        window, and it grows only while the peer waits for it (`WindowRtt.waited`: a peer with
        little to send, or held back by its own congestion window, earns nothing).
        The right edge already offered is never taken back (RFC 9293 §3.8.6.2.2); a smaller
        clamp only stops it from moving until the peer's data catches up.
        """
        new = self.rcv_nxt - self.governed
        self.governed = self.rcv_nxt
        if new <= 0:
            return
        # The window's round trip also holds the exit's own work on a batch (its ACK leaves when
        # the batch is done), which grows with the window and is needed to keep the pipeline
        # full: only its excess beyond one more target counts as a queue.
        window_rtt = self.window_rtt
        delay = max(delay, window_rtt.excess(now) - target)
        waited = window_rtt.take_waited()
        clamp = min(self.clamp, self.bufsize)
        if delay > target:
            cut = int(new * min((delay - target) / target, 1.0)) >> 1
            clamp = max(clamp - cut, 4 * self.mss)
        elif waited:
            clamp += int(new * (target - delay) / target) >> 3
        self.clamp = clamp

    def clamp_limits(self) -> bool:
        """The clamp, not the buffer, is what bounds the window now."""
        return self.clamp < self.bufsize

    def acked(self, now: float) -> None:
        """An ACK for RCV.NXT (and the window `window_field` gave) is going out: nothing is
        pending any more."""
        self.window_rtt.window_sent(self.rcv_adv, now)
        self.last_ack_sent = self.rcv_nxt
        self.ack_now = False
        self.delack_deadline = None
        self.unacked = 0

    def clear(self) -> None:
        """Abort: drop everything (RFC 9293: flush the queues on reset)."""
        self.buf = bytearray()
        self.ooo.clear()
        self.ack_now = False
        self.delack_deadline = None
