"""The cross-platform userspace API (wireguard.com/xplatform) as a sans-IO codec.

`wg(8)` talks to userspace implementations over `/var/run/wireguard/<name>.sock` with a line
protocol: `get=1` or `set=1`, `key=value` lines, an empty line to finish; replies are `key=value`
lines ending in `errno=N` and an empty line. Speaking it makes stock `wg show`, `wg set`,
`wg setconf` and `wg syncconf` work against our devices, so the codec follows wireguard-go's
`device/uapi.go` wherever the two could differ observably:

- Errors carry wireguard-go's errno: EPROTO only for a line without `=` (and an unknown operation,
  which closes the connection without a reply); EINVAL for every bad key or value, including a
  `protocol_version` other than 1 and a device key after the first `public_key`; EIO for a line
  longer than Go's bufio.Scanner accepts (64 KiB). wireguard-go has no request size limit; ours
  answers EMSGSIZE so that a client cannot make us buffer without bound.
- On the wire the number is negated (`errno=-22`), as wireguard-go writes it: wireguard-tools
  stores the value of a set reply as its return code and reports `errno = -value`, so `errno=22`
  would print "Unknown error -22". (Its get parser accepts only digits, but a get has no errors
  short of the connection breaking.) `UapiError.errno` is the positive number; `format_errno`
  negates it.
- A set is parsed completely before anything is applied, so the device layer can apply it
  atomically, where wireguard-go applies line by line and leaves a half-applied device on error.
  Parsing therefore folds each peer section into order-free fields: `remove=true` anywhere removes
  the peer and ignores its other lines; `update_only=true` anywhere means "only if the peer
  exists"; `replace_allowed_ips=true` discards the `allowed_ip` lines before it. Values on ignored
  lines are still validated, as wireguard-go does. For every order wg writes this is exactly
  wireguard-go's outcome; only a contrived order differs: an `allowed_ip` line followed in the same
  section by one of those three would, in wireguard-go, still take the prefix away from its old
  owner before being discarded. Here a discarded line has no effect at all.
- The device layer, not this module, must treat a peer whose public key is the device's own as a
  no-op (wireguard-go's "dummy" peer), an all-zero private key as "no private key" and an all-zero
  preshared key as "no preshared key". Private keys arrive already clamped, as wireguard-go stores
  them, so a `get` reports the key the device actually uses.
- A get reply lists keys in wireguard-go's order: private_key (only when set), listen_port and
  fwmark (only when nonzero), then per peer public_key, preshared_key (always, zero when unset),
  protocol_version, endpoint (only when known), the handshake time, tx_bytes, rx_bytes,
  persistent_keepalive_interval (always) and one allowed_ip per prefix.
"""

from __future__ import annotations

import errno as _errno
import ipaddress
import re
from dataclasses import dataclass, field

from tether import keys

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

EPROTO = _errno.EPROTO
EINVAL = _errno.EINVAL
EIO = _errno.EIO
EMSGSIZE = _errno.EMSGSIZE
EADDRINUSE = _errno.EADDRINUSE  # for the device layer: listen_port or fwmark could not be bound

# Go's bufio.Scanner gives up on a line that does not fit its 64 KiB buffer with the newline.
MAX_LINE_BYTES = 64 * 1024 - 1
MAX_REQUEST_BYTES = 16 * 1024 * 1024
ZERO_KEY = bytes(32)

_HEX_KEY = re.compile(r"[0-9a-fA-F]{64}")
_DIGITS = re.compile(r"[0-9]+")
_PREFIX_BITS = re.compile(r"0|[1-9][0-9]{0,2}")


class UapiError(Exception):
    """A request the device must refuse; `errno` is positive, `reply` False means just hang up."""

    def __init__(self, errno: int, message: str, *, reply: bool = True) -> None:
        super().__init__(message)
        self.errno = errno
        self.reply = reply


