"""Fuzz target: arbitrary datagrams through every wire parser and the handshake/cookie consumers,
and the worker steering model (which worker's socket the kernel gives a datagram).

The contract under test: whatever bytes arrive on the device socket, the protocol core raises
`MessageError` (or a subclass) or accepts them, and nothing else. Any other exception is a crash.

    .venv/bin/python fuzz/fuzz_wire_messages.py [corpus_dir] [-atheris_runs=N]

The module imports without atheris so tests/wireguard/test_messages.py can run `TestOneInput`
on random and mutated inputs; `SEEDS` holds one valid message of each type, the best corpus start.
"""

from __future__ import annotations

import os
import sys

from tether.device import steering
from tether.wireguard.constants import (
    MESSAGE_COOKIE_REPLY,
    MESSAGE_INITIATION,
    MESSAGE_RESPONSE,
    MESSAGE_TRANSPORT_HEADER_SIZE,
)
from tether.wireguard.cookie import CookieChecker, CookieGenerator, address_bytes
from tether.wireguard.crypto import tai64n
from tether.wireguard.messages import (
    MessageError,
    message_type,
    parse,
    parse_cookie_reply,
    parse_initiation,
    parse_response,
    parse_transport,
)
from tether.wireguard.noise import (
    InitiationGuard,
    Keypair,
    LocalIdentity,
    PeerKeys,
    create_initiation,
    open_initiation,
)

# Fixed keys and randomness: a crash must reproduce from its input alone.
_RESPONDER = LocalIdentity(bytes(range(1, 33)))
_INITIATOR = LocalIdentity(bytes(range(33, 65)))
_PEERS = {_INITIATOR.spub: PeerKeys(_RESPONDER, _INITIATOR.spub, b"\x07" * 32)}
_TO_RESPONDER = PeerKeys(_INITIATOR, _RESPONDER.spub, b"\x07" * 32)
_SRC = address_bytes("127.0.0.1", 51820)
_NOW = 1000.0


def _counter_random(n: int) -> bytes:
    return bytes(n)


_CHECKER = CookieChecker(_RESPONDER.spub, random=_counter_random)
_GENERATOR = CookieGenerator(_RESPONDER.spub)


def _seed_messages():
    """One genuine exchange, whose messages seed the corpus and whose state the target reuses."""
    initiation, handshake = create_initiation(
        _TO_RESPONDER, tai64n(1.0), sender=1, epriv=bytes(range(65, 97))
    )
    init_bytes = _GENERATOR.add_macs(initiation.pack(), _NOW)
    opened = open_initiation(_RESPONDER, parse_initiation(init_bytes))
    state = opened.authenticate(_PEERS[opened.initiator_static])
    response, responder_keys = state.create_response(sender=2, epriv=bytes(range(97, 129)))
    resp_bytes = CookieGenerator(_INITIATOR.spub).add_macs(response.pack(), _NOW)
    # The initiator's handshake is left unconsumed so that fuzzed responses reach the DH code.
    reply = _CHECKER.create_reply(init_bytes, _SRC, _NOW, nonce=bytes(24))
    probe, _ = create_initiation(_TO_RESPONDER, tai64n(2.0), sender=3, epriv=bytes(range(1, 33)))
    initiator_keys = Keypair(
        responder_keys.receive_key, responder_keys.send_key, 1, 2, is_initiator=True
    )
    transport = bytes(initiator_keys.seal(0, b"\x45" + bytes(19)))
    seeds = [init_bytes, resp_bytes, reply, transport, _GENERATOR.add_macs(probe.pack(), _NOW)]
    return seeds, handshake, responder_keys


SEEDS, _INITIATOR_HANDSHAKE, _RESPONDER_KEYS = _seed_messages()


def _handle(data: bytes) -> None:
    """What a device does with a datagram, minus the IO: the code paths remote input reaches."""
    mtype = message_type(data)
    if mtype == MESSAGE_INITIATION:
        _CHECKER.check_mac2(data, _SRC, _NOW)
        _CHECKER.create_reply(data, _SRC, _NOW)
        # A device would stop here on a bad mac1; the fuzzer goes on so that arbitrary
        # ephemerals and ciphertexts reach the DH and AEAD code.
        _CHECKER.check_mac1(data)
        opened = open_initiation(_RESPONDER, parse_initiation(data))
        peer = _PEERS.get(opened.initiator_static)
        if peer is None:
            return
        state = opened.authenticate(peer)
        if InitiationGuard().admit(state.timestamp, _NOW):
            state.create_response(sender=9, epriv=bytes(range(2, 34)))
    elif mtype == MESSAGE_RESPONSE:
        _CHECKER.check_mac1(data)
        msg = parse_response(data)
        if msg.receiver == _INITIATOR_HANDSHAKE.sender:
            _INITIATOR_HANDSHAKE.consume_response(msg)
    elif mtype == MESSAGE_COOKIE_REPLY:
        generator = CookieGenerator(_RESPONDER.spub)
        generator.add_macs(SEEDS[0], _NOW)
        generator.consume_reply(parse_cookie_reply(data), _NOW)
    else:
        receiver, counter = parse_transport(data)
        if receiver == _RESPONDER_KEYS.local_index:
            _RESPONDER_KEYS.open(counter, memoryview(data)[MESSAGE_TRANSPORT_HEADER_SIZE:])


def _steering(data: bytes) -> None:
    """The worker steering model (tether/device/steering.py, the kernel program's twin) agrees
    with the parsers on where a message's receiver index is, and never names a worker outside
    the group."""
    for workers in (1, 2, 3):
        worker = steering.worker_for(data, workers)
        assert worker is None or 0 <= worker < workers
        for parser in (parse_response, parse_cookie_reply):
            try:
                assert worker == parser(data).receiver % workers
            except MessageError:
                pass
        try:
            receiver, _ = parse_transport(data)
        except MessageError:
            continue
        assert worker == receiver % workers


def TestOneInput(data: bytes) -> None:  # noqa: N802 - the name atheris and libFuzzer expect
    for parser in (parse, parse_initiation, parse_response, parse_cookie_reply, parse_transport):
        try:
            parser(data)
        except MessageError:
            pass
    _steering(data)
    try:
        _handle(data)
    except MessageError:
        pass


def _write_seeds(argv: list[str]) -> None:
    """Put the valid messages into the corpus directories given, so mutation starts deep inside
    the handshake code instead of at the type check."""
    for arg in argv[1:]:
        if not arg.startswith("-") and os.path.isdir(arg):
            for i, seed in enumerate(SEEDS):
                path = os.path.join(arg, f"seed-{i}")
                if not os.path.exists(path):
                    with open(path, "wb") as f:
                        f.write(seed)


def main() -> None:
    import atheris

    _write_seeds(sys.argv)
    atheris.instrument_all()
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
