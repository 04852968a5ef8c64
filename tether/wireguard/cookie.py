"""mac1, mac2 and cookie replies (paper §5.3, §5.4.4, §5.4.7), sans-IO.

mac1 = MAC(HASH(LABEL_MAC1 || receiver's spub), msg[:mac1 offset]) proves the sender knows whom it
is talking to, and lets a responder drop junk before spending a DH on it. mac2 =
MAC(cookie, msg[:mac2 offset]) (mac1 included) proves the sender can receive at its source
address: a responder under load answers handshakes without a valid mac2 with a cookie reply
instead of doing DH. Both fields are always the last 32 bytes of an initiation or response, so the
functions here work on the packed message bytes, exactly the bytes that go on the wire.

Time is the caller's monotonic `now` in float seconds; randomness (cookie secret, reply nonce) is
injectable for tests.
"""

from __future__ import annotations

import hmac as _hmac
import ipaddress
import os
import struct
from collections.abc import Callable

from tether.wireguard.constants import (
    COOKIE_REFRESH_TIME,
    KEY_LEN,
    LABEL_COOKIE,
    LABEL_MAC1,
    MAC_LEN,
    MESSAGE_INITIATION_SIZE,
    MESSAGE_RESPONSE_SIZE,
    XNONCE_LEN,
)
from tether.wireguard.crypto import CryptoError, hash_, mac, xaead_decrypt, xaead_encrypt
from tether.wireguard.messages import CookieReply, MessageError

__all__ = [
    "CookieChecker",
    "CookieError",
    "CookieGenerator",
    "address_bytes",
    "compute_mac1",
    "cookie_key",
    "mac1_key",
]

_HANDSHAKE_SIZES = (MESSAGE_INITIATION_SIZE, MESSAGE_RESPONSE_SIZE)
_PORT = struct.Struct("!H").pack


class CookieError(MessageError):
    """A cookie reply that does not decrypt, or that answers nothing we sent."""


def mac1_key(spub: bytes) -> bytes:
    """Key of mac1 on messages *to* the holder of `spub`."""
    return hash_(LABEL_MAC1, spub)


def cookie_key(spub: bytes) -> bytes:
    """XAEAD key of cookie replies *from* the holder of `spub`."""
    return hash_(LABEL_COOKIE, spub)


def _offsets(msg: bytes | bytearray | memoryview) -> tuple[int, int]:
    if len(msg) not in _HANDSHAKE_SIZES:
        raise MessageError("mac1/mac2 exist only on initiation and response messages")
    mac2_at = len(msg) - MAC_LEN
    return mac2_at - MAC_LEN, mac2_at


def compute_mac1(key: bytes, msg: bytes | bytearray | memoryview) -> bytes:
    mac1_at, _ = _offsets(msg)
    return mac(key, msg[:mac1_at])


