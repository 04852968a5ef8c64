"""Fuzz target for the sans-IO exit: arbitrary peer packets and host events, no sockets.

Run: `python fuzz/fuzz_exit.py [corpus_dir] [-max_total_time=60]` (needs atheris).
The contract under test: `Exit.receive_packet` and the host-event methods never raise, whatever
bytes and whatever order events come in; every packet the exit emits parses and fits the MTU;
flow counts and buffer grants stay within their limits and match a recount (`Exit.audit`);
every flow opens with the egress its peer has at that moment (`Exit.set_egress`).

The input is a list of records, each starting with an opcode byte:
  0 raw packet: 2-byte length, then that many bytes, delivered as they are;
  1 structured packet: version/protocol/destination selectors, then a payload, wrapped in an IP
    header with a valid checksum so the fuzzer gets past `parse_ip` into the flow tables;
    for 0 and 1, opcode bits 2-6, when not zero, are first a socket-queue delay in 0.5 ms steps
    (`Exit.receive_queue_delay`, as the device reports with each read), which the TCP windows
    follow;
  2 host event: an event kind and a flow index among the flows the exit has opened;
  3 time: advance the clock by a byte's worth of steps and run the timers; with the opcode's
    bits 2-6 all set instead, the peer is forgotten (removed: all of it; with the top bit, it
    lost 10.9.0.2 only), as the device does when the peer's addresses change; with only bit 2
    set, new destination rules ([Exit] AllowDestinations, DenyDestinations, PeerToPeer)
    chosen by the next byte, and a new egress (bit 3: the device's default is a proxy; bit 4:
    peer B goes direct regardless).
One exit lives across inputs (as in a long-running daemon); its limits are small so they are hit.
The test Internet (198.51.100.0/24, 2001:db8::/32) is always allowed, as a device file would.
"""

from __future__ import annotations

import errno
import struct
import sys

from tether.netstack.exit import EchoSend, Exit, ExitConfig, TcpConnect, UdpOpen
from tether.netstack.wire import build_ipv4, build_ipv6, parse_ip

MTU = 1280
_CFG = ExitConfig(
    max_flows_per_peer=8,
    max_flows=12,
    max_echo_per_peer=4,
    max_buffer=3 << 20,
    max_buffer_per_peer=2 << 20,
)
_INTERNET = ("198.51.100.0/24", "2001:db8::/32")
_ALLOW = ("10.0.0.0/8", "127.0.0.0/8", "::/0", "64:ff9b:1::/48", "169.254.169.254/32")
_DENY = ("198.51.100.7/32", "2001:db8::/32", "10.9.0.0/24")
_EXIT = Exit(
    ["10.9.0.1/24", "fd00:9::1/64"],
    mtu=MTU,
    config=_CFG,
    isn=lambda bits: 7,
    allow=_INTERNET,
    peer_to_peer=True,
)
_FLOWS: list = []
_ECHOES: list[EchoSend] = []
_CLOCK = [1000.0]
_PEERS = (b"A" * 32, b"B" * 32)
_SRC4 = (bytes([10, 9, 0, 2]), bytes([10, 9, 0, 3]))
_SRC6 = (bytes.fromhex("fd000009000000000000000000000002"),)
_DST4 = (bytes([198, 51, 100, 7]), bytes([10, 9, 0, 1]), bytes([10, 9, 0, 3]),
         bytes([127, 0, 0, 1]), bytes([224, 0, 0, 1]), bytes([10, 9, 0, 255]),
         bytes([169, 254, 169, 254]), bytes([192, 168, 1, 1]))  # fmt: skip
_DST6 = (bytes.fromhex("20010db8000000000000000000000007"),
         bytes.fromhex("fd000009000000000000000000000001"), bytes(15) + b"\x01",
         bytes.fromhex("00000000000000000000ffffc6336407"),  # ::ffff:198.51.100.7
         bytes.fromhex("0064ff9b00000000000000000a090003"),  # NAT64 of a tunnel address
         bytes.fromhex("2002c63364070000000000000000000a"),  # 6to4 of 198.51.100.7
         bytes.fromhex("200100000000000000000000f5fffffe"),  # Teredo client 10.0.0.1
         bytes.fromhex("0064ff9b000100000000000000000001"))  # local-use NAT64  # fmt: skip
_PROXY = object()  # the shell's descriptor of an upstream proxy: opaque to the exit
_ERRNOS = (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ETIMEDOUT, errno.EMSGSIZE, errno.EIO,
           errno.EAGAIN)  # fmt: skip


def _collect() -> None:
    for a in _EXIT.take_actions():
        t = type(a)
        if t is UdpOpen or t is TcpConnect:
            _FLOWS.append(a.flow)
            assert a.flow.egress is _EXIT.egress_for(a.flow.peer.key), "flow has a stale egress"
        elif t is EchoSend:
            _ECHOES.append(a)
    del _FLOWS[:-64]
    del _ECHOES[:-16]
    for p in _EXIT.take_packets():
        assert len(p) <= MTU, len(p)
        parse_ip(p)
    _EXIT.audit()


