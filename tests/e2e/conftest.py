"""Fixtures for end-to-end tests."""

import pytest

from .netlab import NetLab


@pytest.fixture
def lab():
    lab = NetLab()
    try:
        yield lab
    finally:
        lab.close()
