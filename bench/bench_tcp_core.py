"""Throughput of the TCP terminator's core (no sockets, no IP, no WireGuard), both directions.

    .venv/bin/python bench/bench_tcp_core.py [MB]

Counted as "core" is what the shell would call per segment: `parse_segment` on what the peer
sent, `receive_segment`, `take_segments` (which builds and checksums our segments),
`receive_host_data` / `take_peer_data`. The simulated peer's work (building its ACKs or data) is
done outside the timed sections. Segments carry 1368 payload bytes (MSS 1380 minus timestamps),
the shape a 1420-MTU WireGuard path gives.
"""

from __future__ import annotations

import struct
import sys
import time

from tether.netstack.tcp import TcpConfig, TcpConnection
from tether.netstack.wire import ACK, SYN, addresses_sum, build_segment, parse_segment

PEER, EXIT = bytes([192, 168, 90, 2]), bytes([203, 0, 113, 9])
ASUM = addresses_sum(PEER, EXIT)  # a shell computes this once per flow
M = 0xFFFFFFFF


def handshake() -> tuple[TcpConnection, int, int]:
    syn = build_segment(
        PEER, EXIT, 40000, 443, 1000, 0, SYN, 65535,
        mss=1380, wscale=7, sack_permitted=True, timestamps=(1, 0),
    )  # fmt: skip
    conn = TcpConnection(
        parse_segment(PEER, EXIT, syn), local_addr=EXIT, remote_addr=PEER, now=0.0, isn=5000,
        config=TcpConfig(recv_buffer=1 << 20, send_buffer=1 << 20),
    )  # fmt: skip
    conn.receive_host_connected(0.0)
    sa = parse_segment(EXIT, PEER, conn.take_segments(0.0)[0])
    ack = build_segment(
        PEER, EXIT, 40000, 443, 1001, sa.seq + 1, ACK, 8192, timestamps=(2, sa.tsval)
    )
    conn.receive_segment(parse_segment(PEER, EXIT, ack), 0.001)
    conn.take_events()
    return conn, 1001, sa.seq + 1


def bench_send(total: int) -> tuple[float, int]:
    """Host -> peer: the peer ACKs every second segment at once (window 1 MiB)."""
    conn, peer_seq, _ = handshake()
    chunk = bytes(range(256)) * 256  # 64 KiB reads from the "host socket"
    sent = acked_total = segments = 0
    core = 0.0
    now = 0.01
    pending: list[bytes] = []
    una_seen = 0
    t_tsval = 3
    while acked_total < total:
        t0 = time.perf_counter()
        while sent < total:
            n = conn.receive_host_data(chunk[: min(len(chunk), total - sent)], now)
            if not n:
                break
            sent += n
        out = conn.take_segments(now)
        core += time.perf_counter() - t0
        segments += len(out)
        # The peer: ACK every second segment (cumulative, from the raw header).
        acks = []
        for i, raw in enumerate(out):
            seq = struct.unpack_from("!I", raw, 4)[0]
            end = (seq + len(raw) - 32) & M
            if (end - una_seen) & M < 0x80000000:
                una_seen = end
            if i % 2 or i == len(out) - 1:
                t_tsval += 1
                acks.append(
                    build_segment(
                        PEER,
                        EXIT,
                        40000,
                        443,
                        peer_seq,
                        una_seen,
                        ACK,
                        8192,
                        timestamps=(t_tsval, 0),
                    )  # fmt: skip
                )
        pending = acks
        now += 0.0005
        t0 = time.perf_counter()
        for raw in pending:
            conn.receive_segment(parse_segment(PEER, EXIT, raw, addr_sum=ASUM), now)
        core += time.perf_counter() - t0
        acked_total = (conn.tx.snd_una - conn.iss - 1) & M if conn.tx.snd_una > conn.iss else 0
    return core, segments


def bench_receive(total: int) -> tuple[float, int]:
    """Peer -> host: in-order 1368-byte segments; we ACK and the host drains as it goes."""
    conn, peer_seq, our_ack = handshake()
    payload = bytes(range(256)) * 5 + bytes(88)
    n = total // len(payload)
    segs = [
        build_segment(
            PEER,
            EXIT,
            40000,
            443,
            (peer_seq + i * len(payload)) & M,
            our_ack,
            ACK,
            8192,
            payload,
            timestamps=(10 + i, 0),
        )  # fmt: skip
        for i in range(n)
    ]
    now = 0.01
    got = 0
    t0 = time.perf_counter()
    for i, raw in enumerate(segs):
        conn.receive_segment(parse_segment(PEER, EXIT, raw, addr_sum=ASUM), now)
        if i % 8 == 7:
            got += len(conn.take_peer_data())
            conn.take_segments(now)
            now += 0.0001
    got += len(conn.take_peer_data())
    conn.take_segments(now)
    core = time.perf_counter() - t0
    assert got == n * len(payload), (got, n * len(payload))
    return core, n


def main() -> None:
    mb = float(sys.argv[1]) if len(sys.argv) > 1 else 50.0
    total = int(mb * 1e6)
    for name, fn in (("host->peer (send)", bench_send), ("peer->host (receive)", bench_receive)):
        core, segs = min(fn(total) for _ in range(3))  # best of three: the machine is shared
        print(
            f"{name:22s} {total / core / 1e6:8.1f} MB/s  {segs / core:9.0f} segments/s  "
            f"({segs} segments, {core:.2f} s of core time, best of 3)"
        )


if __name__ == "__main__":
    main()