def _invalid(message: str) -> UapiError:
    return UapiError(EINVAL, message)


@dataclass(frozen=True, slots=True)
class Endpoint:
    address: IPAddress
    port: int

    def __str__(self) -> str:
        if self.address.version == 6:
            return f"[{_address_text(self.address)}]:{self.port}"
        return f"{self.address}:{self.port}"


@dataclass(frozen=True, slots=True)
class AllowedIPChange:
    """One `allowed_ip` line: add the prefix to the peer, or with `remove`, take it away."""

    network: Network
    remove: bool = False


@dataclass(slots=True)
class PeerOp:
    """Everything one `public_key=` section asks for; None means "leave unchanged"."""

    public_key: bytes
    remove: bool = False
    update_only: bool = False
    preshared_key: bytes | None = None
    endpoint: Endpoint | None = None
    persistent_keepalive_interval: int | None = None
    replace_allowed_ips: bool = False
    allowed_ips: list[AllowedIPChange] = field(default_factory=list)


@dataclass(slots=True)
class SetRequest:
    """A whole `set=1` request; peers are applied in order after the device fields."""

    private_key: bytes | None = None
    listen_port: int | None = None
    fwmark: int | None = None
    replace_peers: bool = False
    peers: list[PeerOp] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class GetRequest:
    pass


@dataclass(slots=True)
class PeerSnapshot:
    public_key: bytes
    preshared_key: bytes | None = None
    protocol_version: int = 1
    endpoint: Endpoint | None = None
    last_handshake_time_sec: int = 0
    last_handshake_time_nsec: int = 0
    tx_bytes: int = 0
    rx_bytes: int = 0
    persistent_keepalive_interval: int = 0
    allowed_ips: list[Network] = field(default_factory=list)


@dataclass(slots=True)
class DeviceSnapshot:
    """What a `get` reports; the device layer fills it under its own locking."""

    private_key: bytes | None = None
    listen_port: int = 0
    fwmark: int = 0
    peers: list[PeerSnapshot] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Values


def _address_text(address: IPAddress) -> str:
    # Go prints an IPv4-mapped IPv6 address with a dotted tail; CPython before 3.13 does not.
    if address.version == 6 and address.ipv4_mapped is not None:
        text = f"::ffff:{address.ipv4_mapped}"
        return f"{text}%{address.scope_id}" if address.scope_id else text
    return str(address)


def _network_text(network: Network) -> str:
    return f"{_address_text(network.network_address)}/{network.prefixlen}"


def parse_hex_key(name: str, value: str) -> bytes:
    if not _HEX_KEY.fullmatch(value):
        raise _invalid(f"{name}: a key is 64 hex digits")
    return bytes.fromhex(value)


def parse_uint(name: str, value: str, bits: int) -> int:
    # Go's ParseUint: ASCII digits only (no sign, space or underscore), any number of leading
    # zeros. Strip those before int() so a long run of zeros cannot trip CPython's digit limit.
    if not _DIGITS.fullmatch(value):
        raise _invalid(f"{name}: not an unsigned decimal number")
    significant = value.lstrip("0")
    if len(significant) > 20 or int(significant or "0") >> bits:
        raise _invalid(f"{name}: out of range")
    return int(significant or "0")


def _parse_true(name: str, value: str) -> None:
    if value != "true":
        raise _invalid(f"{name}: the only value is 'true'")


def _parse_address(text: str) -> IPAddress:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise _invalid(f"not an IP address: {text!r}") from None


def parse_endpoint(value: str) -> Endpoint:
    """`a.b.c.d:port` or `[v6%zone]:port`, numeric only, as Go's netip.ParseAddrPort."""
    host, colon, port = value.rpartition(":")
    if not colon or not host or not port:
        raise _invalid(f"endpoint {value!r}: expected address:port")
    bracketed = host[0] == "["
    if bracketed:
        if len(host) < 2 or host[-1] != "]":
            raise _invalid(f"endpoint {value!r}: missing ]")
        host = host[1:-1]
    number = parse_uint("endpoint port", port, 16)
    address = _parse_address(host)
    if bracketed != (address.version == 6):
        raise _invalid(f"endpoint {value!r}: brackets go around IPv6 addresses and only those")
    return Endpoint(address, number)


