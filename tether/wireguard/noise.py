"""Noise_IKpsk2 as WireGuard runs it (paper §5.4.2-§5.4.5), sans-IO.

The handshake is split along the points where the caller has to decide something:

* initiator: `create_initiation(peer, timestamp)` -> (Initiation, InitiatorHandshake);
  later `InitiatorHandshake.consume_response(msg)` -> Keypair.
* responder: `open_initiation(local, msg)` decrypts only msg.static, because the initiator's
  identity is needed to find its peer entry (psk, precomputed static-static DH, last timestamp);
  `OpenedInitiation.authenticate(peer)` then decrypts the TAI64N timestamp, and the caller checks
  replay/flood (`InitiationGuard`) before `ResponderHandshake.create_response()` -> (Response,
  Keypair).

Handshake messages come back with zero mac1/mac2: the macs cover the final bytes and belong to the
peer's `cookie.CookieGenerator`, which the caller applies after `pack()`. Likewise the responder
must check mac1 (cheap) before calling `open_initiation` (one DH).

Each handshake object is single-use: consuming a second response, or creating a second response,
raises, because reusing the transcript would hand out a keypair with the same keys and the
counter reset, which is a transport-data replay.

The message steps are written once over `SymmetricState` and shared with `noise_ikpsk2_transcript`,
a generic driver that lets the test suite check the very same code against the cacophony vector
for Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s (which uses a Noise prologue where WireGuard mixes in
IDENTIFIER, and arbitrary payloads where WireGuard sends TAI64N and nothing).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from tether.wireguard.constants import (
    CONSTRUCTION,
    HANDSHAKE_INITIATION_RATE,
    IDENTIFIER,
    KEY_LEN,
    MESSAGE_TRANSPORT_HEADER_SIZE,
    TAG_LEN,
    TIMESTAMP_LEN,
)
from tether.wireguard.crypto import (
    AEAD,
    CryptoError,
    aead_decrypt,
    aead_encrypt,
    dh,
    dh_generate,
    dh_public,
    hash_,
    kdf1,
    kdf2,
    kdf3,
    private_key,
)
from tether.wireguard.messages import (
    Initiation,
    MessageError,
    Response,
    pack_transport_header_into,
)

__all__ = [
    "INITIAL_CHAIN_KEY",
    "INITIAL_HASH",
    "HandshakeError",
    "InitiationGuard",
    "InitiatorHandshake",
    "Keypair",
    "LocalIdentity",
    "NoiseTranscript",
    "OpenedInitiation",
    "PeerKeys",
    "ResponderHandshake",
    "SymmetricState",
    "TransportError",
    "create_initiation",
    "noise_ikpsk2_transcript",
    "open_initiation",
    "random_index",
]

# C0 and H0 (paper §5.4.2): the same for every handshake, so computed once.
INITIAL_CHAIN_KEY = hash_(CONSTRUCTION)
INITIAL_HASH = hash_(INITIAL_CHAIN_KEY, IDENTIFIER)
ZERO_PSK = bytes(KEY_LEN)


class HandshakeError(MessageError):
    """A handshake message that parsed but did not authenticate, or arrived in the wrong state."""


class TransportError(MessageError):
    """Transport data that does not authenticate under the keypair its msg.receiver names."""


def random_index() -> int:
    """A fresh 32-bit sender index; uniqueness among live indices is the index table's job."""
    return int.from_bytes(os.urandom(4), "little")


def _dh(private: X25519PrivateKey, public: bytes) -> bytes:
    try:
        return dh(private, public)
    except CryptoError as exc:
        raise HandshakeError(str(exc)) from None


def _ephemeral(epriv: bytes | None) -> X25519PrivateKey:
    return dh_generate() if epriv is None else private_key(epriv)


