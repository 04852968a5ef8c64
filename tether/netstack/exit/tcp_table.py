"""TCP through the exit: each peer connection is terminated by a `TcpConnection` and proxied over
a host TCP socket.

Life of a flow:

1. A SYN with no flow → `TcpConnection` (waiting in SYN-RECEIVED for the host) and `TcpConnect`.
   No SYN-ACK goes out until the host connected, so the peer sees a refused or unreachable
   destination as such: `receive_connect_failed(ECONNREFUSED)` → RST, anything else (and the
   connection's own connect timer) → ICMP unreachable quoting the SYN, which stacks treat as a
   hard error during connection establishment, so apps fail fast instead of waiting for SYN
   retries to run out.
2. Data: peer → host is taken from the connection (`take_peer_data`) and written with `TcpWrite`
   while the shell's socket keeps up; when it does not (`receive_write_blocked`), nothing more
   is read from the connection, its receive window closes, and the peer is slowed down:
   end-to-end backpressure. Host → peer: the shell reads at most `read_budget` and reports it
   (`receive_data`); when the connection's send buffer is full the exit pauses the host socket
   (`TcpPauseReading`) and resumes it once a quarter of the buffer is free, so reading and ACKs
   do not ping-pong.
3. FIN from the peer → `TcpShutdown` after the last data; EOF from the host → the connection's
   FIN. Once both directions are finished the host socket is closed; the connection itself
   lingers in TIME-WAIT to re-ACK a lost FIN. A reset either way resets the other side
   (`TcpClose(abort=True)` / RST).
4. Limits (`limits`): a SYN is admitted only if the peer and the device have room for
   another flow and its buffers; the connection starts with small buffers that grow while
   they are what limits the transfer; once it has delivered everything both ways it releases
   its buffers and may be reclaimed for a new connection.

Work per peer segment: parse, one dict lookup, `receive_segment`, and putting the flow on the
dirty list. Everything else (events, host writes, segments to send, timers) happens once per
flow per batch in `flush`, so a burst of segments costs one host write and one ACK decision,
much as GRO coalesces in a kernel. The `Exit` runs `flush` at the start of each `take_*`, so
what it hands out always includes what the inputs before it caused.
"""

from __future__ import annotations

import errno
import random

from tether.netstack.exit.actions import (
    TcpClose,
    TcpConnect,
    TcpPauseReading,
    TcpResumeReading,
    TcpShutdown,
    TcpWrite,
)
from tether.netstack.exit.flows import TcpFlow
from tether.netstack.tcp import Established, State, TcpConnection
from tether.netstack.wire import (
    ACK,
    RST,
    SYN,
    IcmpError,
    IPPacket,
    PacketError,
    build_reset_reply,
    errno_to_icmp,
    ip_wrapper,
    parse_ip,
    parse_segment,
)

__all__ = ["MAX_BACKLOG", "READ_CHUNK", "TcpTable"]

READ_CHUNK = 256 * 1024  # largest single host read handed to a connection
MAX_BACKLOG = 1 << 20  # host bytes a connection refused (the shell read too much): abort beyond
_CLOSED = State.CLOSED


