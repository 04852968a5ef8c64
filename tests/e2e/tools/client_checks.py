"""Checks run inside the `client` namespace, whose only way out is its WireGuard interface.

    python client_checks.py udp-echo HOST PORT SIZE...      each size echoed back intact
    python client_checks.py tcp-many HOST PORT N BYTES      N concurrent echo connections
    python client_checks.py dns HOST PORT                   an A and an AAAA query answered
    python client_checks.py refused HOST PORT               connect refused, and how fast
    python client_checks.py prohibited HOST PORT            TCP reset, UDP administratively
                                                            prohibited, and how fast
    python client_checks.py churn HOST PORT SECONDS COUNT   back-to-back short connections
    python client_checks.py flood HOST TCPPORT UDPPORT SECONDS   open flows as fast as it can
    python client_checks.py hold HOST TCPPORT UDPPORT NTCP NUDP SECONDS   hold flows open
    python client_checks.py udp-stream HOST PORT LOCALPORT SECONDS   receive a server's stream
    python client_checks.py sniff IFNAME SECONDS PORT...    count packets arriving on IFNAME
    python client_checks.py udp-whoami HOST PORT            the address the server saw us from
    python client_checks.py connect-time HOST PORT N        median TCP connect time (ms)
    python client_checks.py unreachable HOST PORT           TCP connect and a UDP exchange fail,
                                                            and how fast
Prints one JSON line; exits 1 on any failure. Every loop is bounded in time and count.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import struct
import sys
import threading
import time


def family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def udp_echo(host: str, port: int, sizes: list[int]) -> dict:
    sock = socket.socket(family(host), socket.SOCK_DGRAM)
    sock.settimeout(3)
    sock.connect((host, port))
    ok = 0
    for size in sizes:
        payload = os.urandom(size)
        for _attempt in range(3):  # UDP may be lost on the way; that is not a failure of ours
            sock.send(payload)
            try:
                if sock.recv(65535) == payload:
                    ok += 1
                    break
            except TimeoutError:
                continue
        else:
            return {"ok": False, "failed_size": size, "echoed": ok}
    return {"ok": True, "echoed": ok}


def tcp_many(host: str, port: int, n: int, nbytes: int) -> dict:
    results = [None] * n

    def one(i: int) -> None:
        try:
            with socket.create_connection((host, port), timeout=30) as s:
                payload = os.urandom(nbytes)
                s.sendall(payload)
                got = bytearray()
                while len(got) < nbytes:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    got += chunk
                results[i] = bytes(got) == payload
        except OSError as e:
            results[i] = repr(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    good = sum(1 for r in results if r is True)
    return {"ok": good == n, "good": good, "errors": [r for r in results if r is not True][:5]}


def dns(host: str, port: int) -> dict:
    sock = socket.socket(family(host), socket.SOCK_DGRAM)
    sock.settimeout(3)
    answers = {}
    for qtype, name in ((1, "A"), (28, "AAAA")):
        qid = int.from_bytes(os.urandom(2), "big")
        query = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
        query += b"\x07example\x04test\x00" + struct.pack("!HH", qtype, 1)
        for _attempt in range(3):
            sock.sendto(query, (host, port))
            try:
                reply = sock.recv(512)
            except TimeoutError:
                continue
            if reply[:2] == query[:2]:
                rdata = reply[-16:] if qtype == 28 else reply[-4:]
                fam = socket.AF_INET6 if qtype == 28 else socket.AF_INET
                answers[name] = socket.inet_ntop(fam, rdata)
                break
    ok = answers == {"A": "192.0.2.53", "AAAA": "2001:db8::53"}
    return {"ok": ok, "answers": answers}


def connect(host: str, port: int, timeout: float = 10) -> socket.socket:
    """`socket.create_connection`, but a connect that did not happen raises its error. When
    the answer (an ICMP error or a RST) arrives within a fraction of a millisecond, as it may
    from the exit, Linux can let a non-blocking connect report success although no SYN-ACK
    came (a capture shows SYN out, ICMP in, nothing else): such a socket has no peer and its
    SO_ERROR still holds the error."""
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        sock.getpeername()
    except OSError:
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) or errno.ENOTCONN
        sock.close()
        raise OSError(err, os.strerror(err)) from None  # ConnectionRefusedError for a RST
    return sock


def refused(host: str, port: int) -> dict:
    start = time.monotonic()
    try:
        connect(host, port).close()
        return {"ok": False, "error": "connected"}
    except ConnectionRefusedError:
        return {"ok": True, "seconds": time.monotonic() - start}
    except OSError as e:
        return {"ok": False, "error": repr(e), "seconds": time.monotonic() - start}


def prohibited(host: str, port: int) -> dict:
    """What a refused destination looks like from a client: the TCP connection is reset (the
    exit answers the SYN with RST) and a UDP datagram draws an ICMP "administratively
    prohibited", which Linux reports on a connected socket as EHOSTUNREACH (IPv4, code 13) or
    EACCES (IPv6, code 1)."""
    tcp = refused(host, port)
    start = time.monotonic()
    got = udp_probe(host, port, attempts=3, timeout=5)
    if got == "answered":
        udp: dict = {"ok": False, "error": "answered"}
    elif isinstance(got, OSError):
        want = errno.EACCES if ":" in host else errno.EHOSTUNREACH
        udp = {"ok": got.errno == want, "errno": got.errno, "seconds": time.monotonic() - start}
    else:
        udp = {"ok": False}
    return {"ok": tcp["ok"] and udp["ok"], "tcp": tcp, "udp": udp}


def udp_probe(host: str, port: int, attempts: int, timeout: float) -> str | OSError | None:
    """Send a datagram on a connected socket up to `attempts` times: "answered", the error an
    ICMP reply put on the socket, or None when nothing came back."""
    sock = socket.socket(family(host), socket.SOCK_DGRAM)
    sock.settimeout(timeout)
    sock.connect((host, port))
    for _attempt in range(attempts):
        sock.send(b"hello?")
        try:
            sock.recv(2048)
            return "answered"
        except TimeoutError:
            continue
        except OSError as e:
            return e
    return None


def churn(host: str, port: int, seconds: float, count: int) -> dict:
    """Sequential connections: connect, read the server's line until it closes, close. A
    reset or refused connect is a refusal; the rate counts completed connections."""
    ok = refused = errors = 0
    start = time.monotonic()
    while ok + refused + errors < count and time.monotonic() - start < seconds:
        try:
            with socket.create_connection((host, port), timeout=5) as s:
                got = b""
                while chunk := s.recv(64):
                    got += chunk
            if got == b"hello\n":
                ok += 1
            else:
                errors += 1
        except (ConnectionRefusedError, ConnectionResetError):
            refused += 1
        except OSError:
            errors += 1
    elapsed = time.monotonic() - start
    return {"ok": refused == errors == 0, "connections": ok, "refused": refused,
            "errors": errors, "seconds": elapsed, "rate": ok / elapsed}  # fmt: skip


def flood(host: str, tcp_port: int, udp_port: int, seconds: float) -> dict:
    """Open flows as fast as one loop can: each round a TCP connect (kept open, the oldest
    closed beyond 2,000) and a UDP datagram from a fresh socket to one of 1,000 ports."""
    held: list[socket.socket] = []
    connects = refusals = udp = 0
    start = time.monotonic()
    fam = family(host)
    for i in range(1_000_000):
        if time.monotonic() - start > seconds:
            break
        with socket.socket(fam, socket.SOCK_DGRAM) as u:
            try:
                u.sendto(b"flood", (host, udp_port + i % 1000))
                udp += 1
            except OSError:
                pass
        t = socket.socket(fam, socket.SOCK_STREAM)
        t.settimeout(1)
        try:
            t.connect((host, tcp_port))
            connects += 1
            held.append(t)
        except OSError:
            refusals += 1
            t.close()
        if len(held) > 2000:
            held.pop(0).close()
    for t in held:
        t.close()
    return {"ok": True, "connects": connects, "refused": refusals, "udp": udp,
            "seconds": time.monotonic() - start}  # fmt: skip


def hold(host: str, tcp_port: int, udp_port: int, ntcp: int, nudp: int, seconds: float) -> dict:
    """Open `ntcp` connections and `nudp` UDP flows (one datagram each to `udp_port`, from its
    own port), write 256 KiB into each connection (the sink never reads it), and hold
    everything for `seconds` before closing."""
    fam = family(host)
    socks = []
    for _ in range(nudp):
        u = socket.socket(fam, socket.SOCK_DGRAM)
        try:
            u.sendto(b"hold", (host, udp_port))
        except OSError:
            pass
        socks.append(u)
    tcp = 0
    for _ in range(ntcp):
        t = socket.socket(fam, socket.SOCK_STREAM)
        t.settimeout(5)
        try:
            t.connect((host, tcp_port))
            t.setblocking(False)
            try:
                t.send(bytes(256 * 1024))
            except BlockingIOError:
                pass
            tcp += 1
        except OSError:
            pass
        socks.append(t)
    print(json.dumps({"holding": True, "tcp": tcp, "udp": nudp}), flush=True)
    time.sleep(seconds)
    for sock in socks:
        sock.close()
    return {"ok": True, "tcp": tcp, "udp": nudp}


def udp_stream(host: str, port: int, local_port: int, seconds: float) -> dict:
    """Start the server's stream from a fixed local port and count what arrives."""
    sock = socket.socket(family(host), socket.SOCK_DGRAM)
    sock.bind(("", local_port))
    sock.settimeout(0.5)
    sock.sendto(b"start", (host, port))
    got = 0
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        try:
            sock.recv(65535)
            got += 1
            if got == 1:
                print(json.dumps({"streaming": True}), flush=True)
        except TimeoutError:
            continue
    return {"ok": got > 0, "datagrams": got}


