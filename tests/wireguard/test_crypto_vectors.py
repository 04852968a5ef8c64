"""Known-answer tests for the WireGuard primitives, from the published specifications.

Sources: RFC 7693 (BLAKE2s) App. B and App. E, RFC 8439 (ChaCha20-Poly1305) §2.8.2 and App. A.5,
RFC 7748 (X25519) §5.2 and §6.1, draft-irtf-cfrg-xchacha-03 §2.2.1 and App. A.3.1, and the KDF
vectors of wireguard-go's device/kdf_test.go.
"""

from __future__ import annotations

import hashlib
import hmac as std_hmac
import struct

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from hypothesis import given
from hypothesis import strategies as st

from tether import keys
from tether.wireguard import crypto
from tether.wireguard.crypto import (
    AEAD,
    CryptoError,
    aead_decrypt,
    aead_encrypt,
    dh,
    hash_,
    hchacha20,
    hmac,
    kdf1,
    kdf2,
    kdf3,
    mac,
    private_key,
    tai64n,
    xaead_decrypt,
    xaead_encrypt,
)

h = bytes.fromhex

SUNSCREEN = (
    b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future,"
    b" sunscreen would be it."
)


# --- BLAKE2s ---------------------------------------------------------------------------------


def test_blake2s_rfc7693_appendix_b_abc():
    assert hash_(b"abc") == h("508c5e8c327c14e2e1a72ba34eeb452f37458b209ed63a294d999b4c86675982")
    assert hash_(b"a", b"b", b"c") == hash_(b"abc")


def _selftest_seq(length: int, seed: int) -> bytes:
    # RFC 7693 Appendix E: a Fibonacci-style generator, top byte of each 32-bit term.
    a = (0xDEAD4BAD * seed) & 0xFFFFFFFF
    b = 1
    out = bytearray()
    for _ in range(length):
        t = (a + b) & 0xFFFFFFFF
        a, b = b, t
        out.append(t >> 24)
    return bytes(out)


def test_blake2s_rfc7693_appendix_e_selftest_keyed_and_unkeyed():
    """The RFC's grand hash over keyed and unkeyed BLAKE2s at 16..32-byte outputs; it covers the
    16-byte keyed MAC used for mac1, mac2 and cookies."""
    grand = hashlib.blake2s()
    for outlen in (16, 20, 28, 32):
        for inlen in (0, 3, 64, 65, 255, 1024):
            data = _selftest_seq(inlen, inlen)
            grand.update(hashlib.blake2s(data, digest_size=outlen).digest())
            key = _selftest_seq(outlen, outlen)
            digest = hashlib.blake2s(data, digest_size=outlen, key=key).digest()
            if outlen == 16:
                assert mac(key, data) == digest
            grand.update(digest)
    assert grand.digest() == h("6a411f08ce25adcdfb02aba641451cec53c598b24f4fc787fbdc88797f4c1dfe")


def test_blake2s_keyed_kat():
    # blake2s-kat.txt from the BLAKE2 reference: key 00..1f, inputs "" and 00.
    key = bytes(range(32))
    assert hashlib.blake2s(b"", key=key).digest() == h(
        "48a8997da407876b3d79c0d92325ad3b89cbb754d86ab71aee047ad345fd2c49"
    )
    assert hashlib.blake2s(b"\x00", key=key).digest() == h(
        "40d15fee7c328830166ac3f918650f807e7e01e177258cdc0a39b11f598066f1"
    )


# --- HMAC and KDF ----------------------------------------------------------------------------


@given(st.binary(max_size=150), st.binary(max_size=300))
def test_hmac_matches_rfc2104_reference(key, data):
    assert hmac(key, data) == std_hmac.digest(key, data, hashlib.blake2s)
    assert hmac(key, data[:7], data[7:]) == hmac(key, data)


KDF_VECTORS = [  # wireguard-go device/kdf_test.go
    (
        "746573742d6b6579",
        "746573742d696e707574",
        "6f0e5ad38daba1bea8a0d213688736f19763239305e0f58aba697f9ffc41c633",
        "df1194df20802a4fe594cde27e92991c8cae66c366e8106aaa937a55fa371e8a",
        "fac6e2745a325f5dc5d11a5b165aad08b0ada28e7b4e666b7c077934a4d76c24",
    ),
    (
        "776972656775617264",
        "776972656775617264",
        "491d43bbfdaa8750aaf535e334ecbfe5129967cd64635101c566d4caefda96e8",
        "1e71a379baefd8a79aa4662212fcafe19a23e2b609a3db7d6bcba8f560e3d25f",
        "31e1ae48bddfbe5de38f295e5452b1909a1b4e38e183926af3780b0c1e1f0160",
    ),
    (
        "",
        "",
        "8387b46bf43eccfcf349552a095d8315c4055beb90208fb1be23b894bc2ed5d0",
        "58a0e5f6faefccf4807bff1f05fa8a9217945762040bcec2f4b4a62bdfe0e86e",
        "0ce6ea98ec548f8e281e93e32db65621c45eb18dc6f0a7ad94178610a2f7338e",
    ),
]


