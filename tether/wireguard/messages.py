"""The four WireGuard wire messages (paper §5.4.2-§5.4.7): strict parsing and building.

Every datagram arriving on the device socket comes from anyone on the Internet, so parsing accepts
exactly the layouts wireguard-go sends and nothing else: exact sizes for the three handshake
messages, at least a header and a tag for transport data, a known type byte followed by three zero
reserved bytes. Anything else raises `MessageError` and nothing else, so the device loop needs one
except clause to drop garbage.

Handshake messages are small frozen dataclasses (they are rare and benefit from names); transport
data, the hot path, is parsed to a plain tuple with one `struct.unpack_from` and no copy.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from tether.wireguard.constants import (
    COOKIE_LEN,
    KEY_LEN,
    MAC_LEN,
    MESSAGE_COOKIE_REPLY,
    MESSAGE_COOKIE_REPLY_SIZE,
    MESSAGE_INITIATION,
    MESSAGE_INITIATION_SIZE,
    MESSAGE_RESPONSE,
    MESSAGE_RESPONSE_SIZE,
    MESSAGE_TRANSPORT,
    MESSAGE_TRANSPORT_HEADER_SIZE,
    MESSAGE_TRANSPORT_MIN_SIZE,
    TAG_LEN,
    TIMESTAMP_LEN,
    XNONCE_LEN,
)

__all__ = [
    "CookieReply",
    "Initiation",
    "MessageError",
    "Response",
    "Transport",
    "message_type",
    "pack_transport",
    "pack_transport_header_into",
    "parse",
    "parse_cookie_reply",
    "parse_initiation",
    "parse_response",
    "parse_transport",
]

ZERO_MAC = bytes(MAC_LEN)
_U32_MAX = 0xFFFFFFFF
_U64_MAX = 0xFFFFFFFFFFFFFFFF

# The type is read as a little-endian u32: it equals the type number only when the three reserved
# bytes are zero, which is how wireguard-go reads it too.
_INITIATION = struct.Struct(f"<II{KEY_LEN}s{KEY_LEN + TAG_LEN}s{TIMESTAMP_LEN + TAG_LEN}s16s16s")
_RESPONSE = struct.Struct(f"<III{KEY_LEN}s{TAG_LEN}s16s16s")
_COOKIE_REPLY = struct.Struct(f"<II{XNONCE_LEN}s{COOKIE_LEN + TAG_LEN}s")
_TRANSPORT_HEADER = struct.Struct("<IIQ")
_unpack_transport_header = _TRANSPORT_HEADER.unpack_from
_pack_transport_header = _TRANSPORT_HEADER.pack
_pack_transport_header_into = _TRANSPORT_HEADER.pack_into
_unpack_type = struct.Struct("<I").unpack_from

assert _INITIATION.size == MESSAGE_INITIATION_SIZE
assert _RESPONSE.size == MESSAGE_RESPONSE_SIZE
assert _COOKIE_REPLY.size == MESSAGE_COOKIE_REPLY_SIZE
assert _TRANSPORT_HEADER.size == MESSAGE_TRANSPORT_HEADER_SIZE


class MessageError(ValueError):
    """A datagram that is not a well-formed, authentic WireGuard message; drop it.

    The handshake and cookie layers raise subclasses of this for inputs that parse but fail
    authentication, so one except clause covers everything a remote sender can cause.
    """


def _check_index(name: str, value: int) -> None:
    if not 0 <= value <= _U32_MAX:
        raise MessageError(f"{name} must be a 32-bit unsigned integer")


def _check_len(name: str, value: bytes, size: int) -> None:
    if len(value) != size:
        raise MessageError(f"{name} must be {size} bytes, got {len(value)}")


@dataclass(frozen=True, slots=True)
class Initiation:
    """Handshake initiation (type 1): msg.sender, msg.ephemeral, msg.static, msg.timestamp, macs.

    `static` and `timestamp` are AEAD ciphertexts (32 + 16 and 12 + 16 bytes).
    """

    sender: int
    ephemeral: bytes
    static: bytes
    timestamp: bytes
    mac1: bytes = ZERO_MAC
    mac2: bytes = ZERO_MAC

    MAC1_OFFSET = MESSAGE_INITIATION_SIZE - 2 * MAC_LEN

    def __post_init__(self) -> None:
        _check_index("sender", self.sender)
        _check_len("ephemeral", self.ephemeral, KEY_LEN)
        _check_len("static", self.static, KEY_LEN + TAG_LEN)
        _check_len("timestamp", self.timestamp, TIMESTAMP_LEN + TAG_LEN)
        _check_len("mac1", self.mac1, MAC_LEN)
        _check_len("mac2", self.mac2, MAC_LEN)

    def pack(self) -> bytes:
        return _INITIATION.pack(
            MESSAGE_INITIATION,
            self.sender,
            self.ephemeral,
            self.static,
            self.timestamp,
            self.mac1,
            self.mac2,
        )


@dataclass(frozen=True, slots=True)
class Response:
    """Handshake response (type 2): msg.sender, msg.receiver, msg.ephemeral, msg.empty, macs.

    `empty` is the 16-byte tag of the AEAD over the empty plaintext that confirms the transcript.
    """

    sender: int
    receiver: int
    ephemeral: bytes
    empty: bytes
    mac1: bytes = ZERO_MAC
    mac2: bytes = ZERO_MAC

    MAC1_OFFSET = MESSAGE_RESPONSE_SIZE - 2 * MAC_LEN

    def __post_init__(self) -> None:
        _check_index("sender", self.sender)
        _check_index("receiver", self.receiver)
        _check_len("ephemeral", self.ephemeral, KEY_LEN)
        _check_len("empty", self.empty, TAG_LEN)
        _check_len("mac1", self.mac1, MAC_LEN)
        _check_len("mac2", self.mac2, MAC_LEN)

    def pack(self) -> bytes:
        return _RESPONSE.pack(
            MESSAGE_RESPONSE,
            self.sender,
            self.receiver,
            self.ephemeral,
            self.empty,
            self.mac1,
            self.mac2,
        )


@dataclass(frozen=True, slots=True)
class CookieReply:
    """Cookie reply (type 3): msg.receiver, msg.nonce (24 B), msg.cookie (XAEAD, 16 + 16 B)."""

    receiver: int
    nonce: bytes
    cookie: bytes

    def __post_init__(self) -> None:
        _check_index("receiver", self.receiver)
        _check_len("nonce", self.nonce, XNONCE_LEN)
        _check_len("cookie", self.cookie, COOKIE_LEN + TAG_LEN)

    def pack(self) -> bytes:
        return _COOKIE_REPLY.pack(MESSAGE_COOKIE_REPLY, self.receiver, self.nonce, self.cookie)


@dataclass(frozen=True, slots=True)
class Transport:
    """Transport data (type 4), for callers that want an object; the hot path uses tuples."""

    receiver: int
    counter: int
    content: bytes

    def __post_init__(self) -> None:
        _check_index("receiver", self.receiver)
        if not 0 <= self.counter <= _U64_MAX:
            raise MessageError("counter must be a 64-bit unsigned integer")
        if len(self.content) < TAG_LEN:
            raise MessageError("transport content is at least a 16-byte tag")

    def pack(self) -> bytes:
        return pack_transport(self.receiver, self.counter, self.content)


_SIZES = {
    MESSAGE_INITIATION: MESSAGE_INITIATION_SIZE,
    MESSAGE_RESPONSE: MESSAGE_RESPONSE_SIZE,
    MESSAGE_COOKIE_REPLY: MESSAGE_COOKIE_REPLY_SIZE,
}


def message_type(data: bytes | bytearray | memoryview) -> int:
    """Classify a datagram by its type word, checking its size is legal for that type."""
    if len(data) < 4:
        raise MessageError("datagram shorter than a message type")
    (mtype,) = _unpack_type(data)
    if mtype == MESSAGE_TRANSPORT:
        if len(data) < MESSAGE_TRANSPORT_MIN_SIZE:
            raise MessageError("transport message shorter than header and tag")
        return mtype
    size = _SIZES.get(mtype)
    if size is None:
        raise MessageError(f"unknown message type word {mtype:#010x}")
    if len(data) != size:
        raise MessageError(f"message type {mtype} must be {size} bytes, got {len(data)}")
    return mtype


def _expect(data, mtype: int, size: int) -> None:
    if len(data) != size:
        raise MessageError(f"message type {mtype} must be {size} bytes, got {len(data)}")
    if _unpack_type(data)[0] != mtype:
        raise MessageError(f"not a message of type {mtype}")


def parse_initiation(data: bytes | bytearray | memoryview) -> Initiation:
    _expect(data, MESSAGE_INITIATION, MESSAGE_INITIATION_SIZE)
    _, sender, ephemeral, static, timestamp, mac1, mac2 = _INITIATION.unpack_from(data)
    return Initiation(sender, ephemeral, static, timestamp, mac1, mac2)


def parse_response(data: bytes | bytearray | memoryview) -> Response:
    _expect(data, MESSAGE_RESPONSE, MESSAGE_RESPONSE_SIZE)
    _, sender, receiver, ephemeral, empty, mac1, mac2 = _RESPONSE.unpack_from(data)
    return Response(sender, receiver, ephemeral, empty, mac1, mac2)


def parse_cookie_reply(data: bytes | bytearray | memoryview) -> CookieReply:
    _expect(data, MESSAGE_COOKIE_REPLY, MESSAGE_COOKIE_REPLY_SIZE)
    _, receiver, nonce, cookie = _COOKIE_REPLY.unpack_from(data)
    return CookieReply(receiver, nonce, cookie)


def parse_transport(data: bytes | bytearray | memoryview) -> tuple[int, int]:
    """(msg.receiver, msg.counter) of a transport message; the content is data[16:].

    Returning the two integers and letting the caller slice a memoryview avoids both an object
    and a copy per packet.
    """
    if len(data) < MESSAGE_TRANSPORT_MIN_SIZE:
        raise MessageError("transport message shorter than header and tag")
    mtype, receiver, counter = _unpack_transport_header(data)
    if mtype != MESSAGE_TRANSPORT:
        raise MessageError("not a transport message")
    return receiver, counter


def pack_transport(receiver: int, counter: int, content: bytes) -> bytes:
    """Header + already-sealed content; `noise.Keypair.seal` avoids this copy on the hot path."""
    try:
        return _pack_transport_header(MESSAGE_TRANSPORT, receiver, counter) + content
    except struct.error as exc:
        raise MessageError(f"transport header out of range: {exc}") from None


def pack_transport_header_into(buf: bytearray | memoryview, receiver: int, counter: int) -> None:
    """Write the 16-byte header at the start of `buf`, which the caller then seals content into."""
    _pack_transport_header_into(buf, 0, MESSAGE_TRANSPORT, receiver, counter)


def parse(data: bytes | bytearray | memoryview) -> Initiation | Response | CookieReply | Transport:
    """Any of the four messages, for code that is not on the transport fast path."""
    mtype = message_type(data)
    if mtype == MESSAGE_INITIATION:
        return parse_initiation(data)
    if mtype == MESSAGE_RESPONSE:
        return parse_response(data)
    if mtype == MESSAGE_COOKIE_REPLY:
        return parse_cookie_reply(data)
    receiver, counter = parse_transport(data)
    return Transport(receiver, counter, bytes(data[MESSAGE_TRANSPORT_HEADER_SIZE:]))