def sniff(ifname: str, seconds: float, ports: list[int]) -> dict:
    """Count IP packets arriving on a (layer 3) interface, and those to the given TCP/UDP
    destination ports (AF_PACKET: sees what the tunnel delivers before any socket does)."""
    eth_p_all = 0x0003
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(eth_p_all))
    sock.bind((ifname, 0))
    sock.settimeout(0.2)
    packets = matched = matched_bytes = 0
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        try:
            data, addr = sock.recvfrom(65535)
        except TimeoutError:
            continue
        if addr[2] == socket.PACKET_OUTGOING or not data:
            continue
        packets += 1
        if data[0] >> 4 == 4:
            proto, off = data[9], (data[0] & 15) * 4
        else:
            proto, off = data[6], 40
        dport = int.from_bytes(data[off + 2 : off + 4], "big") if len(data) >= off + 4 else 0
        if proto in (6, 17) and dport in ports:
            matched += 1
            matched_bytes += len(data)
    return {"ok": True, "packets": packets, "matched": matched, "matched_bytes": matched_bytes}


def udp_whoami(host: str, port: int) -> dict:
    sock = socket.socket(family(host), socket.SOCK_DGRAM)
    sock.settimeout(3)
    sock.connect((host, port))
    for _attempt in range(3):
        sock.send(b"who?")
        try:
            return {"ok": True, "seen": sock.recv(512).decode()}
        except TimeoutError:
            continue
    return {"ok": False, "error": "no answer"}