def address_bytes(ip: str | ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> bytes:
    """The source address a cookie is bound to: the packed IP then the port in network order.

    Only the responder that mints a cookie ever recomputes it, so the encoding is ours to choose;
    this is the one the kernel implementation hashes. Callers must use it consistently.
    """
    return ipaddress.ip_address(ip).packed + _PORT(port)


class CookieChecker:
    """Responder side, one per device: verifies mac1/mac2 and mints cookie replies.

    The cookie secret Rm is random and replaced when it is older than COOKIE_REFRESH_TIME, so a
    cookie stops being valid within two minutes, and reaching the next secret requires another
    round trip from the claimed address.
    """

    __slots__ = ("_mac1_key", "_cookie_key", "_secret", "_secret_set", "_random")

    def __init__(self, spub: bytes, *, random: Callable[[int], bytes] = os.urandom) -> None:
        if len(spub) != KEY_LEN:
            raise ValueError("a public key is 32 bytes")
        self._mac1_key = mac1_key(spub)
        self._cookie_key = cookie_key(spub)
        self._random = random
        self._secret = b""
        self._secret_set: float | None = None

    def _secret_fresh(self, now: float) -> bool:
        return self._secret_set is not None and now - self._secret_set <= COOKIE_REFRESH_TIME

    def _cookie(self, src: bytes) -> bytes:
        return mac(self._secret, src)

    def check_mac1(self, msg: bytes | bytearray | memoryview) -> bool:
        """Run this first on every handshake message: it costs one BLAKE2s, not a DH."""
        mac1_at, mac2_at = _offsets(msg)
        return _hmac.compare_digest(mac(self._mac1_key, msg[:mac1_at]), msg[mac1_at:mac2_at])

    def check_mac2(self, msg: bytes | bytearray | memoryview, src: bytes, now: float) -> bool:
        """Only meaningful under load; a message without a current cookie fails it."""
        _, mac2_at = _offsets(msg)
        if not self._secret_fresh(now):
            return False
        return _hmac.compare_digest(mac(self._cookie(src), msg[:mac2_at]), msg[mac2_at:])

    def create_reply(
        self,
        msg: bytes | bytearray | memoryview,
        src: bytes,
        now: float,
        *,
        nonce: bytes | None = None,
    ) -> bytes:
        """Cookie reply to the handshake message `msg` that arrived from `src`.

        It goes to msg.sender, and its AEAD binds the cookie to the mac1 of `msg`, so only the
        party that sent `msg` (and knows which mac1 it sent) accepts it.
        """
        mac1_at, mac2_at = _offsets(msg)
        if not self._secret_fresh(now):
            self._secret = self._random(KEY_LEN)
            self._secret_set = now
        (sender,) = struct.unpack_from("<I", msg, 4)
        if nonce is None:
            nonce = self._random(XNONCE_LEN)
        sealed = xaead_encrypt(
            self._cookie_key, nonce, self._cookie(src), bytes(msg[mac1_at:mac2_at])
        )
        return CookieReply(sender, nonce, sealed).pack()


class CookieGenerator:
    """Initiator side, one per peer: adds mac1/mac2 to what we send and takes in cookie replies.

    Keyed on the *peer's* public key, because both macs and the cookie encryption are keyed on
    the receiver's identity. It remembers the mac1 of the last message sent, since a cookie reply
    is only valid as an answer to that message.
    """

    __slots__ = ("_mac1_key", "_cookie_key", "_cookie", "_cookie_set", "_last_mac1")

    def __init__(self, peer_spub: bytes) -> None:
        if len(peer_spub) != KEY_LEN:
            raise ValueError("a public key is 32 bytes")
        self._mac1_key = mac1_key(peer_spub)
        self._cookie_key = cookie_key(peer_spub)
        self._cookie: bytes | None = None
        self._cookie_set = 0.0
        self._last_mac1: bytes | None = None

    def add_macs(self, msg: bytes | bytearray, now: float) -> bytes:
        """`msg` (a packed initiation or response) with mac1 set, and mac2 set while a cookie
        received within COOKIE_REFRESH_TIME is held; otherwise mac2 is zero."""
        mac1_at, mac2_at = _offsets(msg)
        body = bytes(msg[:mac1_at])
        mac1 = mac(self._mac1_key, body)
        self._last_mac1 = mac1
        if self._cookie is not None and now - self._cookie_set <= COOKIE_REFRESH_TIME:
            mac2 = mac(self._cookie, body + mac1)
        else:
            mac2 = bytes(MAC_LEN)
        return body + mac1 + mac2

    def consume_reply(self, reply: CookieReply, now: float) -> None:
        """Store the cookie from a reply to our last handshake message; raise CookieError if the
        reply is forged or answers something else. Matching msg.receiver to one of our indices is
        the caller's lookup."""
        if self._last_mac1 is None:
            raise CookieError("cookie reply but no handshake message was sent")
        try:
            cookie = xaead_decrypt(self._cookie_key, reply.nonce, reply.cookie, self._last_mac1)
        except CryptoError:
            raise CookieError("cookie reply failed authentication") from None
        self._cookie = cookie
        self._cookie_set = now

    def has_cookie(self, now: float) -> bool:
        return self._cookie is not None and now - self._cookie_set <= COOKIE_REFRESH_TIME