class SymmetricState:
    """The chaining key Ci and transcript hash Hi of one side of a handshake.

    Noise's CipherState is folded in: WireGuard uses every handshake key for exactly one AEAD, so
    the nonce is always zero and the key is returned to the caller rather than stored.
    """

    __slots__ = ("ci", "hi")

    def __init__(self, ci: bytes, hi: bytes) -> None:
        self.ci = ci
        self.hi = hi

    @classmethod
    def initialize(cls, protocol_name: bytes, prologue: bytes) -> SymmetricState:
        """Noise's InitializeSymmetric + MixHash(prologue); WireGuard's C0/H0 for its strings."""
        h = protocol_name.ljust(32, b"\x00") if len(protocol_name) <= 32 else hash_(protocol_name)
        return cls(h, hash_(h, prologue))

    def copy(self) -> SymmetricState:
        return SymmetricState(self.ci, self.hi)

    def mix_hash(self, data: bytes) -> None:
        self.hi = hash_(self.hi, data)

    def mix_ephemeral(self, epub: bytes) -> None:
        """The `e` token under a psk modifier: the ephemeral enters both Hi and Ci."""
        self.hi = hash_(self.hi, epub)
        self.ci = kdf1(self.ci, epub)

    def mix_key(self, shared: bytes) -> None:
        self.ci = kdf1(self.ci, shared)

    def mix_key_for_cipher(self, shared: bytes) -> bytes:
        self.ci, key = kdf2(self.ci, shared)
        return key

    def mix_psk(self, psk: bytes) -> bytes:
        self.ci, tau, key = kdf3(self.ci, psk)
        self.mix_hash(tau)
        return key

    def seal(self, key: bytes, plaintext: bytes) -> bytes:
        ciphertext = aead_encrypt(key, 0, plaintext, self.hi)
        self.mix_hash(ciphertext)
        return ciphertext

    def open(self, key: bytes, ciphertext: bytes) -> bytes:
        try:
            plaintext = aead_decrypt(key, 0, ciphertext, self.hi)
        except CryptoError:
            raise HandshakeError("handshake message failed authentication") from None
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[bytes, bytes]:
        """(initiator->responder key, responder->initiator key)."""
        return kdf2(self.ci, b"")


# The two message patterns, each written once for writer and reader. Message 1 is
# `e, es, s, ss` + payload; message 2 is `e, ee, se, psk` + payload.


def _write_message1(
    sym: SymmetricState,
    epriv: X25519PrivateKey,
    spub_i: bytes,
    spub_r: bytes,
    ss: bytes,
    payload: bytes,
) -> tuple[bytes, bytes, bytes]:
    epub = dh_public(epriv)
    sym.mix_ephemeral(epub)
    static = sym.seal(sym.mix_key_for_cipher(_dh(epriv, spub_r)), spub_i)
    sealed_payload = sym.seal(sym.mix_key_for_cipher(ss), payload)
    return epub, static, sealed_payload


def _read_message1_static(
    sym: SymmetricState, spriv_r: X25519PrivateKey, epub_i: bytes, static: bytes
) -> bytes:
    sym.mix_ephemeral(epub_i)
    return sym.open(sym.mix_key_for_cipher(_dh(spriv_r, epub_i)), static)


def _read_message1_payload(sym: SymmetricState, ss: bytes, sealed_payload: bytes) -> bytes:
    return sym.open(sym.mix_key_for_cipher(ss), sealed_payload)


def _write_message2(
    sym: SymmetricState,
    epriv_r: X25519PrivateKey,
    epub_i: bytes,
    spub_i: bytes,
    psk: bytes,
    payload: bytes,
) -> tuple[bytes, bytes]:
    epub = dh_public(epriv_r)
    sym.mix_ephemeral(epub)
    sym.mix_key(_dh(epriv_r, epub_i))
    sym.mix_key(_dh(epriv_r, spub_i))
    return epub, sym.seal(sym.mix_psk(psk), payload)


