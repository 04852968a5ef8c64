"""The simulated peer of `simpeer.py` is a checker too: make sure it can fail."""

from __future__ import annotations

import pytest

from tether.netstack.tcp import TcpConfig

from .simpeer import Harness


def test_the_checker_is_not_vacuous() -> None:
    """The peer notices a single wrong byte (here: the record of what the host wrote is altered)."""
    h = Harness(config=TcpConfig(), peer_kw={}, isns=(1, 2))
    h.advance(0.1)
    assert h.conn.receive_host_data(b"hello", h.now) == 5
    h.host_sent += b"hellp"
    h.pump()
    with pytest.raises(AssertionError, match="corrupted"):
        h.advance(0.1)
