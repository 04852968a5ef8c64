"""The SOCKS5 client an exit flow goes through when its egress is an upstream proxy: one
negotiation (RFC 1928) with optional user name and password (RFC 1929), sans-IO, and the UDP
relay's datagram framing (RFC 1928 §7).

    client = SocksClient(CONNECT, "198.51.100.7", 443, (b"alice", b"pw"), now, timeout=10.0)
    sock.send(client.take_data())               # once the TCP connection to the proxy is up
    client.receive_data(sock.recv(...), now)    # b"" when the proxy closed the connection
    client.next_timer() / client.handle_timer(now)
    client.result  -> None (still talking) | SocksReady | SocksFailed

The messages themselves are socksio's (a sans-IO SOCKS library: it builds each request and
parses each reply); what it leaves to its caller is done here: cutting the proxy's byte stream
into whole replies (TCP may split or join them; a CONNECT reply may arrive together with the
destination's first bytes, which `SocksReady.leftover` hands on), the order of the exchange,
a deadline, what each outcome means for the flow, and the UDP datagram header, which socksio
does not implement.

Outcomes are what a host socket would have reported, so the exit treats a proxied flow like a
direct one: the proxy's reply codes become the errno a failed `connect()` gives (05 refused →
ECONNREFUSED, which the exit answers with RST; 03/04 network/host unreachable → ENETUNREACH /
EHOSTUNREACH → ICMP unreachable; 02 not allowed by ruleset → EACCES → ICMP administratively
prohibited). A failure of the proxy itself (no answer, a closed connection, refused
credentials, a protocol violation) is `proxy_fault`: the egress is down, and the flow fails
with ENETUNREACH — never over the host's own connection (fail closed).
"""

from __future__ import annotations

import errno
from typing import NamedTuple

from socksio.exceptions import ProtocolError
from socksio.socks5 import (
    SOCKS5AuthMethod,
    SOCKS5AuthMethodsRequest,
    SOCKS5Command,
    SOCKS5CommandRequest,
    SOCKS5Connection,
    SOCKS5UsernamePasswordRequest,
)

__all__ = [
    "CONNECT",
    "PROXY_DOWN",
    "UDP_ASSOCIATE",
    "SocksClient",
    "SocksFailed",
    "SocksReady",
    "UdpRelayed",
    "parse_udp_datagram",
    "udp_header",
]

CONNECT = SOCKS5Command.CONNECT
UDP_ASSOCIATE = SOCKS5Command.UDP_ASSOCIATE
PROXY_DOWN = errno.ENETUNREACH  # what a flow reports when the proxy itself failed

_ATYP_IPV4, _ATYP_DOMAIN, _ATYP_IPV6 = 1, 3, 4
_ADDR_LEN = {_ATYP_IPV4: 4, _ATYP_IPV6: 16}

# reply code → (errno of the equivalent connect() failure, what it means)
REPLY_ERRNO = {
    0x01: (errno.EHOSTUNREACH, "general SOCKS server failure"),
    0x02: (errno.EACCES, "connection not allowed by ruleset"),
    0x03: (errno.ENETUNREACH, "network unreachable"),
    0x04: (errno.EHOSTUNREACH, "host unreachable"),
    0x05: (errno.ECONNREFUSED, "connection refused"),
    0x06: (errno.ETIMEDOUT, "TTL expired"),
    0x07: (errno.ENETUNREACH, "command not supported"),
    0x08: (errno.ENETUNREACH, "address type not supported"),
}


class SocksReady(NamedTuple):
    """The proxy did it: for CONNECT the connection to the destination is made; for UDP
    ASSOCIATE `bound` is the relay to send datagrams to. `leftover`: bytes the proxy sent after
    its reply (the destination's, for CONNECT), to be handled as if read afterwards."""

    bound: tuple[str, int]
    leftover: bytes


class SocksFailed(NamedTuple):
    """`err`: the errno the flow fails with; `reason`: one line for the log (never a
    password); `proxy_fault`: the proxy itself failed (the egress is down), rather than the
    destination it tried to reach."""

    err: int
    reason: str
    proxy_fault: bool


_AUTH, _USERPASS, _COMMAND, _DONE = range(4)