def _read_message2(
    sym: SymmetricState,
    epriv_i: X25519PrivateKey,
    spriv_i: X25519PrivateKey,
    epub_r: bytes,
    psk: bytes,
    sealed_payload: bytes,
) -> bytes:
    sym.mix_ephemeral(epub_r)
    sym.mix_key(_dh(epriv_i, epub_r))
    sym.mix_key(_dh(spriv_i, epub_r))
    return sym.open(sym.mix_psk(psk), sealed_payload)


class LocalIdentity:
    """Our static key pair (spriv, spub) and the transcript hash every initiation to us starts
    from, H0 mixed with spub, which is the same for all peers and so computed once."""

    __slots__ = ("spriv", "spub", "hi")

    def __init__(self, spriv: bytes) -> None:
        self.spriv = private_key(spriv)
        self.spub = dh_public(self.spriv)
        self.hi = hash_(INITIAL_HASH, self.spub)


class PeerKeys:
    """Everything about one peer that is fixed until the configuration changes: its spub, the
    psk (zero when absent, as the protocol specifies), the static-static DH and the initiator's
    starting Hi. The static-static DH is computed at the peer's first handshake and kept, which
    saves one X25519 per handshake in each direction without making a device with 10,000 idle
    peers pay 10,000 of them at start-up.

    A peer whose public key is a low-order point is kept (wg accepts it) with `ss = None`, and
    no handshake with it ever succeeds.
    """

    __slots__ = ("local", "spub", "psk", "_ss", "hi")

    def __init__(self, local: LocalIdentity, spub: bytes, psk: bytes | None = None) -> None:
        if len(spub) != KEY_LEN:
            raise ValueError("a public key is 32 bytes")
        if psk is not None and len(psk) != KEY_LEN:
            raise ValueError("a preshared key is 32 bytes")
        self.local = local
        self.spub = bytes(spub)
        self.psk = ZERO_PSK if psk is None else bytes(psk)
        self._ss: bytes | None | bool = False  # False: not computed yet
        self.hi = hash_(INITIAL_HASH, self.spub)

    @property
    def ss(self) -> bytes | None:
        ss = self._ss
        if ss is False:
            try:
                ss = dh(self.local.spriv, self.spub)
            except CryptoError:
                ss = None
            self._ss = ss
        return ss


class Keypair:
    """Transport keys from one completed handshake, with an AEAD object per direction.

    Counters, replay window, expiry and padding to PADDING_MULTIPLE are the transport layer's:
    they need the clock and the MTU, which this object deliberately does not know.
    """

    __slots__ = (
        "send_key",
        "receive_key",
        "local_index",
        "remote_index",
        "is_initiator",
        "send",
        "receive",
    )

    def __init__(
        self,
        send_key: bytes,
        receive_key: bytes,
        local_index: int,
        remote_index: int,
        is_initiator: bool,
    ) -> None:
        self.send_key = send_key
        self.receive_key = receive_key
        self.local_index = local_index
        self.remote_index = remote_index
        self.is_initiator = is_initiator
        self.send = AEAD(send_key)
        self.receive = AEAD(receive_key)

    def seal(self, counter: int, plaintext: bytes) -> bytearray:
        """A complete transport data message to msg.receiver = remote_index, in one buffer."""
        out = bytearray(MESSAGE_TRANSPORT_HEADER_SIZE + len(plaintext) + TAG_LEN)
        pack_transport_header_into(out, self.remote_index, counter)
        self.send.encrypt_into(
            counter, plaintext, None, memoryview(out)[MESSAGE_TRANSPORT_HEADER_SIZE:]
        )
        return out

    def open(self, counter: int, content: bytes | memoryview) -> bytes:
        """Plaintext of a transport message's content (data[16:]); raises TransportError."""
        try:
            return self.receive.decrypt(counter, content)
        except CryptoError:
            raise TransportError("transport data failed authentication") from None