@pytest.mark.parametrize(("key", "data", "t0", "t1", "t2"), KDF_VECTORS)
def test_kdf_vectors(key, data, t0, t1, t2):
    assert kdf1(h(key), h(data)) == h(t0)
    assert kdf2(h(key), h(data)) == (h(t0), h(t1))
    assert kdf3(h(key), h(data)) == (h(t0), h(t1), h(t2))


# --- ChaCha20-Poly1305 -----------------------------------------------------------------------

RFC8439_282_KEY = bytes(range(0x80, 0xA0))
RFC8439_282_CT = h(
    "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d63dbea45e8ca9671282fafb69da92728b"
    "1a71de0a9e060b2905d6a5b67ecd3b3692ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc"
    "3ff4def08e4b7a9de576d26586cec64b6116"
)
RFC8439_282_TAG = h("1ae10b594f09e26a7e902ecbd0600691")


def test_chacha20poly1305_rfc8439_2_8_2():
    """The backend primitive itself; its nonce (07000000 || IV) is not a WireGuard counter nonce."""
    nonce = h("07000000") + h("4041424344454647")
    aad = h("50515253c0c1c2c3c4c5c6c7")
    sealed = ChaCha20Poly1305(RFC8439_282_KEY).encrypt(nonce, SUNSCREEN, aad)
    assert sealed == RFC8439_282_CT + RFC8439_282_TAG


RFC8439_A5_KEY = h("1c9240a5eb55d38af333888604f6b5f0473917c1402b80099dca5cbc207075c0")
RFC8439_A5_AAD = h("f33388860000000000004e91")
RFC8439_A5_CT = h(
    "64a0861575861af460f062c79be643bd5e805cfd345cf389f108670ac76c8cb24c6cfc18755d43eea09ee94e382d26b0"
    "bdb7b73c321b0100d4f03b7f355894cf332f830e710b97ce98c8a84abd0b948114ad176e008d33bd60f982b1ff37c855"
    "9797a06ef4f0ef61c186324e2b3506383606907b6a7c02b0f9f6157b53c867e4b9166c767b804d46a59b5216cde7a4e9"
    "9040c5a40433225ee282a1b0a06c523eaf4534d7f83fa1155b0047718cbc546a0d072b04b3564eea1b422273f548271a"
    "0bb2316053fa76991955ebd63159434ecebb4e466dae5a1073a6727627097a1049e617d91d361094fa68f0ff77987130"
    "305beaba2eda04df997b714d6c6f2c29a6ad5cb4022b02709b"
)
RFC8439_A5_TAG = h("eead9d67890cbb22392336fea1851f38")


def test_aead_counter_nonce_rfc8439_a5():
    """App. A.5's nonce is 00000000 || 0102030405060708, exactly a WireGuard nonce for the
    counter 0x0807060504030201, so it checks our nonce layout as well as the cipher."""
    counter = 0x0807060504030201
    plain = aead_decrypt(RFC8439_A5_KEY, counter, RFC8439_A5_CT + RFC8439_A5_TAG, RFC8439_A5_AAD)
    assert plain.startswith(b"Internet-Drafts are draft documents valid for a maximum of six")
    assert len(plain) == 265
    sealed = aead_encrypt(RFC8439_A5_KEY, counter, plain, RFC8439_A5_AAD)
    assert sealed == RFC8439_A5_CT + RFC8439_A5_TAG
    assert AEAD(RFC8439_A5_KEY).encrypt(counter, plain, RFC8439_A5_AAD) == sealed
    out = bytearray(len(sealed))
    AEAD(RFC8439_A5_KEY).encrypt_into(counter, plain, RFC8439_A5_AAD, out)
    assert out == sealed


def test_aead_rejects_tampering_and_wrong_counter():
    box = AEAD(bytes(32))
    sealed = box.encrypt(7, b"payload")
    assert box.decrypt(7, sealed) == b"payload"
    with pytest.raises(CryptoError):
        box.decrypt(8, sealed)
    with pytest.raises(CryptoError):
        box.decrypt(7, bytes([sealed[0] ^ 1]) + sealed[1:])
    with pytest.raises(CryptoError):
        aead_decrypt(bytes(32), 7, sealed, b"ad")


# --- X25519 ----------------------------------------------------------------------------------


def test_x25519_rfc7748_5_2():
    cases = [
        (
            "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
            "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
            "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
        ),
        (
            "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
            "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
            "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
        ),
    ]
    for scalar, u, out in cases:
        assert dh(private_key(h(scalar)), h(u)) == h(out)