class SocksClient:
    """One SOCKS5 negotiation over one TCP connection to the proxy (module docstring).

    `host` is the destination (an IP address as text; for UDP ASSOCIATE the address and port
    the datagrams will come from, `0.0.0.0`/0 when unknown); `credentials` (user name,
    password) are offered besides "no authentication" when given. The deadline (`now +
    timeout`) covers everything from the start: the TCP connect, which the shell makes, too.
    With `command` None the client only authenticates (a health probe of the proxy): it is
    ready, with no bound address, once the proxy accepted it."""

    __slots__ = (
        "_conn", "_credentials", "_request", "_buffer", "_stage", "_deadline", "_connect_timeout",
        "_now", "result",
    )  # fmt: skip

    def __init__(
        self,
        command: SOCKS5Command | None,
        host: str,
        port: int,
        credentials: tuple[bytes, bytes] | None,
        now: float,
        *,
        timeout: float = 10.0,
        connect_timeout: float | None = None,
    ) -> None:
        self._conn = SOCKS5Connection()
        self._credentials = credentials
        self._request = (
            SOCKS5CommandRequest.from_address(command, (host, port)) if command else None
        )
        self._buffer = bytearray()
        self._stage = _AUTH
        self._deadline = now + timeout
        self._connect_timeout = connect_timeout
        self._now = now
        self.result: SocksReady | SocksFailed | None = None
        methods = [SOCKS5AuthMethod.NO_AUTH_REQUIRED]
        if credentials is not None:
            methods.append(SOCKS5AuthMethod.USERNAME_PASSWORD)
        self._conn.send(SOCKS5AuthMethodsRequest(methods))

    def take_data(self) -> bytes:
        """Bytes to send to the proxy now (b"" when there are none)."""
        return self._conn.data_to_send()

    def next_timer(self) -> float | None:
        """The negotiation's deadline while it runs."""
        return self._deadline if self.result is None else None

    def handle_timer(self, now: float) -> None:
        """The deadline passed. Before the proxy has accepted us, that is the proxy's fault;
        after, a CONNECT is waiting for the destination, which may simply not answer (a host
        that drops SYNs): that fails this flow like a direct connect timeout, and must not
        mark the proxy down, or any peer could take the egress down for every other one by
        connecting to such a host."""
        if self.result is None and now >= self._deadline:
            if self._stage == _COMMAND and self._is_connect():
                self._fail(
                    "the destination did not answer through the proxy in time",
                    fault=False,
                    err=errno.ETIMEDOUT,
                )
            else:
                self._fail("the proxy did not answer in time", fault=True)

    def _is_connect(self) -> bool:
        return self._request is not None and self._request.command == CONNECT

    def receive_data(self, data: bytes | bytearray | memoryview, now: float) -> None:
        """Bytes read from the proxy; b"" means it closed the connection. Never raises: a
        malformed reply ends the negotiation as a `SocksFailed`."""
        if self.result is not None:
            return
        self._now = now
        if not data:
            self._fail("the proxy closed the connection during the SOCKS negotiation", fault=True)
            return
        self._buffer += data
        try:
            while self.result is None and self._step():
                pass
        except (ProtocolError, ValueError) as e:
            self._fail(f"the proxy's answer is not SOCKS5 ({e})", fault=True)

    # -- the exchange ------------------------------------------------------------------------

    def _step(self) -> bool:
        """Handle one whole reply from the buffer; False when more bytes are needed."""
        buf = self._buffer
        if self._stage == _AUTH:
            if len(buf) < 2:
                return False
            reply = self._take(2)
            if reply[0] != 5:
                raise ProtocolError(f"version {reply[0]} in the method selection")
            method = self._conn.receive_data(reply).method
            if method == SOCKS5AuthMethod.NO_AUTH_REQUIRED:
                self._send_command()
            elif method == SOCKS5AuthMethod.USERNAME_PASSWORD and self._credentials:
                user, password = self._credentials
                self._conn.send(SOCKS5UsernamePasswordRequest(user, password))
                self._stage = _USERPASS
            elif method == SOCKS5AuthMethod.NO_ACCEPTABLE_METHODS:
                wanted = "" if self._credentials else " (does it need a user name and password?)"
                self._fail(f"the proxy accepts none of our authentication methods{wanted}", True)
            else:
                raise ProtocolError(f"it chose method {reply[1]}, which we did not offer")
            return True
        if self._stage == _USERPASS:
            if len(buf) < 2:
                return False
            reply = self._take(2)
            # RFC 1929 answers with version 1; some servers say 5. Only the status counts, as
            # curl and others read it.
            if self._conn.receive_data(b"\x01" + reply[1:]).success:
                self._send_command()
            else:
                self._fail("the proxy refused our user name and password", fault=True)
            return True
        # _COMMAND: VER REP RSV ATYP BND.ADDR BND.PORT, BND.ADDR's length set by ATYP
        if len(buf) < 5:
            return False
        atyp = buf[3]
        if atyp == _ATYP_DOMAIN:
            size = 4 + 1 + buf[4] + 2
        elif atyp in _ADDR_LEN:
            size = 4 + _ADDR_LEN[atyp] + 2
        else:
            raise ProtocolError(f"address type {atyp} in the reply")
        if len(buf) < size:
            return False
        if buf[0] != 5:
            raise ProtocolError(f"version {buf[0]} in the reply")
        code = buf[1]
        if code != 0 and code not in REPLY_ERRNO:
            raise ProtocolError(f"reply code {code}")
        raw = self._take(size)
        if atyp == _ATYP_DOMAIN:  # socksio would decode the length byte with the name
            bound = (raw[5:-2].decode("ascii", "replace"), int.from_bytes(raw[-2:], "big"))
        else:
            reply = self._conn.receive_data(raw)
            bound = (reply.addr, reply.port)
        if code == 0:
            self._stage = _DONE
            self.result = SocksReady(bound, bytes(self._buffer))
            self._buffer.clear()
        else:
            err, meaning = REPLY_ERRNO[code]
            self._fail(f"the proxy answered {code:02x}: {meaning}", fault=False, err=err)
        return True

    def _take(self, n: int) -> bytes:
        chunk = bytes(self._buffer[:n])
        del self._buffer[:n]
        return chunk

    def _send_command(self) -> None:
        if self._request is None:  # a probe: authenticated is all it wanted to know
            self._stage = _DONE
            self.result = SocksReady(("", 0), bytes(self._buffer))
            return
        self._conn.send(self._request)
        self._stage = _COMMAND
        if self._connect_timeout is not None and self._is_connect():
            # Authenticated: from here on the wait is for the destination, which gets as long
            # as a direct connect would (`connect_timeout`), not the proxy's own deadline.
            self._deadline = self._now + self._connect_timeout

    def _fail(self, reason: str, fault: bool, err: int = PROXY_DOWN) -> None:
        self._stage = _DONE
        self._buffer.clear()
        self.result = SocksFailed(err, reason, fault)