def parse_prefix(value: str) -> Network:
    """`addr/bits` as Go's netip.ParsePrefix; host bits are then masked off, as Insert does."""
    host, slash, bits = value.rpartition("/")
    if not slash:
        raise _invalid(f"allowed_ip {value!r}: no '/'")
    address = _parse_address(host)
    if address.version == 6 and address.scope_id is not None:
        raise _invalid(f"allowed_ip {value!r}: a prefix has no zone")
    if not _PREFIX_BITS.fullmatch(bits) or int(bits) > address.max_prefixlen:
        raise _invalid(f"allowed_ip {value!r}: bad prefix length")
    return ipaddress.ip_network((address, int(bits)), strict=False)


# ---------------------------------------------------------------------------------------------
# Requests


class _SetParser:
    """Folds the lines of one set request into a SetRequest."""

    __slots__ = ("request", "peer")

    def __init__(self) -> None:
        self.request = SetRequest()
        self.peer: PeerOp | None = None

    def line(self, line: str) -> None:
        key, equals, value = line.partition("=")
        if not equals:
            raise UapiError(EPROTO, f"line without '=': {line[:64]!r}")
        if key == "public_key":
            self.peer = PeerOp(parse_hex_key(key, value))
            self.request.peers.append(self.peer)
        elif self.peer is None:
            self._device_line(key, value)
        else:
            self._peer_line(self.peer, key, value)

    def _device_line(self, key: str, value: str) -> None:
        request = self.request
        if key == "private_key":
            secret = parse_hex_key(key, value)
            request.private_key = secret if secret == ZERO_KEY else keys.clamp(secret)
        elif key == "listen_port":
            request.listen_port = parse_uint(key, value, 16)
        elif key == "fwmark":
            request.fwmark = parse_uint(key, value, 32)
        elif key == "replace_peers":
            _parse_true(key, value)
            request.replace_peers = True
        else:
            raise _invalid(f"invalid device key {key[:64]!r}")

    def _peer_line(self, peer: PeerOp, key: str, value: str) -> None:
        # Every value is checked even when the peer is being removed: wireguard-go validates before
        # it looks at whether the peer is a placeholder.
        removed = peer.remove
        if key == "update_only":
            _parse_true(key, value)
            if not removed:
                peer.update_only = True
        elif key == "remove":
            _parse_true(key, value)
            self.peer = PeerOp(peer.public_key, remove=True)
            self.request.peers[-1] = self.peer
        elif key == "preshared_key":
            psk = parse_hex_key(key, value)
            if not removed:
                peer.preshared_key = psk
        elif key == "endpoint":
            endpoint = parse_endpoint(value)
            if not removed:
                peer.endpoint = endpoint
        elif key == "persistent_keepalive_interval":
            interval = parse_uint(key, value, 16)
            if not removed:
                peer.persistent_keepalive_interval = interval
        elif key == "replace_allowed_ips":
            _parse_true(key, value)
            if not removed:
                peer.replace_allowed_ips = True
                peer.allowed_ips.clear()
        elif key == "allowed_ip":
            drop = value.startswith("-")
            network = parse_prefix(value[1:] if drop else value)
            if not removed:
                peer.allowed_ips.append(AllowedIPChange(network, drop))
        elif key == "protocol_version":
            if value != "1":
                raise _invalid(f"unsupported protocol_version {value[:64]!r}")
        else:
            raise _invalid(f"invalid peer key {key[:64]!r}")


_IDLE, _GET, _SET, _CLOSED = range(4)


