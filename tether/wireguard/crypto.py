"""The cryptographic primitives of the WireGuard paper (§5.4), named as the paper names them.

HASH, MAC, HMAC and the KDFs use hashlib's BLAKE2s; AEAD is pyca/cryptography's
ChaCha20Poly1305 with WireGuard's nonce layout; DH is X25519 from the same library. The only
primitive written here in Python is HChaCha20 (see `hchacha20` for why that is acceptable).

Every failure a peer can provoke (a forged tag, a low-order public key) raises `CryptoError`, so the
layers above can turn it into "drop the datagram" with one except clause.
"""

from __future__ import annotations

import hmac as _hmac
import math
import struct
from hashlib import blake2s

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from tether.wireguard.constants import HANDSHAKE_INITIATION_RATE, KEY_LEN, XNONCE_LEN

__all__ = [
    "AEAD",
    "CryptoError",
    "aead_decrypt",
    "aead_encrypt",
    "dh",
    "dh_generate",
    "dh_public",
    "hash_",
    "hchacha20",
    "hmac",
    "kdf1",
    "kdf2",
    "kdf3",
    "mac",
    "private_key",
    "tai64n",
    "xaead_decrypt",
    "xaead_encrypt",
]

ZERO_KEY = bytes(KEY_LEN)
_BLOCK = 64  # BLAKE2s block size: the HMAC pad length (RFC 2104 "B")
_IPAD = bytes(b ^ 0x36 for b in range(256))
_OPAD = bytes(b ^ 0x5C for b in range(256))
_ONE = b"\x01"
_TWO = b"\x02"
_THREE = b"\x03"


class CryptoError(ValueError):
    """Authentication failed or a DH produced the all-zero value; the input must be dropped."""


def hash_(*parts: bytes) -> bytes:
    """HASH(a || b || ...): BLAKE2s-256 over the concatenation, without building it."""
    h = blake2s()
    for p in parts:
        h.update(p)
    return h.digest()


def mac(key: bytes, data: bytes) -> bytes:
    """MAC(key, data): keyed BLAKE2s with a 16-byte output (mac1, mac2 and cookies)."""
    return blake2s(data, digest_size=16, key=key).digest()


def hmac(key: bytes, *parts: bytes) -> bytes:
    """HMAC-BLAKE2s-256 spelled out per RFC 2104 with B = 64.

    Written out rather than delegated to the stdlib so the construction the KDFs rest on is visible
    and pinned to BLAKE2s's block size; the test suite checks it against `hmac.digest`.
    """
    if len(key) > _BLOCK:
        key = blake2s(key).digest()
    key = key.ljust(_BLOCK, b"\x00")
    inner = blake2s(key.translate(_IPAD))
    for p in parts:
        inner.update(p)
    return blake2s(key.translate(_OPAD) + inner.digest()).digest()


def kdf1(key: bytes, data: bytes) -> bytes:
    """KDF1: HKDF (RFC 5869) with HMAC-BLAKE2s and an empty info, one 32-byte output."""
    prk = hmac(key, data)
    return hmac(prk, _ONE)


def kdf2(key: bytes, data: bytes) -> tuple[bytes, bytes]:
    prk = hmac(key, data)
    t0 = hmac(prk, _ONE)
    return t0, hmac(prk, t0, _TWO)


def kdf3(key: bytes, data: bytes) -> tuple[bytes, bytes, bytes]:
    prk = hmac(key, data)
    t0 = hmac(prk, _ONE)
    t1 = hmac(prk, t0, _TWO)
    return t0, t1, hmac(prk, t1, _THREE)


# WireGuard's AEAD nonce: 32 zero bits, then the 64-bit message counter little-endian.
_nonce = struct.Struct("<4xQ").pack


class AEAD:
    """ChaCha20-Poly1305 bound to one key, for keys used many times (transport keypairs).

    Building the cipher object costs about as much as sealing a full-size packet, so the transport
    path keeps one per direction instead of calling `aead_encrypt` per packet.
    """

    __slots__ = ("_cipher",)

    def __init__(self, key: bytes) -> None:
        self._cipher = ChaCha20Poly1305(key)

    def encrypt(self, counter: int, plaintext: bytes, ad: bytes | None = None) -> bytes:
        return self._cipher.encrypt(_nonce(counter), plaintext, ad)

    def encrypt_into(self, counter: int, plaintext: bytes, ad: bytes | None, out) -> None:
        """Seal into `out` (exactly len(plaintext) + 16 bytes), e.g. a slice behind a header."""
        self._cipher.encrypt_into(_nonce(counter), plaintext, ad, out)

    def decrypt(self, counter: int, ciphertext: bytes, ad: bytes | None = None) -> bytes:
        try:
            return self._cipher.decrypt(_nonce(counter), ciphertext, ad)
        except InvalidTag:
            raise CryptoError("AEAD authentication failed") from None


def aead_encrypt(key: bytes, counter: int, plaintext: bytes, ad: bytes) -> bytes:
    """AEAD(key, counter, plain, auth) for one-shot handshake keys."""
    return ChaCha20Poly1305(key).encrypt(_nonce(counter), plaintext, ad)