def connect_time(host: str, port: int, n: int) -> dict:
    """N sequential connects (each closed at once); their median time in milliseconds."""
    times = []
    for _ in range(n):
        start = time.perf_counter()
        with socket.create_connection((host, port), timeout=10):
            times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return {"ok": True, "median_ms": times[len(times) // 2], "n": n}


def unreachable(host: str, port: int) -> dict:
    """What a failed egress looks like from a client: the TCP connect fails (reset or ICMP
    unreachable, not a timeout) and a UDP exchange gets no answer or an ICMP error."""
    start = time.monotonic()
    try:
        connect(host, port).close()
        tcp = {"ok": False, "error": "connected"}
    except TimeoutError:
        tcp = {"ok": False, "error": "timed out"}
    except OSError as e:
        tcp = {"ok": True, "errno": e.errno, "seconds": time.monotonic() - start}
    got = udp_probe(host, port, attempts=2, timeout=2)
    if got == "answered":
        udp: dict = {"ok": False, "error": "answered"}
    elif isinstance(got, OSError):
        udp = {"ok": True, "errno": got.errno}
    else:
        udp = {"ok": True, "error": "no answer"}
    return {"ok": tcp["ok"] and udp["ok"], "tcp": tcp, "udp": udp}


def main() -> int:
    cmd, host, port, *rest = sys.argv[1:]
    port = float(port) if cmd == "sniff" else int(port)
    if cmd == "udp-echo":
        result = udp_echo(host, port, [int(x) for x in rest])
    elif cmd == "tcp-many":
        result = tcp_many(host, port, int(rest[0]), int(rest[1]))
    elif cmd == "dns":
        result = dns(host, port)
    elif cmd == "refused":
        result = refused(host, port)
    elif cmd == "prohibited":
        result = prohibited(host, port)
    elif cmd == "churn":
        result = churn(host, port, float(rest[0]), int(rest[1]))
    elif cmd == "flood":
        result = flood(host, port, int(rest[0]), float(rest[1]))
    elif cmd == "hold":
        result = hold(host, port, int(rest[0]), int(rest[1]), int(rest[2]), float(rest[3]))
    elif cmd == "udp-stream":
        result = udp_stream(host, port, int(rest[0]), float(rest[1]))
    elif cmd == "sniff":  # IFNAME SECONDS PORT...
        result = sniff(host, float(port), [int(p) for p in rest])
    elif cmd == "udp-whoami":
        result = udp_whoami(host, port)
    elif cmd == "connect-time":
        result = connect_time(host, port, int(rest[0]))
    elif cmd == "unreachable":
        result = unreachable(host, port)
    else:
        raise SystemExit(f"unknown check {cmd}")
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
