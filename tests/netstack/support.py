"""Helpers for the exit tests: a minimal phone-side TCP endpoint and packet shortcuts.

`PeerTcp` is deliberately independent of `tcp.TcpConnection` (it shares only the wire
format functions of `wire`): an active opener with 32-bit modular arithmetic, no SACK and no
timestamps, an ACK for every data segment, in-order delivery only (anything else is dropped and
re-ACKed), and go-back-N retransmission when asked to. It verifies every checksum the exit sends.

Go-back-N moves SND.NXT back to SND.UNA, as BSD does; like BSD it keeps SND.MAX, the highest
sequence number ever sent, for everything RFC 9293 says about "SND.NXT" (which never moves back
there): an ACK up to SND.MAX is acceptable (§3.10.7.4) and pure ACKs carry SEQ = SND.MAX.
"""

from __future__ import annotations

from tether.netstack.exit import (
    TcpClose,
    TcpConnect,
    TcpPauseReading,
    TcpResumeReading,
    TcpShutdown,
    TcpWrite,
)
from tether.netstack.wire import (
    ACK,
    FIN,
    PROTO_TCP,
    PSH,
    RST,
    SYN,
    build_ipv4,
    build_ipv6,
    build_segment,
    parse_ip,
    parse_segment,
)

M = 0xFFFFFFFF


def ip_packet(src: bytes, dst: bytes, proto: int, payload: bytes, ttl: int = 64) -> bytes:
    if len(src) == 4:
        return build_ipv4(src, dst, proto, payload, ttl)
    return build_ipv6(src, dst, proto, payload, ttl)


def seq_lt(a: int, b: int) -> bool:
    return a != b and ((b - a) & M) < 0x80000000