# -- UDP ASSOCIATE datagrams (RFC 1928 §7) -------------------------------------------------------


class UdpRelayed(NamedTuple):
    """A datagram from the relay: who sent it (`atyp` 1 or 4: `addr` is the packed address; 3:
    a domain name, as bytes) and where its payload starts. `frag` other than 0 is a fragment
    (we send none, and drop those we get, as §7 allows)."""

    frag: int
    atyp: int
    addr: bytes
    port: int
    offset: int


def udp_header(addr: bytes, port: int) -> bytes:
    """RSV FRAG ATYP DST.ADDR DST.PORT for a datagram to the packed IPv4 or IPv6 `addr`."""
    atyp = _ATYP_IPV4 if len(addr) == 4 else _ATYP_IPV6
    return bytes((0, 0, 0, atyp)) + addr + port.to_bytes(2, "big")


def parse_udp_datagram(data: bytes | bytearray | memoryview) -> UdpRelayed:
    """The header of a datagram from the relay; ValueError when it is too short or malformed."""
    n = len(data)
    if n < 4:
        raise ValueError("shorter than a SOCKS UDP header")
    atyp = data[3]
    if atyp in _ADDR_LEN:
        end = 4 + _ADDR_LEN[atyp]
        start = 4
    elif atyp == _ATYP_DOMAIN:
        if n < 5:
            raise ValueError("shorter than a SOCKS UDP header")
        start, end = 5, 5 + data[4]
    else:
        raise ValueError(f"address type {atyp}")
    if n < end + 2:
        raise ValueError("shorter than its SOCKS UDP header")
    port = int.from_bytes(data[end : end + 2], "big")
    return UdpRelayed(data[2], atyp, bytes(data[start:end]), port, end + 2)