class RequestReader:
    """Reads the requests of one UAPI connection from bytes as they arrive.

    `feed` returns the requests completed so far. A refused request appears as a `UapiError` in
    that list (not raised, so the requests before it are not lost) and ends the conversation: the
    caller replies with `format_errno(error.errno)` when `error.reply` is true, then closes.
    wireguard-go carries on after some errors, but what it then reads is the rest of the broken
    request, which it rejects as an operation and closes; wg opens one connection per request.
    """

    def __init__(self, *, max_request_bytes: int = MAX_REQUEST_BYTES) -> None:
        self._buffer = bytearray()
        self._scanned = 0  # no newline in _buffer before this offset
        self._state = _IDLE
        self._set: _SetParser | None = None
        self._request_bytes = 0
        self._max_request_bytes = max_request_bytes

    @property
    def closed(self) -> bool:
        return self._state == _CLOSED

    @property
    def pending(self) -> bool:
        """Whether part of a request has been read but not completed."""
        return bool(self._buffer) or self._state in (_GET, _SET)

    def feed(self, data: bytes) -> list[GetRequest | SetRequest | UapiError]:
        if self._state == _CLOSED:
            return []
        self._buffer += data
        events: list[GetRequest | SetRequest | UapiError] = []
        try:
            self._drain(events)
        except UapiError as error:
            self._close()
            events.append(error)
        return events

    def feed_eof(self) -> list[GetRequest | SetRequest | UapiError]:
        """The peer shut down its side: a set cut short still counts, as in wireguard-go."""
        events: list[GetRequest | SetRequest | UapiError] = []
        if self._state == _SET:
            try:
                # Either the unterminated last line or the end of input finishes the request.
                if self._buffer:
                    self._set_line(bytes(self._buffer))
                events.append(self._finish_set())
            except UapiError as error:
                events.append(error)
        self._close()
        return events

    def _close(self) -> None:
        self._state = _CLOSED
        self._buffer = bytearray()
        self._set = None

    def _drain(self, events: list[GetRequest | SetRequest | UapiError]) -> None:
        buffer = self._buffer
        start = 0
        try:
            while self._state != _CLOSED:
                if self._state == _GET:
                    if start >= len(buffer):
                        break
                    start += 1
                    self._state = _IDLE
                    if buffer[start - 1] != 0x0A:
                        raise _invalid("trailing character after get=1")
                    events.append(GetRequest())
                    continue
                end = buffer.find(b"\n", max(start, self._scanned))
                if end < 0:
                    self._scanned = len(buffer)
                    self._check_pending(len(buffer) - start)
                    break
                line = bytes(buffer[start:end])
                self._count(len(line) + 1)
                start = end + 1
                if self._state == _IDLE:
                    self._operation(line)
                else:
                    self._set_line(line)
                    if self._state == _IDLE:
                        events.append(self._finish_set())
        finally:
            if self._state != _CLOSED:
                del buffer[:start]
                self._scanned = max(0, self._scanned - start)

    def _check_pending(self, pending: int) -> None:
        if pending > MAX_LINE_BYTES:
            if self._state == _IDLE:
                raise UapiError(EPROTO, "operation line too long", reply=False)
            raise UapiError(EIO, "line too long")
        self._count(pending, commit=False)

    def _count(self, size: int, *, commit: bool = True) -> None:
        if self._state == _IDLE:
            return
        if self._request_bytes + size > self._max_request_bytes:
            raise UapiError(EMSGSIZE, "request too large")
        if commit:
            self._request_bytes += size

    def _operation(self, line: bytes) -> None:
        if line == b"get=1":
            self._state = _GET
        elif line == b"set=1":
            self._state = _SET
            self._set = _SetParser()
            self._request_bytes = len(line) + 1
        else:
            raise UapiError(EPROTO, f"invalid operation {line[:64]!r}", reply=False)

    def _set_line(self, line: bytes) -> None:
        if len(line) > MAX_LINE_BYTES:
            raise UapiError(EIO, "line too long")
        if line.endswith(b"\r"):  # Go's line scanner drops one carriage return
            line = line[:-1]
        if not line:
            self._state = _IDLE
            return
        assert self._set is not None
        self._set.line(line.decode("utf-8", "surrogateescape"))

    def _finish_set(self) -> SetRequest:
        assert self._set is not None
        request = self._set.request
        self._set = None
        self._request_bytes = 0
        return request