class PeerTcp:
    def __init__(
        self,
        src: bytes,
        dst: bytes,
        sport: int,
        dport: int,
        *,
        isn: int = 0xFFFFF000,  # wraps early: modular arithmetic is exercised
        mss: int | None = 1360,
        wscale: int | None = 7,
        window: int = 0xFFFF,
    ) -> None:
        self.src, self.dst, self.sport, self.dport = src, dst, sport, dport
        self.iss = isn & M
        self.snd_una = self.iss
        self.snd_nxt = (self.iss + 1) & M
        self.snd_max = self.snd_nxt  # highest sequence number sent + 1: go-back-N keeps it
        self.snd_wnd = 0
        self.snd_wscale = 0
        self.peer_mss = 536
        self.mss = mss
        self.wscale = wscale
        self.window = window  # raw 16-bit field we advertise (scaled by our wscale)
        self.rcv_nxt = 0
        self.state = "CLOSED"
        self.received = bytearray()
        self.send_q = bytearray()  # bytes from snd_una on (after the SYN is acked)
        self.fin_queued = False
        self.fin_seq: int | None = None  # where our FIN went; fixed once sent
        self.fin_received = False
        self.reset = False
        self.segments_in = 0
        self.late_acks = 0  # ACKs above SND.NXT (of octets sent before a go-back-N)
        self.window_probes = 0

    # -- building -------------------------------------------------------------------------

    def _pkt(self, seq: int, flags: int, payload: bytes = b"", **opts) -> bytes:
        win = self.window
        seg = build_segment(
            self.src, self.dst, self.sport, self.dport, seq, self.rcv_nxt, flags, win, payload,
            **opts,
        )  # fmt: skip
        return ip_packet(self.src, self.dst, PROTO_TCP, seg)

    def syn(self) -> bytes:
        self.state = "SYN_SENT"
        return self._pkt(self.iss, SYN, mss=self.mss, wscale=self.wscale)

    def ack(self) -> bytes:
        # SND.MAX, not the go-back-N pointer: a receiver that already has the octets below
        # SND.MAX would find an ACK at an older sequence number unacceptable and drop it.
        return self._pkt(self.snd_max, ACK)

    def rst(self) -> bytes:
        return self._pkt(self.snd_max, RST | ACK)

    def send(self, data: bytes) -> None:
        self.send_q += data

    def close(self) -> None:
        self.fin_queued = True

    def output(self) -> list[bytes]:
        """Data (and FIN) segments the window allows."""
        if self.state not in ("ESTABLISHED", "CLOSE_WAIT"):
            return []
        out = []
        wnd = self.snd_wnd
        while True:
            sent = self._data_in_flight()
            if sent >= len(self.send_q):
                break
            room = wnd - sent
            if room <= 0:
                break
            n = min(self.peer_mss, room, len(self.send_q) - sent)
            data = bytes(self.send_q[sent : sent + n])
            out.append(self._pkt(self.snd_nxt, ACK | PSH, data))
            self._advance(n)
        sent = self._data_in_flight()
        fin = self.fin_seq
        if self.fin_queued and sent == len(self.send_q) and fin in (None, self.snd_nxt):
            # The FIN's place is fixed once sent: after a go-back-N it goes again right there.
            self.fin_seq = self.snd_nxt
            out.append(self._pkt(self.snd_nxt, FIN | ACK))
            self._advance(1)
        return out

    def _advance(self, n: int) -> None:
        self.snd_nxt = (self.snd_nxt + n) & M
        if seq_lt(self.snd_max, self.snd_nxt):
            self.snd_max = self.snd_nxt

    def _data_in_flight(self) -> int:
        n = (self.snd_nxt - self.snd_una) & M
        fin = self.fin_seq
        if fin is not None and seq_lt(fin, self.snd_nxt) and not seq_lt(fin, self.snd_una):
            n -= 1  # the FIN holds the last sequence number until it is acknowledged
        return n

    def retransmit(self) -> list[bytes]:
        """Go back N: resend everything unacknowledged (SND.MAX stays where it is); into a zero
        window, probe with one octet instead (RFC 9293 §3.8.6.1: the exit's window update may
        have been lost, and a receiver does not repeat it: the sender's probe must find it)."""
        if self.state == "SYN_SENT":
            return [self.syn()]
        self.snd_nxt = self.snd_una
        out = self.output()
        if (
            not out
            and self.snd_wnd == 0
            and self.send_q
            and self.state in ("ESTABLISHED", "CLOSE_WAIT")
        ):
            out.append(self._pkt(self.snd_nxt, ACK | PSH, bytes(self.send_q[:1])))
            self._advance(1)
            self.window_probes += 1
        return out

    # -- receiving ------------------------------------------------------------------------

    def receive(self, packet: bytes) -> list[bytes]:
        """Process one packet from the exit; returns packets to send back."""
        ip = parse_ip(packet)
        assert ip.protocol == PROTO_TCP and ip.src == self.dst and ip.dst == self.src
        seg = parse_segment(ip.src, ip.dst, ip.payload, verify_checksum=True)
        assert seg.sport == self.dport and seg.dport == self.sport
        self.segments_in += 1
        if seg.flags & RST:
            self.reset = True
            self.state = "CLOSED"
            return []
        if self.state == "SYN_SENT":
            if seg.flags & (SYN | ACK) != SYN | ACK or seg.ack != (self.iss + 1) & M:
                return [self._pkt(seg.ack, RST)]
            self.rcv_nxt = (seg.seq + 1) & M
            self.snd_una = seg.ack
            self.peer_mss = seg.mss or 536
            both = seg.wscale is not None and self.wscale is not None
            self.snd_wscale = seg.wscale if both else 0
            self.snd_wnd = seg.window  # a SYN's window is never scaled
            self.state = "ESTABLISHED"
            return [self.ack()]
        if seg.flags & ACK:
            acked = (seg.ack - self.snd_una) & M
            # Up to SND.MAX: octets sent before a go-back-N may have arrived (RFC 9293 §3.10.7.4).
            if 0 < acked <= (self.snd_max - self.snd_una) & M:
                data_acked = acked
                if self.fin_seq is not None and seg.ack == (self.fin_seq + 1) & M:
                    data_acked -= 1
                del self.send_q[:data_acked]
                self.snd_una = seg.ack
                if seq_lt(self.snd_nxt, seg.ack):
                    self.snd_nxt = seg.ack
                    self.late_acks += 1
            if seg.ack == self.snd_una:
                self.snd_wnd = seg.window << self.snd_wscale
        out: list[bytes] = []
        payload = bytes(seg.payload)
        if payload or seg.flags & FIN:
            if seg.seq == self.rcv_nxt:
                self.received += payload
                self.rcv_nxt = (self.rcv_nxt + len(payload)) & M
                if seg.flags & FIN:
                    self.rcv_nxt = (self.rcv_nxt + 1) & M
                    self.fin_received = True
            out.append(self.ack())
        elif seg.seq != self.rcv_nxt:
            out.append(self.ack())  # outside the window (a keep-alive probe): answer with ACK
        return out

    @property
    def all_acked(self) -> bool:
        return self.snd_una == self.snd_max and not self.send_q


# -- a clocked Exit --------------------------------------------------------------------------

