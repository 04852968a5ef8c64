"""Checks run inside the `client` namespace, whose only way out is its WireGuard interface.

    python client_checks.py udp-echo HOST PORT SIZE...      each size echoed back intact
    python client_checks.py tcp-many HOST PORT N BYTES      N concurrent echo connections
    python client_checks.py dns HOST PORT                   an A and an AAAA query answered
    python client_checks.py refused HOST PORT               connect refused, and how fast
    python client_checks.py prohibited HOST PORT            TCP reset, UDP administratively
                                                            prohibited, and how fast
Prints one JSON line; exits 1 on any failure.
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


def refused(host: str, port: int) -> dict:
    start = time.monotonic()
    try:
        socket.create_connection((host, port), timeout=10).close()
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
    sock = socket.socket(family(host), socket.SOCK_DGRAM)
    sock.settimeout(5)
    sock.connect((host, port))
    start = time.monotonic()
    udp: dict = {"ok": False}
    for _attempt in range(3):
        sock.send(b"hello?")
        try:
            sock.recv(2048)
            udp = {"ok": False, "error": "answered"}
            break
        except TimeoutError:
            continue
        except OSError as e:
            want = errno.EACCES if ":" in host else errno.EHOSTUNREACH
            udp = {"ok": e.errno == want, "errno": e.errno, "seconds": time.monotonic() - start}
            break
    return {"ok": tcp["ok"] and udp["ok"], "tcp": tcp, "udp": udp}


def main() -> int:
    cmd, host, port, *rest = sys.argv[1:]
    port = int(port)
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
    else:
        raise SystemExit(f"unknown check {cmd}")
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
