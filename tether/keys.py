"""WireGuard keys: 32-byte Curve25519 values written as 44-character standard base64.

The text form follows wireguard-tools exactly, because users paste keys between `wg` and us:
decoding accepts only the canonical encoding (44 characters, one `=` pad, zero padding bits), so a
key that `wg` rejects is rejected here too and vice versa.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

KEY_LEN = 32
KEY_LEN_BASE64 = 44


class InvalidKey(ValueError):
    """A key that is not 32 bytes in canonical standard base64."""


def clamp(secret: bytes) -> bytes:
    """Curve25519 clamping (RFC 7748 §5): what `wg genkey` applies to fresh randomness."""
    if len(secret) != KEY_LEN:
        raise InvalidKey("a key is 32 bytes")
    b = bytearray(secret)
    b[0] &= 248
    b[31] = (b[31] & 127) | 64
    return bytes(b)


def encode(key: bytes) -> str:
    if len(key) != KEY_LEN:
        raise InvalidKey("a key is 32 bytes")
    return base64.b64encode(key).decode("ascii")


def decode(text: str) -> bytes:
    """Parse a key the way wireguard-tools' key_from_base64 does (strict, canonical)."""
    if not isinstance(text, str) or len(text) != KEY_LEN_BASE64 or text[-1] != "=":
        raise InvalidKey("Key is not the correct length or format")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise InvalidKey("Key is not the correct length or format") from None
    # b64decode tolerates nonzero padding bits; wg does not, and a non-canonical spelling of a key
    # would let two different strings name the same peer in a file.
    if len(raw) != KEY_LEN or encode(raw) != text:
        raise InvalidKey("Key is not the correct length or format")
    return raw


def is_valid(text: str) -> bool:
    try:
        decode(text)
    except InvalidKey:
        return False
    return True


def generate_private() -> bytes:
    return clamp(os.urandom(KEY_LEN))


def generate_psk() -> bytes:
    return os.urandom(KEY_LEN)


def public_from_private(private: bytes) -> bytes:
    """X25519 base-point multiplication; the private key is clamped as part of the operation."""
    if len(private) != KEY_LEN:
        raise InvalidKey("a key is 32 bytes")
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def genkey() -> str:
    return encode(generate_private())


def genpsk() -> str:
    return encode(generate_psk())


def pubkey(private_b64: str) -> str:
    return encode(public_from_private(decode(private_b64)))