PEER_KEY = b"P" * 32
OTHER_KEY = b"Q" * 32
PEER4 = bytes([10, 9, 0, 2])
PEER6 = bytes.fromhex("fd000009000000000000000000000002")
OWN4 = bytes([10, 9, 0, 1])
OWN6 = bytes.fromhex("fd000009000000000000000000000001")
NET4 = bytes([198, 51, 100, 7])  # TEST-NET-2: never contacted, the exit here has no sockets
NET6 = bytes.fromhex("20010db8000000000000000000000007")
ADDRESSES = ("10.9.0.1/24", "fd00:9::1/64")
TEST_INTERNET = ("198.51.100.0/24", "2001:db8::/32")  # NET4 and NET6 are in there


class Harness:
    """An `Exit` with a fake clock; nothing here opens a socket."""

    def __init__(self, addresses=ADDRESSES, **kw) -> None:
        from tether.netstack.exit import Exit

        kw.setdefault("isn", lambda bits: 0x12345678)
        # The tests' Internet lives in the documentation ranges, which the exit refuses by
        # default: open them as a device file's [Exit] AllowDestinations would. Peer to peer
        # is on unless a test says otherwise.
        kw.setdefault("allow", TEST_INTERNET)
        kw.setdefault("peer_to_peer", True)
        self.x = Exit(addresses, **kw)
        self.now = 1000.0

    def deliver(self, packet: bytes, peer: bytes = PEER_KEY) -> None:
        self.x.receive_packet(peer, packet, self.now)

    def actions(self) -> list:
        return self.x.take_actions()

    def out(self) -> list[bytes]:
        return self.x.take_packets()

    def run_until(self, t: float) -> None:
        """Fire every timer due up to `t`, in order, then set the clock to `t`."""
        for _ in range(100000):
            d = self.x.next_timer()
            if d is None or d > t:
                break
            self.now = max(self.now, d)
            self.x.handle_timer(self.now)
        self.now = t
        self.x.handle_timer(t)


# -- a fake host for TCP flows ---------------------------------------------------------------


class FakeHost:
    """Executes the exit's TCP actions against in-memory 'sockets'; with `auto_connect`, every
    connect succeeds at once."""

    def __init__(self, h: Harness, auto_connect: bool = False) -> None:
        self.h = h
        self.auto_connect = auto_connect
        self.connects: list = []
        self.written: dict = {}
        self.shutdown: set = set()
        self.closed: dict = {}
        self.paused: set = set()
        self.log: list = []
        self.elsewhere: list[bytes] = []

    def run(self) -> None:
        for a in self.h.actions():
            self.log.append(a)
            t = type(a)
            if t is TcpConnect:
                self.connects.append(a.flow)
                if self.auto_connect:
                    self.h.x.receive_tcp_connected(a.flow, self.h.now)
            elif t is TcpWrite:
                assert a.flow not in self.shutdown and a.flow not in self.closed
                self.written.setdefault(a.flow, bytearray()).extend(a.data)
            elif t is TcpShutdown:
                self.shutdown.add(a.flow)
            elif t is TcpClose:
                # Only an abort may follow a clean close (a removed peer's draining socket).
                assert a.flow not in self.closed or (a.abort and self.closed[a.flow] is False)
                self.closed[a.flow] = a.abort
            elif t is TcpPauseReading:
                self.paused.add(a.flow)
            elif t is TcpResumeReading:
                self.paused.discard(a.flow)


def exchange(
    h: Harness, host: FakeHost, client: PeerTcp, packets: list[bytes], rounds=1000, peer=PEER_KEY
):
    """Deliver client packets (from `peer`); feed the exit's output back to the client until
    quiet. Packets for other connections (resets of evicted ones) go to `host.elsewhere`."""
    for _ in range(rounds):
        for p in packets:
            h.deliver(p, peer)
        host.run()
        out = h.out()
        packets = []
        for p in out:
            ip = parse_ip(p)
            if ip.dst == client.src and ip.payload[2:4] == client.sport.to_bytes(2, "big"):
                packets += client.receive(p)
            else:
                host.elsewhere.append(p)
        packets += client.output()
        host.run()
        if not packets and not out:
            return


def open_connection(h, host, client, peer=PEER_KEY):
    before = len(host.connects)
    exchange(h, host, client, [client.syn()], peer=peer)
    (flow,) = host.connects[before:]
    if not host.auto_connect:
        assert client.state == "SYN_SENT"  # no SYN-ACK before the host connected
        h.x.receive_tcp_connected(flow, h.now)
        exchange(h, host, client, [], peer=peer)
    assert client.state == "ESTABLISHED"
    return flow