class InitiatorHandshake:
    """Initiator state between sending an initiation and receiving its response."""

    __slots__ = ("peer", "sender", "_epriv", "_sym", "_done")

    def __init__(self, peer: PeerKeys, sender: int, epriv: X25519PrivateKey, sym: SymmetricState):
        self.peer = peer
        self.sender = sender
        self._epriv = epriv
        self._sym = sym
        self._done = False

    def consume_response(self, msg: Response) -> Keypair:
        """Authenticate the response and derive the keypair; a forgery leaves the state usable."""
        if self._done:
            raise HandshakeError("response already consumed for this initiation")
        if msg.receiver != self.sender:
            raise HandshakeError("response is not addressed to this initiation")
        sym = self._sym.copy()
        _read_message2(
            sym, self._epriv, self.peer.local.spriv, msg.ephemeral, self.peer.psk, msg.empty
        )
        self._done = True
        send_key, receive_key = sym.split()
        return Keypair(send_key, receive_key, self.sender, msg.sender, is_initiator=True)


def create_initiation(
    peer: PeerKeys,
    timestamp: bytes,
    *,
    sender: int | None = None,
    epriv: bytes | None = None,
) -> tuple[Initiation, InitiatorHandshake]:
    """Start a handshake to `peer`; `timestamp` is crypto.tai64n(wall clock) from the caller.

    `sender` and `epriv` exist for tests and for the index table; by default both are fresh random.
    """
    if peer.ss is None:
        raise HandshakeError("peer public key is a low-order point")
    if len(timestamp) != TIMESTAMP_LEN:
        raise ValueError("a TAI64N timestamp is 12 bytes")
    sym = SymmetricState(INITIAL_CHAIN_KEY, peer.hi)
    e = _ephemeral(epriv)
    epub, static, sealed_timestamp = _write_message1(
        sym, e, peer.local.spub, peer.spub, peer.ss, timestamp
    )
    if sender is None:
        sender = random_index()
    msg = Initiation(sender, epub, static, sealed_timestamp)
    return msg, InitiatorHandshake(peer, sender, e, sym)


class ResponderHandshake:
    """Responder state after the initiation authenticated, before the response is made."""

    __slots__ = ("peer", "timestamp", "remote_index", "remote_ephemeral", "_sym", "_done")

    def __init__(self, peer: PeerKeys, timestamp: bytes, msg: Initiation, sym: SymmetricState):
        self.peer = peer
        self.timestamp = timestamp
        self.remote_index = msg.sender
        self.remote_ephemeral = msg.ephemeral
        self._sym = sym
        self._done = False

    def create_response(
        self, *, sender: int | None = None, epriv: bytes | None = None
    ) -> tuple[Response, Keypair]:
        """The response and our keypair; it may only be used to send once the initiator has
        proven it holds the keys by sending the first transport message (paper §5.4.6)."""
        if self._done:
            raise HandshakeError("response already created for this initiation")
        e = _ephemeral(epriv)
        sym = self._sym.copy()
        epub, empty = _write_message2(
            sym, e, self.remote_ephemeral, self.peer.spub, self.peer.psk, b""
        )
        self._done = True
        if sender is None:
            sender = random_index()
        receive_key, send_key = sym.split()
        keypair = Keypair(send_key, receive_key, sender, self.remote_index, is_initiator=False)
        return Response(sender, self.remote_index, epub, empty), keypair


class OpenedInitiation:
    """An initiation whose msg.static decrypted: we know who claims to be calling."""

    __slots__ = ("local", "message", "initiator_static", "_sym")

    def __init__(self, local: LocalIdentity, msg: Initiation, spub: bytes, sym: SymmetricState):
        self.local = local
        self.message = msg
        self.initiator_static = spub
        self._sym = sym

    def authenticate(self, peer: PeerKeys) -> ResponderHandshake:
        """Prove the claim with the peer's static-static DH by opening msg.timestamp.

        The caller must still reject a replayed or flooding timestamp (`InitiationGuard`) before
        creating a response.
        """
        if peer.spub != self.initiator_static or peer.local is not self.local:
            raise ValueError("PeerKeys do not belong to this initiation's sender")
        if peer.ss is None:
            raise HandshakeError("peer public key is a low-order point")
        sym = self._sym.copy()
        timestamp = _read_message1_payload(sym, peer.ss, self.message.timestamp)
        return ResponderHandshake(peer, timestamp, self.message, sym)


