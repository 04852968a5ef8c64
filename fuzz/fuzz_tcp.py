"""Fuzz target for TCP: the segment parser and the terminator's state machine.

Run: `python fuzz/fuzz_tcp.py [corpus_dir] [-max_total_time=60]` (needs atheris).
The contract under test: `parse_segment` may raise `TcpError` and nothing else, whatever the bytes;
a `TcpConnection` never raises, whatever segments and host calls arrive in whatever order, keeps
its buffers bounded, only ever sends well-formed segments, and keeps no timer once closed.

The input is a little program. Its header picks the peer's SYN options, the connection's limits
and whether the host connects; then each opcode feeds either raw bytes through the parser (and
into the connection when they parse), or a *structurally valid* segment whose fields come from the
input with sequence and acknowledgment numbers chosen near the connection's own (so the fuzzer
spends its time inside the windows, where the logic is), or a host call, or the passage of time.
"""

from __future__ import annotations

import sys

from tether.netstack.tcp import State, TcpConfig, TcpConnection
from tether.netstack.wire import ACK, TcpError, build_segment, parse_segment

_PEER, _LOCAL = bytes([192, 168, 90, 2]), bytes([203, 0, 113, 9])
_PEER6, _LOCAL6 = bytes(15) + b"\x02", b"\x20\x01" + bytes(13) + b"\x09"
_M32 = 0xFFFFFFFF
_CONFIGS = (
    TcpConfig(),
    TcpConfig(
        recv_buffer=3000,
        send_buffer=2000,
        max_ooo_ranges=2,
        max_sack_ranges=2,
        max_retransmits=2,
        keepalive_idle=5.0,
        keepalive_interval=1.0,
        keepalive_probes=1,
        idle_timeout=50.0,
        congestion="newreno",
    ),
    TcpConfig(recv_buffer=1 << 20, delayed_ack=0.0, time_wait=0.5, challenge_ack_interval=0.0),
)
_DT = (0.0, 0.001, 0.04, 0.2, 1.0, 3.0, 30.0, 400.0)