def test_x25519_rfc7748_5_2_iterated():
    k = u = (9).to_bytes(32, "little")
    for i in range(1, 1001):
        k, u = dh(private_key(k), u), k
        if i == 1:
            assert k == h("422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079")
    assert k == h("684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51")


def test_x25519_rfc7748_6_1():
    alice = h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    bob = h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    alice_pub = h("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    bob_pub = h("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    shared = h("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    assert keys.public_from_private(alice) == alice_pub
    assert keys.public_from_private(bob) == bob_pub
    assert dh(private_key(alice), bob_pub) == shared
    assert dh(private_key(bob), alice_pub) == shared


LOW_ORDER_POINTS = [
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0100000000000000000000000000000000000000000000000000000000000000",
    "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
    "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
]


@pytest.mark.parametrize("point", LOW_ORDER_POINTS)
def test_dh_rejects_all_zero_result(point):
    with pytest.raises(CryptoError):
        dh(private_key(keys.generate_private()), h(point))


# --- HChaCha20 / XChaCha20-Poly1305 ----------------------------------------------------------


def test_hchacha20_draft_2_2_1():
    subkey = hchacha20(bytes(range(32)), h("000000090000004a0000000031415927"))
    assert subkey == h("82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc")


def _reference_hchacha20(key: bytes, nonce16: bytes) -> bytes:
    """HChaCha20 written out from the draft (§2.2): 20 rounds, no final addition, rows 0 and 3.
    Independent of the implementation, which derives it from the library's ChaCha20 block."""
    m = 0xFFFFFFFF
    x = [0x61707865, 0x3320646E, 0x79622D32, 0x6B206574, *struct.unpack("<8I4I", key + nonce16)]

    def rotl(v, n):
        return ((v << n) | (v >> (32 - n))) & m

    def quarter(a, b, c, d):
        x[a] = (x[a] + x[b]) & m
        x[d] = rotl(x[d] ^ x[a], 16)
        x[c] = (x[c] + x[d]) & m
        x[b] = rotl(x[b] ^ x[c], 12)
        x[a] = (x[a] + x[b]) & m
        x[d] = rotl(x[d] ^ x[a], 8)
        x[c] = (x[c] + x[d]) & m
        x[b] = rotl(x[b] ^ x[c], 7)

    for _ in range(10):
        for q in (
            (0, 4, 8, 12),
            (1, 5, 9, 13),
            (2, 6, 10, 14),
            (3, 7, 11, 15),
            (0, 5, 10, 15),
            (1, 6, 11, 12),
            (2, 7, 8, 13),
            (3, 4, 9, 14),
        ):
            quarter(*q)
    return struct.pack("<8I", *x[0:4], *x[12:16])


@given(st.binary(min_size=32, max_size=32), st.binary(min_size=16, max_size=16))
def test_hchacha20_matches_a_reference_written_from_the_draft(key, nonce16):
    assert hchacha20(key, nonce16) == _reference_hchacha20(key, nonce16)


def test_xchacha20poly1305_draft_a_3_1():
    key = bytes(range(0x80, 0xA0))
    nonce = h("404142434445464748494a4b4c4d4e4f5051525354555657")
    aad = h("50515253c0c1c2c3c4c5c6c7")
    expected = h(
        "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb731c7f1b0b4aa6440bf3a82f4eda7e"
        "39ae64c6708c54c216cb96b72e1213b4522f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3"
        "fff921f9664c97637da9768812f615c68b13b52e"
        "c0875924c1c7987947deafd8780acf49"
    )
    assert xaead_encrypt(key, nonce, SUNSCREEN, aad) == expected
    assert xaead_decrypt(key, nonce, expected, aad) == SUNSCREEN
    with pytest.raises(CryptoError):
        xaead_decrypt(key, nonce, expected, aad + b"x")


# --- TAI64N ----------------------------------------------------------------------------------


def test_tai64n_layout():
    assert tai64n(0.0) == h("400000000000000a00000000")
    # 1.5 s: nanoseconds 500_000_000 is already a multiple of the 20 ms whitening step.
    assert tai64n(1.5) == h("400000000000000b1dcd6500")
    # Sub-20 ms precision is not revealed.
    assert tai64n(1700000000.0199) == tai64n(1700000000.0)
    assert tai64n(1700000000.05) > tai64n(1700000000.0)


@given(st.floats(min_value=0, max_value=2**33), st.floats(min_value=0, max_value=1e6))
def test_tai64n_orders_like_time(t, dt):
    """Never backwards; strictly forwards once a whole whitening step (plus float error) passed."""
    assert tai64n(t) <= tai64n(t + dt)
    if dt >= 0.021:
        assert tai64n(t) < tai64n(t + dt)
    assert len(tai64n(t)) == 12


def test_hchacha20_argument_checks():
    with pytest.raises(ValueError):
        hchacha20(bytes(31), bytes(16))
    with pytest.raises(ValueError):
        crypto.xaead_encrypt(bytes(32), bytes(12), b"", b"")
