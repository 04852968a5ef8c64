"""Fixtures of the fleet tests: a real single-member etcd on loopback."""

from __future__ import annotations

import pytest

from ..e2e.etcdlab import EtcdCluster


@pytest.fixture
def etcd(tmp_path):
    cluster = EtcdCluster(tmp_path)
    try:
        yield cluster
    finally:
        cluster.close()