class _Reader:
    """Reads fields off the input; past its end everything is zero."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def more(self) -> bool:
        return self.pos < len(self.data)

    def take(self, n: int) -> bytes:
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def int(self, n: int) -> int:
        return int.from_bytes(self.take(n).ljust(n, b"\x00"), "big")


def _near(r: _Reader, base: int) -> int:
    """A 32-bit number close to `base` (most of the time) or anywhere."""
    mode = r.int(1)
    if mode < 200:
        return (base + (mode - 100) * r.int(1)) & _M32
    if mode < 250:
        return (base + r.int(2) - 0x8000) & _M32
    return r.int(4)


def _check(conn: TcpConnection, local: bytes, remote: bytes, out: list[bytes]) -> None:
    cfg = conn.config
    for raw in out:
        seg = parse_segment(local, remote, raw)  # must be well-formed, checksum included
        assert (seg.sport, seg.dport) == (conn.local_port, conn.remote_port)
    assert len(conn.rx.buf) + conn.rx.ooo.nbytes <= conn.rx.bufsize + (1 << conn.rcv_wscale)
    assert len(conn.rx.ooo.starts) <= cfg.max_ooo_ranges
    assert len(conn.tx.buf.data) <= cfg.send_buffer
    assert len(conn.tx.scoreboard.starts) <= cfg.max_sack_ranges
    if conn.state is State.CLOSED:
        assert conn.next_timer() is None
    else:
        tx = conn.tx
        assert tx.snd_una <= tx.snd_nxt <= tx.snd_max <= tx.data_end


def TestOneInput(data: bytes) -> None:  # noqa: N802 (atheris' name)
    r = _Reader(data)
    head = r.int(1)
    v6 = bool(head & 1)
    local, remote = (_LOCAL6, _PEER6) if v6 else (_LOCAL, _PEER)
    # 1. Whatever the bytes, the parser raises TcpError or returns a segment.
    raw = r.take(r.int(1))
    for verify in (True, False):
        try:
            parse_segment(remote, local, raw, verify_checksum=verify)
        except TcpError:
            pass
    # 2. A connection from a SYN whose options come from the input.
    opts = r.int(1)
    peer_isn = r.int(4)
    syn = build_segment(
        remote,
        local,
        r.int(2),
        r.int(2),
        peer_isn,
        0,
        0x02,
        r.int(2),
        mss=r.int(2) if opts & 1 else None,
        wscale=r.int(1) % 16 if opts & 2 else None,
        sack_permitted=bool(opts & 4),
        timestamps=(r.int(4), 0) if opts & 8 else None,
    )
    now = 1.0
    conn = TcpConnection(
        parse_segment(remote, local, syn),
        local_addr=local,
        remote_addr=remote,
        now=now,
        isn=r.int(4),
        mtu=576 + r.int(1) * 8,
        config=_CONFIGS[(head >> 1) % len(_CONFIGS)],
    )
    if not head & 0x80:
        conn.receive_host_connected(now)
    peer_seq = (peer_isn + 1) & _M32
    tsval = 1
    for _ in range(300):
        if not r.more():
            break
        op = r.int(1) % 12
        if op <= 3:  # a structurally valid segment with fuzzed fields
            flags = r.int(1)
            if op <= 1:
                flags = (flags & 0x3F) | ACK
            plen = r.int(2) % 3000 if r.int(1) & 1 else 0
            extras = r.int(1)
            tsval = (tsval + r.int(1) - 16) & _M32
            sack = []
            if extras & 2:
                for _ in range(1 + extras % 4):
                    left = _near(r, conn.tx.snd_una)
                    sack.append((left, (left + r.int(2)) & _M32))
            try:
                seg_bytes = build_segment(
                    remote,
                    local,
                    conn.remote_port,
                    conn.local_port,
                    _near(r, peer_seq),
                    _near(r, conn.tx.snd_max),
                    flags,
                    r.int(2),
                    bytes(plen),
                    timestamps=(tsval, r.int(4)) if extras & 1 else None,
                    sack_blocks=sack if not extras & 1 or len(sack) <= 3 else sack[:3],
                    mss=r.int(2) if extras & 4 else None,
                )
            except TcpError:
                continue
            seg = parse_segment(remote, local, seg_bytes)
            conn.receive_segment(seg, now)
            if op == 0:
                peer_seq = (seg.seq + seg.seg_len) & _M32
        elif op == 4:  # raw bytes that happen to parse
            try:
                seg = parse_segment(remote, local, r.take(r.int(1)), verify_checksum=False)
            except TcpError:
                continue
            conn.receive_segment(seg, now)
        elif op == 5:
            assert conn.receive_host_data(bytes(r.int(2)), now) <= conn.config.send_buffer
        elif op == 6:
            conn.take_peer_data(r.int(2))
        elif op == 7:
            which = r.int(1)
            if which < 8:
                conn.receive_host_eof(now)
            elif which < 10:
                conn.receive_host_reset(now)
            elif which < 12:
                conn.receive_host_connected(now)
            elif which < 13:
                conn.receive_host_refused(now)
            elif which < 14:
                conn.receive_host_unreachable(now)
        elif op <= 9:
            now += _DT[r.int(1) % len(_DT)]
            deadline = conn.next_timer()
            if deadline is not None and deadline <= now:
                conn.handle_timer(now)
        else:
            conn.take_events()
        _check(conn, local, remote, conn.take_segments(now))
    # Let every timer run out: a connection must always end up closed with no timer.
    for _ in range(1000):
        deadline = conn.next_timer()
        if deadline is None:
            break
        now = max(now, deadline)
        conn.handle_timer(now)
        _check(conn, local, remote, conn.take_segments(now))
    assert conn.state is State.CLOSED, "with a silent peer every connection must time out"


if __name__ == "__main__":
    import atheris

    atheris.instrument_all()
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
