"""Fuzz target: the SOCKS5 client's reply parser (tether.netstack.exit.socks) and the UDP
ASSOCIATE datagram header parser — the two places where bytes from an upstream proxy are read.

Run: `make fuzz TARGET=socks SECONDS=300` (see fuzz/README.md).

The first input byte picks the mode: a negotiation (the rest is the proxy's answer, cut into
chunks at positions the input also chooses, with or without credentials, CONNECT or UDP
ASSOCIATE) or one relay datagram. Whatever the bytes:
- `SocksClient.receive_data` never raises; it ends in at most one result, never changes it;
- a `SocksReady` hands on exactly the bytes after the reply (a suffix of what was fed), and its
  bound port is a port; a `SocksFailed` carries a known errno and a reason free of the password;
- `parse_udp_datagram` raises nothing but ValueError, and what it accepts fits in the datagram.
"""

from __future__ import annotations

import errno
import sys

from tether.netstack.exit.socks import (
    CONNECT,
    PROXY_DOWN,
    REPLY_ERRNO,
    UDP_ASSOCIATE,
    SocksClient,
    SocksFailed,
    SocksReady,
    parse_udp_datagram,
)

_PASSWORD = b"pw-Fz7q"
_ERRNOS = {PROXY_DOWN} | {err for err, _ in REPLY_ERRNO.values()}
assert errno.ECONNREFUSED in _ERRNOS


def TestOneInput(data: bytes) -> None:
    if len(data) < 2:
        return
    if data[0] & 1:
        _datagram(data[1:])
    else:
        _negotiation(data[0], data[1], data[2:])


def _negotiation(flags: int, step: int, answer: bytes) -> None:
    creds = (b"user", _PASSWORD) if flags & 2 else None
    command = UDP_ASSOCIATE if flags & 4 else CONNECT
    host = "2001:db8::1" if flags & 8 else "198.51.100.7"
    client = SocksClient(command, host, 443, creds, 0.0)
    client.take_data()
    chunk = 1 + step % 13
    fed = 0
    first = None
    for i in range(0, len(answer) + 1, chunk):
        piece = answer[i : i + chunk]
        if not piece and flags & 16 == 0:
            break  # sometimes no EOF at the end
        client.receive_data(piece, 0.0)
        client.take_data()
        if client.result is not None and first is None:
            first = client.result
            fed = i + len(piece)
        if client.result is not first:
            raise AssertionError("the result changed")
    client.handle_timer(100.0)
    result = client.result
    if result is None:
        raise AssertionError("no result after the deadline")
    if isinstance(result, SocksReady):
        if result is not first:
            raise AssertionError("ready only after the deadline")
        if not answer[:fed].endswith(result.leftover):
            raise AssertionError("leftover is not what followed the reply")
        if not 0 <= result.bound[1] <= 65535:
            raise AssertionError("bound port out of range")
    elif isinstance(result, SocksFailed):
        if result.err not in _ERRNOS:
            raise AssertionError(f"unexpected errno {result.err}")
        if _PASSWORD.decode() in result.reason:
            raise AssertionError("the password shows in a reason")
    else:
        raise AssertionError(f"unexpected result {result!r}")


def _datagram(data: bytes) -> None:
    try:
        d = parse_udp_datagram(data)
    except ValueError:
        return
    if not 4 <= d.offset <= len(data):
        raise AssertionError("payload offset outside the datagram")
    if d.atyp not in (1, 3, 4) or (d.atyp != 3 and len(d.addr) != (4 if d.atyp == 1 else 16)):
        raise AssertionError("address does not fit its type")


def main() -> None:
    import atheris

    atheris.instrument_all()
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