def open_initiation(local: LocalIdentity, msg: Initiation) -> OpenedInitiation:
    sym = SymmetricState(INITIAL_CHAIN_KEY, local.hi)
    spub = _read_message1_static(sym, local.spriv, msg.ephemeral, msg.static)
    return OpenedInitiation(local, msg, spub, sym)


class InitiationGuard:
    """Per-peer replay and flood check for authenticated initiations (paper §5.1).

    A timestamp not strictly greater than the last accepted one is a replay: without this an
    eavesdropper could resend an old initiation and make us drop the current session. Accepting
    more than one initiation per HANDSHAKE_INITIATION_RATE lets a peer burn our CPU.
    """

    __slots__ = ("last_timestamp", "last_accepted")

    def __init__(self) -> None:
        self.last_timestamp = bytes(TIMESTAMP_LEN)
        self.last_accepted: float | None = None

    def admit(self, timestamp: bytes, now: float) -> bool:
        """True (and remembered) if this initiation may be answered."""
        if timestamp <= self.last_timestamp:
            return False
        if self.last_accepted is not None and now - self.last_accepted <= HANDSHAKE_INITIATION_RATE:
            return False
        self.last_timestamp = timestamp
        self.last_accepted = now
        return True


@dataclass(frozen=True)
class NoiseTranscript:
    message1: bytes
    message2: bytes
    payload1: bytes
    payload2: bytes
    handshake_hash: bytes
    initiator_keys: tuple[bytes, bytes]  # (send, receive)
    responder_keys: tuple[bytes, bytes]  # (send, receive)


def noise_ikpsk2_transcript(
    protocol_name: bytes,
    prologue: bytes,
    psk: bytes,
    init_static: bytes,
    init_ephemeral: bytes,
    resp_static: bytes,
    resp_ephemeral: bytes,
    payload1: bytes,
    payload2: bytes,
) -> NoiseTranscript:
    """Run both sides of a generic Noise IKpsk2 handshake over the WireGuard message steps.

    Exists so that published Noise vectors exercise the code WireGuard uses; the responder really
    reads message 1 and the initiator really reads message 2, so decryption is covered as well.
    """
    i_s, r_s = private_key(init_static), private_key(resp_static)
    i_e, r_e = private_key(init_ephemeral), private_key(resp_ephemeral)
    spub_i, spub_r = dh_public(i_s), dh_public(r_s)

    initiator = SymmetricState.initialize(protocol_name, prologue)
    initiator.mix_hash(spub_r)
    responder = initiator.copy()

    epub_i, static, sealed1 = _write_message1(
        initiator, i_e, spub_i, spub_r, _dh(i_s, spub_r), payload1
    )
    got_spub_i = _read_message1_static(responder, r_s, epub_i, static)
    got_payload1 = _read_message1_payload(responder, _dh(r_s, got_spub_i), sealed1)

    epub_r, sealed2 = _write_message2(responder, r_e, epub_i, got_spub_i, psk, payload2)
    got_payload2 = _read_message2(initiator, i_e, i_s, epub_r, psk, sealed2)
    if initiator.hi != responder.hi:
        raise HandshakeError("transcripts diverged")

    i_send, i_receive = initiator.split()
    r_receive, r_send = responder.split()
    return NoiseTranscript(
        message1=epub_i + static + sealed1,
        message2=epub_r + sealed2,
        payload1=got_payload1,
        payload2=got_payload2,
        handshake_hash=initiator.hi,
        initiator_keys=(i_send, i_receive),
        responder_keys=(r_send, r_receive),
    )