def parse_request(data: bytes | str) -> GetRequest | SetRequest:
    """Exactly one complete request, empty line included (for tests, fuzzing and tools)."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    reader = RequestReader()
    events = reader.feed(data)
    for event in events:
        if isinstance(event, UapiError):
            raise event
    if len(events) != 1 or reader.pending:
        raise UapiError(EPROTO, "expected exactly one complete request")
    request = events[0]
    assert not isinstance(request, UapiError)
    return request


# ---------------------------------------------------------------------------------------------
# Writing


def format_errno(errno: int) -> bytes:
    """The reply that ends every response; see the module docstring for the sign."""
    return f"errno={-abs(errno)}\n\n".encode()


def format_get_response(device: DeviceSnapshot) -> bytes:
    lines: list[str] = []
    if device.private_key is not None and device.private_key != ZERO_KEY:
        lines.append(f"private_key={device.private_key.hex()}")
    if device.listen_port:
        lines.append(f"listen_port={device.listen_port}")
    if device.fwmark:
        lines.append(f"fwmark={device.fwmark}")
    for peer in device.peers:
        lines.append(f"public_key={peer.public_key.hex()}")
        lines.append(f"preshared_key={(peer.preshared_key or ZERO_KEY).hex()}")
        lines.append(f"protocol_version={peer.protocol_version}")
        if peer.endpoint is not None:
            lines.append(f"endpoint={peer.endpoint}")
        lines.append(f"last_handshake_time_sec={peer.last_handshake_time_sec}")
        lines.append(f"last_handshake_time_nsec={peer.last_handshake_time_nsec}")
        lines.append(f"tx_bytes={peer.tx_bytes}")
        lines.append(f"rx_bytes={peer.rx_bytes}")
        lines.append(f"persistent_keepalive_interval={peer.persistent_keepalive_interval}")
        lines.extend(f"allowed_ip={_network_text(network)}" for network in peer.allowed_ips)
    lines.append("errno=0\n\n")
    return "\n".join(lines).encode("utf-8", "surrogateescape")


def format_set_request(request: SetRequest) -> bytes:
    """The client side, in wireguard-tools' order (plus update_only, which wg never sends)."""
    lines = ["set=1"]
    if request.private_key is not None:
        lines.append(f"private_key={request.private_key.hex()}")
    if request.listen_port is not None:
        lines.append(f"listen_port={request.listen_port}")
    if request.fwmark is not None:
        lines.append(f"fwmark={request.fwmark}")
    if request.replace_peers:
        lines.append("replace_peers=true")
    for peer in request.peers:
        lines.append(f"public_key={peer.public_key.hex()}")
        if peer.remove:
            lines.append("remove=true")
            continue
        if peer.update_only:
            lines.append("update_only=true")
        if peer.preshared_key is not None:
            lines.append(f"preshared_key={peer.preshared_key.hex()}")
        if peer.endpoint is not None:
            lines.append(f"endpoint={peer.endpoint}")
        if peer.persistent_keepalive_interval is not None:
            lines.append(f"persistent_keepalive_interval={peer.persistent_keepalive_interval}")
        if peer.replace_allowed_ips:
            lines.append("replace_allowed_ips=true")
        for change in peer.allowed_ips:
            sign = "-" if change.remove else ""
            lines.append(f"allowed_ip={sign}{_network_text(change.network)}")
    lines.append("\n")
    return "\n".join(lines).encode("utf-8", "surrogateescape")