class TcpTable:
    """The exit's TCP flows. The `Exit` feeds it its peers' segments and its shell's socket
    events; it writes actions, packets and counts into `output` and calls public `Exit`
    methods (`peer`, `send_error`, `arm`) for what is shared with the other tables."""

    def __init__(self, exit_, output, config, isn=None) -> None:
        self.exit = exit_
        self.output = output
        self.config = config
        self.tcp_config = config.tcp
        self.flows: dict[tuple, TcpFlow] = {}
        self._dirty: list[TcpFlow] = []
        self._act = output.actions.append
        self._out = output.packets.append
        self._stats = output.stats
        # RFC 6528 asks for unpredictable ISNs; the exit is always the passive side, so a
        # random one per connection does (the peer picks the 4-tuples).
        self._isn = isn or random.SystemRandom().getrandbits
        self.limits = exit_.limits
        self.queue_delay: float | None = None  # the socket queue, as judged for this batch
        self.batch_queued = 0.0  # how long this batch's first datagram waited

    # -- from the peer -----------------------------------------------------------------------

    def receive_queue_delay(self, judged: float, waited: float) -> None:
        """The batch about to be received: the socket queue's delay as the Exit judges it (its
        windowed minimum, which receive windows follow) and how long the batch's first datagram
        waited (the ACKs in it were that late through no fault of the path); both last until
        the next `flush`."""
        self.queue_delay = judged
        self.batch_queued = waited

    def receive_segment(self, peer_key: bytes, ip: IPPacket, now: float) -> None:
        seg = parse_segment(ip.src, ip.dst, ip.payload, verify_checksum=False)
        key = (peer_key, ip.src, seg.sport, ip.dst, seg.dport)
        flow = self.flows.get(key)
        syn_only = seg.flags & (SYN | ACK | RST) == SYN
        if flow is not None:
            conn = flow.conn
            flow.last = now
            if conn.state is not _CLOSED:
                conn.receive_segment(seg, now, self.batch_queued)
                if not flow.dirty:
                    flow.dirty = True
                    self._dirty.append(flow)
                if not syn_only or conn.state is not _CLOSED:
                    return
            # Closed: either just now by this SYN (a new incarnation after TIME-WAIT, RFC 6191)
            # or earlier in this batch. Settle the old flow, then treat the segment afresh.
            self._service(flow, now)
        if syn_only:
            self._open(peer_key, key, ip, seg, now)
        else:
            self._reset(ip, seg)

    def _open(self, peer_key, key, ip: IPPacket, seg, now: float) -> None:
        ex = self.exit
        if seg.dport == 0 or seg.sport == 0 or not ex.policy.valid_source(ip.src):
            self._stats["drop_tcp_bad_port_or_source"] += 1
            return
        ps = ex.peer(peer_key)
        limits = self.limits
        if not limits.admit(ps, now):
            self._stats["refused_flow_limit"] += 1
            self._refuse(ps, ip, seg, now)
            return
        granted = limits.grant(ps, now)
        if granted is None:
            self._refuse(ps, ip, seg, now)
            return
        conn = TcpConnection(
            seg,
            local_addr=ip.dst,
            remote_addr=ip.src,
            now=now,
            isn=self._isn(32),
            mtu=self.output.mtu,
            config=self.tcp_config,
        )
        flow = TcpFlow(key, ps, self, conn, ip, seg.dport, now)
        flow.recv_level, flow.send_level, flow.grant = granted
        conn.set_buffer_sizes(*limits.sizes(flow))
        self.flows[key] = flow
        ps.tcp[key] = flow
        limits.added(ps, flow)
        self._act(TcpConnect(flow))
        flow.dirty = True
        self._dirty.append(flow)
        self._stats["tcp_flows_opened"] += 1

    def _refuse(self, ps, ip: IPPacket, seg, now: float) -> None:
        """A SYN over a limit: RST, so the app fails fast, within the peer's ICMP error budget
        (`Exit.send_error`); beyond it the SYN is dropped and the peer's stack retries later. A
        peer hammering its limit thus slows itself down instead of costing the exit an RST
        (a packet to build, encrypt and send) per SYN."""
        if ps.limiter.allow(now):
            self._reset(ip, seg)
        else:
            self._stats["refused_silently"] += 1

    def _reset(self, ip: IPPacket, seg) -> None:
        """RST for a segment that matches no connection (RFC 9293 §3.10.7.1)."""
        rst = build_reset_reply(ip.dst, ip.src, seg)
        if rst is not None:
            self._out(ip_wrapper(ip.dst, ip.src)(rst))
            self._stats["tcp_rst_sent"] += 1

    def send_reset(self, ip: IPPacket) -> None:
        """RST for a TCP segment to a refused destination or to the device itself."""
        self._reset(ip, parse_segment(ip.src, ip.dst, ip.payload, verify_checksum=False))

    # -- from the host -----------------------------------------------------------------------

    def _mark(self, flow: TcpFlow) -> None:
        if not flow.dirty:
            flow.dirty = True
            self._dirty.append(flow)

    def receive_connected(self, flow: TcpFlow, now: float) -> None:
        if flow.closed or flow.connected:
            return
        flow.connected = True
        flow.syn = None
        flow.conn.receive_host_connected(now)
        self._mark(flow)

    def receive_connect_failed(self, flow: TcpFlow, err: int, now: float) -> None:
        """ECONNREFUSED → RST to the peer; anything else → ICMP unreachable quoting its SYN."""
        if flow.closed or flow.connected:
            return
        conn = flow.conn
        if err == errno.ECONNREFUSED:
            conn.receive_host_refused(now)
            self._stats["tcp_refused"] += 1
        else:
            conn.receive_host_unreachable(now)
            self._unreachable(flow, errno_to_icmp(err, IcmpError.HOST_UNREACHABLE), now)
        self._mark(flow)

    def _unreachable(self, flow: TcpFlow, kind: IcmpError, now: float) -> None:
        if flow.syn is None:
            return
        try:
            quote = parse_ip(flow.syn, truncated_ok=True)
        except PacketError:
            return
        if kind is IcmpError.TOO_BIG or kind is IcmpError.PORT_UNREACHABLE:
            kind = IcmpError.HOST_UNREACHABLE  # neither means anything for a connect
        self.exit.send_error(flow.peer.key, quote, kind, now)
        self._stats["tcp_unreachable"] += 1

    def read_budget(self, flow: TcpFlow) -> int:
        """How many bytes the shell may read from the host socket now; at 0 the exit also pauses
        the socket (`TcpPauseReading`) and resumes it once there is room again."""
        if flow.closed or flow.host_closed or flow.backlog:
            space = 0
        else:
            space = flow.conn.host_send_space()
        if space <= 0:
            if not flow.paused and not flow.closed and not flow.host_closed:
                flow.paused = True
                self._act(TcpPauseReading(flow))
            return 0
        return space if space < READ_CHUNK else READ_CHUNK

    def receive_data(self, flow: TcpFlow, data, now: float) -> None:
        if flow.closed or flow.host_closed or not data:
            return
        conn = flow.conn
        if flow.backlog:
            n = 0
        else:
            n = conn.receive_host_data(data, now)
        if n < len(data):
            backlog = flow.backlog
            if backlog is None:
                backlog = flow.backlog = bytearray()
            backlog += memoryview(data)[n:]
            if len(backlog) > MAX_BACKLOG:
                conn.receive_host_reset(now)  # the shell ignored the read budget: give up
        if not flow.paused and (flow.backlog or conn.host_send_space() <= 0):
            flow.paused = True
            self._act(TcpPauseReading(flow))
        self._mark(flow)

    def receive_eof(self, flow: TcpFlow, now: float) -> None:
        if flow.closed or flow.host_eof:
            return
        flow.host_eof = True
        if flow.backlog:
            flow.eof_pending = True
        else:
            flow.conn.receive_host_eof(now)
        self._mark(flow)

    def receive_reset(self, flow: TcpFlow, now: float) -> None:
        if flow.closed:
            return
        flow.conn.receive_host_reset(now)
        self._mark(flow)

    def receive_write_blocked(self, flow: TcpFlow, now: float) -> None:
        flow.blocked = True

    def receive_writable(self, flow: TcpFlow, now: float) -> None:
        if flow.closed:
            return
        flow.blocked = False
        self._mark(flow)

    # -- timers ------------------------------------------------------------------------------

    def handle_timer(self, flow: TcpFlow, now: float) -> None:
        """The flow's timer (armed with `Exit.arm`) is due: run the connection's timers."""
        if flow.closed:
            return
        conn = flow.conn
        d = conn.next_timer()
        if d is None:
            return
        if d > now:
            self.exit.arm(d, flow)
            return
        conn.handle_timer(now)
        self._mark(flow)

    # -- the batch step ----------------------------------------------------------------------

    def flush(self, now: float) -> None:
        """Service every flow touched since the last flush (see the module docstring); the
        `Exit` runs it at the start of each `take_*`."""
        dirty = self._dirty
        while dirty:
            self._dirty = []
            for flow in dirty:
                flow.dirty = False
                if not flow.closed:
                    self._service(flow, now)
            dirty = self._dirty
        self.queue_delay = None  # the next batch brings its own
        self.batch_queued = 0.0

    def _service(self, flow: TcpFlow, now: float) -> None:
        conn = flow.conn
        for ev in conn.take_events():
            if type(ev) is Established:
                self._stats["tcp_established"] += 1
        act = self._act
        if flow.connected and not flow.host_closed:
            if conn.rcv_available and (not flow.blocked or conn.state is _CLOSED):
                if self.queue_delay is not None:
                    conn.receive_queue_delay(self.queue_delay, now)
                if flow.recv_level and conn.receive_window_used():
                    self._grow(flow, True)  # the peer waits for window while the host keeps up
                act(TcpWrite(flow, conn.take_peer_data()))
            if conn.peer_eof and not flow.shutdown_sent and not conn.rcv_available:
                flow.shutdown_sent = True
                act(TcpShutdown(flow))
            if flow.backlog:
                n = conn.receive_host_data(flow.backlog, now)
                del flow.backlog[:n]
                if not flow.backlog and flow.eof_pending:
                    flow.eof_pending = False
                    conn.receive_host_eof(now)
            if flow.paused and not flow.host_eof:
                if flow.send_level and conn.send_buffer_in_flight():
                    self._grow(flow, False)  # the host has more; the buffer is all in flight
                if conn.host_send_space() >= max(1, conn.buffer_sizes[1] // 4):
                    flow.paused = False
                    act(TcpResumeReading(flow))
        segments = conn.take_segments(now)
        if segments:
            wrap = flow.wrap
            out = self._out
            for s in segments:
                out(wrap(s))
        if conn.state is _CLOSED:
            self._remove(flow, now)
            return
        if flow.host_eof and flow.shutdown_sent and not flow.host_closed:
            flow.host_closed = True  # both directions done: the host socket has no more use
            act(TcpClose(flow, False))
        if flow.host_closed and not flow.reclaimable and conn.finished:
            self.limits.set_reclaimable(flow)
        d = conn.next_timer()
        if d is not None:
            self.exit.arm(d, flow)

    def _grow(self, flow: TcpFlow, recv: bool) -> None:
        if self.limits.grow(flow, recv):
            flow.conn.set_buffer_sizes(*self.limits.sizes(flow))

    def _remove(self, flow: TcpFlow, now: float) -> None:
        conn = flow.conn
        if not flow.host_closed:
            flow.host_closed = True
            abort = conn.reset_reason is not None or not flow.connected
            self._act(TcpClose(flow, abort))
        if conn.reset_reason == "connect-timeout":
            self._unreachable(flow, IcmpError.HOST_UNREACHABLE, now)
        self._forget(flow)
        self._stats["tcp_flows_closed"] += 1

    def _forget(self, flow: TcpFlow) -> None:
        flow.closed = True
        flow.armed = None
        flow.syn = None
        flow.backlog = None
        if self.flows.get(flow.key) is flow:
            del self.flows[flow.key]
        ps = flow.peer
        if ps.tcp.get(flow.key) is flow:
            del ps.tcp[flow.key]
            self.limits.removed(ps, flow)

    def _drop(self, flow: TcpFlow) -> None:
        """Forget a connection without a word to the peer; the host socket is aborted (RST to
        the server) unless it was closed cleanly already."""
        if not flow.host_closed:
            flow.host_closed = True
            self._act(TcpClose(flow, True))
        self._forget(flow)

    def evict(self, flow: TcpFlow, now: float, *, reset: bool) -> None:
        """Make room (`limits`): a reclaimable connection is dropped silently (it has
        delivered everything); a live one is reset both ways."""
        if flow.closed:
            return
        if reset:
            flow.conn.receive_host_reset(now)
            self._service(flow, now)
            if not flow.closed:
                self._drop(flow)
        else:
            self._drop(flow)

    def forget(self, ps, keep, gone: set) -> int:
        """End the peer's connections whose source `keep` rejects (all without `keep`): the
        host socket aborted, nothing sent to the peer; their sources go into `gone`. See
        `Exit.forget_peer`."""
        n = 0
        for flow in list(ps.tcp.values()):
            src = flow.key[1]
            if keep is None or not keep(src):
                gone.add(src)
                if flow.host_closed and not flow.closed:
                    self._act(TcpClose(flow, True))  # still draining in the shell: abort
                self._drop(flow)
                n += 1
        return n

    def close_all(self) -> None:
        for flow in list(self.flows.values()):
            self._drop(flow)
        self.flows.clear()
        self._dirty = []
