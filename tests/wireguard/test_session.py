"""Sessions, padding, the index table and the current/previous/next rotation rules."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether import keys
from tether.wireguard.allowedips import AllowedIPs
from tether.wireguard.constants import REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME
from tether.wireguard.crypto import CryptoError
from tether.wireguard.messages import parse_transport
from tether.wireguard.noise import Keypair
from tether.wireguard.peer import Peer
from tether.wireguard.session import IndexTable, Session, padded_length
from tether.wireguard.timers import TimerQueue


@pytest.mark.parametrize(
    ("length", "mtu", "expected"),
    [
        (0, 1420, 0),  # keepalives stay empty
        (1, 1420, 16),
        (16, 1420, 16),
        (1409, 1420, 1420),  # rounding would pass the MTU: stop at it
        (1420, 1420, 1420),
        (1421, 1420, 1421 + 15),  # over the MTU: pad the remainder as its own last unit
        (2840, 1420, 2840),
        (33, 0, 48),  # no MTU known: plain rounding
    ],
)
def test_padded_length(length, mtu, expected):
    assert padded_length(length, mtu) == expected


@given(st.integers(0, 65535), st.integers(576, 9000))
def test_padding_is_bounded(length, mtu):
    padded = padded_length(length, mtu)
    assert length <= padded < length + 16
    if length <= mtu:
        assert padded <= mtu and (padded % 16 == 0 or padded == mtu)


def pair_of_keypairs(local=1, remote=2):
    send, receive = random.randbytes(32), random.randbytes(32)
    ours = Keypair(send, receive, local, remote, is_initiator=True)
    theirs = Keypair(receive, send, remote, local, is_initiator=False)
    return ours, theirs


def test_session_seals_with_counters_and_opens():
    ours, theirs = pair_of_keypairs()
    sender, receiver = Session(ours, None, 0.0), Session(theirs, None, 0.0)
    for counter in range(3):
        datagram = sender.seal(b"abc", 1420)
        assert isinstance(datagram, bytes) and len(datagram) == 16 + 16 + 16
        assert parse_transport(datagram) == (2, counter)
        assert receiver.decrypt(counter, datagram[16:]) == b"abc" + bytes(13)
    with pytest.raises(CryptoError):
        receiver.decrypt(0, bytes(len(datagram) - 16))


def test_session_usability_limits():
    ours, _ = pair_of_keypairs()
    session = Session(ours, None, 10.0)
    assert session.can_send(10.0 + REJECT_AFTER_TIME - 0.001)
    assert not session.can_send(10.0 + REJECT_AFTER_TIME)
    session.send_counter = REJECT_AFTER_MESSAGES - 1
    assert session.can_send(11.0)
    session.seal(b"", 1420)
    assert not session.can_send(11.0)


def test_index_table_allocates_unused_random_indices():
    values = iter([7, 7, 7, 9])
    table = IndexTable(lambda: next(values))
    ours, _ = pair_of_keypairs(local=7)
    first = Session(ours, None, 0.0)
    assert table.allocate() == 7
    table.add(first)
    assert table.allocate() == 9  # 7 is taken, so it was drawn again
    table.remove(Session(pair_of_keypairs(local=7)[0], None, 0.0))  # not the mapped object
    assert table.entries[7] is first
    table.remove(first)
    table.remove(None)
    assert len(table) == 0


def make_peer():
    table = IndexTable(lambda: random.getrandbits(32))
    peer = Peer(
        keys.public_from_private(keys.generate_private()),
        local=None,
        table=AllowedIPs(),
        timer_queue=TimerQueue(lambda: 0.0),
    )
    return peer, table


def session_for(peer, table, initiator: bool) -> Session:
    local = table.allocate()
    send, receive = random.randbytes(32), random.randbytes(32)
    return Session(Keypair(send, receive, local, 1, is_initiator=initiator), peer, 0.0)


def test_rotation_initiator():
    peer, table = make_peer()
    s1 = session_for(peer, table, True)
    peer.add_session(s1, table)
    assert (peer.current, peer.previous, peer.next) == (s1, None, None)
    s2 = session_for(peer, table, True)
    peer.add_session(s2, table)
    assert (peer.current, peer.previous, peer.next) == (s2, s1, None)
    s3 = session_for(peer, table, True)
    peer.add_session(s3, table)
    assert (peer.current, peer.previous) == (s3, s2)
    assert set(table.entries.values()) == {s2, s3}


def test_rotation_responder_and_confirmation():
    peer, table = make_peer()
    s1 = session_for(peer, table, True)
    peer.add_session(s1, table)
    s0 = session_for(peer, table, True)
    peer.add_session(s0, table)  # current s0, previous s1
    r1 = session_for(peer, table, False)
    peer.add_session(r1, table)
    # A responder session waits in `next`; the previous one is dropped, current kept.
    assert (peer.current, peer.previous, peer.next) == (s0, None, r1)
    r2 = session_for(peer, table, False)
    peer.add_session(r2, table)  # a newer response replaces the unconfirmed one
    assert peer.next is r2 and set(table.entries.values()) == {s0, r2}
    peer.confirm(r2, table)
    assert (peer.current, peer.previous, peer.next) == (r2, s0, None)


def test_rotation_initiator_with_unconfirmed_next():
    peer, table = make_peer()
    s1 = session_for(peer, table, True)
    peer.add_session(s1, table)
    r1 = session_for(peer, table, False)
    peer.add_session(r1, table)
    s2 = session_for(peer, table, True)
    peer.add_session(s2, table)
    # Our own completed handshake wins; the unconfirmed responder session can still receive.
    assert (peer.current, peer.previous, peer.next) == (s2, r1, None)
    assert set(table.entries.values()) == {s2, r1}
    peer.drop_sessions(table)
    assert len(table) == 0 and peer.current is peer.previous is peer.next is None