def aead_decrypt(key: bytes, counter: int, ciphertext: bytes, ad: bytes) -> bytes:
    try:
        return ChaCha20Poly1305(key).decrypt(_nonce(counter), ciphertext, ad)
    except InvalidTag:
        raise CryptoError("AEAD authentication failed") from None


_M32 = 0xFFFFFFFF
_SIGMA = (0x61707865, 0x3320646E, 0x79622D32, 0x6B206574)  # "expand 32-byte k"
_unpack_nonce16 = struct.Struct("<4I").unpack
_unpack_block = struct.Struct("<16I").unpack
_pack_subkey = struct.Struct("<8I").pack
_ZERO_BLOCK = bytes(64)


def hchacha20(key: bytes, nonce16: bytes) -> bytes:
    """HChaCha20 (draft-irtf-cfrg-xchacha §2.2): derive the XChaCha20 subkey.

    pyca/cryptography exposes no HChaCha20, but its ChaCha20 (whose 16-byte nonce is exactly
    state words 12-15) gives the block function: the 20 rounds plus a final addition of the input
    state. HChaCha20 is the same rounds without that addition, taking rows 0 and 3; so subtract
    the known input words from one keystream block. One C call instead of 80 quarter-rounds in
    Python (about 6 µs rather than 150), which matters when a flood makes us send cookie replies.
    """
    if len(key) != KEY_LEN or len(nonce16) != 16:
        raise ValueError("HChaCha20 takes a 32-byte key and a 16-byte nonce")
    block = Cipher(algorithms.ChaCha20(key, nonce16), mode=None).encryptor().update(_ZERO_BLOCK)
    words = _unpack_block(block)
    first = [(w - c) & _M32 for w, c in zip(words[0:4], _SIGMA, strict=True)]
    last = [(w - n) & _M32 for w, n in zip(words[12:16], _unpack_nonce16(nonce16), strict=True)]
    return _pack_subkey(*first, *last)


def _xchacha(key: bytes, nonce: bytes) -> tuple[ChaCha20Poly1305, bytes]:
    if len(nonce) != XNONCE_LEN:
        raise ValueError("XChaCha20 takes a 24-byte nonce")
    return ChaCha20Poly1305(hchacha20(key, nonce[:16])), b"\x00\x00\x00\x00" + nonce[16:]


def xaead_encrypt(key: bytes, nonce: bytes, plaintext: bytes, ad: bytes) -> bytes:
    """XAEAD(key, nonce, plain, auth): XChaCha20-Poly1305 (draft-irtf-cfrg-xchacha §2.3)."""
    cipher, nonce12 = _xchacha(key, nonce)
    return cipher.encrypt(nonce12, plaintext, ad)


def xaead_decrypt(key: bytes, nonce: bytes, ciphertext: bytes, ad: bytes) -> bytes:
    cipher, nonce12 = _xchacha(key, nonce)
    try:
        return cipher.decrypt(nonce12, ciphertext, ad)
    except InvalidTag:
        raise CryptoError("XAEAD authentication failed") from None


def private_key(raw: bytes) -> X25519PrivateKey:
    """Load a 32-byte private key once, so repeated DHs with it skip the parsing."""
    return X25519PrivateKey.from_private_bytes(raw)


def dh_generate() -> X25519PrivateKey:
    """DH-GENERATE: a fresh ephemeral key from the OS CSPRNG."""
    return X25519PrivateKey.generate()


def dh_public(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes_raw()


def dh(private: X25519PrivateKey, public: bytes) -> bytes:
    """DH(priv, pub): X25519, refusing the all-zero result.

    A low-order public key forces the shared secret to zero whatever our private key is; accepting
    it would let anyone complete the DH steps of a handshake without knowing a secret (the same
    check wireguard-go and the kernel make). OpenSSL already refuses it; the explicit comparison
    keeps the guarantee independent of the backend.
    """
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        raise CryptoError("DH produced no shared secret (low-order public key)") from None
    if _hmac.compare_digest(shared, ZERO_KEY):
        raise CryptoError("DH produced the all-zero shared secret")
    return shared


# TAI64 labels count from 2**62; WireGuard adds the 10 s TAI-UTC offset of 1970 as the kernel and
# wireguard-go do, so our timestamps order correctly against theirs after a peer switches
# implementation.
_TAI64_BASE = (1 << 62) + 10
_pack_tai64n = struct.Struct(">QI").pack
_WHITEN_NS = round(HANDSHAKE_INITIATION_RATE * 1_000_000_000)


def tai64n(wall: float) -> bytes:
    """TAI64N() of a wall-clock time (float seconds since the Unix epoch, from the caller).

    The nanoseconds are rounded down to a multiple of the 20 ms initiation rate limit: responders
    only need ordering, and a fine-grained timestamp would leak our clock to anyone who can
    complete a DH with our static key.
    """
    seconds = math.floor(wall)
    nanos = min(int((wall - seconds) * 1e9), 999_999_999)
    return _pack_tai64n(_TAI64_BASE + seconds, nanos - nanos % _WHITEN_NS)