def _host_event(kind: int, index: int, arg: bytes) -> None:
    now = _CLOCK[0]
    if kind % 8 == 7 and _ECHOES:
        e = _ECHOES[index % len(_ECHOES)]
        if kind & 8:  # the shell could not send it: no ping socket, or the send failed
            _EXIT.receive_echo_failed(e.version, None if kind & 16 else errno.EPERM, now)
            return
        src = _DST4[0] if e.version == 4 else _DST6[0]
        _EXIT.receive_echo_reply(e.version, src, e.seq, arg, now)
        return
    if not _FLOWS:
        return
    flow = _FLOWS[index % len(_FLOWS)]
    err = _ERRNOS[index % len(_ERRNOS)]
    if not hasattr(flow, "conn"):
        k = kind % 4
        if k == 0:
            _EXIT.receive_udp_datagram(flow, arg * (1 + kind // 4), now)
        elif k == 1:
            _EXIT.receive_udp_error(flow, err, now, len(arg) * 64)
        elif k == 2:
            _EXIT.receive_udp_open_failed(flow, err, now)
        else:
            _EXIT.receive_udp_closed(flow, now)  # the proxy ended the association
        return
    k = kind % 8
    if k == 0:
        _EXIT.receive_tcp_connected(flow, now)
    elif k == 1:
        _EXIT.receive_tcp_connect_failed(flow, err, now)
    elif k == 2:
        n = _EXIT.tcp_read_budget(flow)
        if n:
            _EXIT.receive_tcp_data(flow, (arg or b"d") * (1 + kind), now)
    elif k == 3:
        _EXIT.receive_tcp_eof(flow, now)
    elif k == 4:
        _EXIT.receive_tcp_reset(flow, now)
    elif k == 5:
        _EXIT.receive_tcp_write_blocked(flow, now)
    else:
        _EXIT.receive_tcp_writable(flow, now)


def _structured(sel: bytes, payload: bytes) -> bytes:
    v6 = sel[0] & 1
    proto = (6, 17, 1, 58, 44, 0, 132, sel[1])[sel[0] >> 1 & 7]
    ttl = (64, 1, 2, 255)[sel[0] >> 4 & 3]
    if v6:
        return build_ipv6(_SRC6[0], _DST6[sel[2] % len(_DST6)], proto, payload, ttl)
    src = _SRC4[sel[0] >> 6 & 1]
    ident, frag = struct.unpack("!HH", sel[3:7]) if len(sel) >= 7 else (0, 0)
    pkt = bytearray(build_ipv4(src, _DST4[sel[2] % len(_DST4)], proto, payload, ttl, ident))
    if sel[0] & 0x80:  # fragment fields from the input, checksum redone
        pkt[6:8] = struct.pack("!H", frag)
        pkt[10:12] = b"\x00\x00"
        s = int.from_bytes(pkt[:20], "big") % 0xFFFF
        pkt[10:12] = struct.pack("!H", (~(s or 0xFFFF)) & 0xFFFF)
    return bytes(pkt)


def TestOneInput(data: bytes) -> None:  # noqa: N802 (atheris' name)
    pos, n = 0, len(data)
    while pos < n:
        op = data[pos]
        pos += 1
        peer = _PEERS[op >> 7]
        kind = op & 3
        if kind < 2 and op >> 2 & 31:
            _EXIT.receive_queue_delay((op >> 2 & 31) * 0.0005, _CLOCK[0])
        if kind == 0:
            if pos + 2 > n:
                break
            (length,) = struct.unpack_from("!H", data, pos)
            pos += 2
            _EXIT.receive_packet(peer, data[pos : pos + length], _CLOCK[0])
            pos += length
        elif kind == 1:
            sel = data[pos : pos + 7]
            pos += 7
            length = data[pos] * 8 if pos < n else 0
            pos += 1
            if len(sel) < 3:
                break
            _EXIT.receive_packet(peer, _structured(sel, data[pos : pos + length]), _CLOCK[0])
            pos += length
        elif kind == 2:
            arg = data[pos + 2 : pos + 2 + (data[pos + 1] & 31 if pos + 1 < n else 0)]
            if pos + 1 < n:
                _host_event(op >> 2 & 31, data[pos], arg)
            pos += 2 + len(arg)
        elif op & 0x7C == 0x7C:
            keep = (lambda src: src != _SRC4[0]) if op & 0x80 else None
            _EXIT.forget_peer(_PEERS[0], _CLOCK[0], keep)
        elif op & 4:
            b = data[pos] if pos < n else 0
            pos += 1
            allow = _INTERNET + tuple(a for i, a in enumerate(_ALLOW) if b >> i & 1)
            deny = tuple(d for i, d in enumerate(_DENY) if b >> (5 + i) & 1)
            _EXIT.set_rules(allow, deny, peer_to_peer=not op & 0x80)
            per_peer = {_PEERS[1]: None} if op & 16 else {}
            _EXIT.set_egress(_PROXY if op & 8 else None, per_peer)
        else:
            step = data[pos] if pos < n else 1
            pos += 1
            _CLOCK[0] += step * (0.01 if op & 0x80 else 1.0)
            _EXIT.handle_timer(_CLOCK[0])
        _collect()


if __name__ == "__main__":
    import atheris

    atheris.instrument_all()
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()
