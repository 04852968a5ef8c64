"""The anti-replay window: unit tests at its edges and a set-based model under Hypothesis."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tether.wireguard.constants import REJECT_AFTER_MESSAGES
from tether.wireguard.replay import WINDOW_SIZE, ReplayFilter


class Model:
    """What the window promises, without the ring: each counter once, at most 8128 behind."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.last = 0

    def check(self, counter: int) -> bool:
        if not 0 <= counter < REJECT_AFTER_MESSAGES or counter in self.seen:
            return False
        if counter <= self.last and self.last - counter > WINDOW_SIZE:
            return False
        self.seen.add(counter)
        self.last = max(self.last, counter)
        return True


def test_window_size_is_wireguards():
    assert WINDOW_SIZE == 8128
    assert REJECT_AFTER_MESSAGES == 2**64 - 2**13 - 1


def test_in_order_and_duplicates():
    f = ReplayFilter()
    assert all(f.check_and_update(i) for i in range(20000))
    assert not any(f.check_and_update(i) for i in range(20000))


def test_zero_is_accepted_once():
    f = ReplayFilter()
    assert f.check_and_update(0)
    assert not f.check_and_update(0)


def test_window_edges():
    f = ReplayFilter()
    top = 100_000
    assert f.check_and_update(top)
    assert not f.check_and_update(top - WINDOW_SIZE - 1)  # one past the window
    assert f.check_and_update(top - WINDOW_SIZE)  # oldest counter still inside
    assert not f.check_and_update(top - WINDOW_SIZE)
    assert f.check_and_update(top - 1)
    assert f.check_and_update(top + 1)
    assert not f.check_and_update(top - WINDOW_SIZE)  # window moved past it


def test_reordering_within_window_is_accepted():
    f = ReplayFilter()
    order = list(range(0, 8000, 2)) + list(range(1, 8000, 2))
    assert all(f.check_and_update(c) for c in order)


def test_jump_clears_stale_bits():
    f = ReplayFilter()
    for c in range(200):
        f.check_and_update(c)
    jump = 200 + 128 * 64 * 3 + 5  # wraps the ring several times
    assert f.check_and_update(jump)
    # Counters whose ring slots held old bits must read as unseen if inside the window.
    assert f.check_and_update(jump - 64 * 127)
    assert f.check_and_update(jump - 1)
    # A jump of exactly one ring length.
    g = ReplayFilter()
    assert g.check_and_update(64)
    assert g.check_and_update(64 + 128 * 64)
    assert g.check_and_update(64 + 127 * 64)
    assert not g.check_and_update(64)


def test_limit():
    f = ReplayFilter()
    assert not f.check_and_update(REJECT_AFTER_MESSAGES)
    assert not f.check_and_update(2**64 - 1)
    assert not f.check_and_update(-1)
    assert f.check_and_update(REJECT_AFTER_MESSAGES - 1)
    assert not f.check_and_update(REJECT_AFTER_MESSAGES - 1)
    assert f.check_and_update(REJECT_AFTER_MESSAGES - 2)
    assert not f.check_and_update(REJECT_AFTER_MESSAGES - 2 - WINDOW_SIZE)


def test_reset_forgets():
    f = ReplayFilter()
    for c in (5, 10_000, 10_001):
        assert f.check_and_update(c)
    f.reset()
    assert f.check_and_update(5)
    assert f.check_and_update(0)


def counters(base: int) -> st.SearchStrategy[int]:
    near = st.integers(-300, 9000).map(lambda d: max(0, base + d))
    return st.one_of(
        st.integers(0, 20_000),
        near,
        st.integers(0, 2**64 + 5),
        st.integers(REJECT_AFTER_MESSAGES - 20_000, REJECT_AFTER_MESSAGES + 3),
    )


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_matches_model(data):
    f, model = ReplayFilter(), Model()
    base = data.draw(st.sampled_from([0, 10_000, 2**40, REJECT_AFTER_MESSAGES - 9000]))
    steps = data.draw(st.lists(counters(base), max_size=300))
    for counter in steps:
        assert f.check_and_update(counter) == model.check(counter), counter


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, REJECT_AFTER_MESSAGES - 20_000),
    st.lists(
        st.one_of(
            st.integers(-9000, 9000),
            # Steps that land on a ring slot holding another lap's bits, or on the window edge.
            st.sampled_from([8192, 8191, 8193, 8128, -8128, -8129, 64, -64, 2**20]),
        ),
        min_size=1,
        max_size=400,
    ),
)
def test_walk_matches_model(start, deltas):
    f, model = ReplayFilter(), Model()
    counter = start
    for delta in deltas:
        counter = max(0, counter + delta)
        assert f.check_and_update(counter) == model.check(counter), counter
