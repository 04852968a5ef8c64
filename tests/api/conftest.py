from __future__ import annotations

import pytest

from tether.api.http.app import make_app
from tether.api.peers.clientconf import PublicEndpoints

from .support import FakeHub, write_device

PUBLIC = PublicEndpoints(ipv4="203.0.113.7", ipv6="2001:db8::7", domain="vpn.example.org")


@pytest.fixture
def conf_dir(tmp_path):
    d = tmp_path / "conf"
    d.mkdir()
    write_device(d)
    return d


@pytest.fixture
def hub(conf_dir):
    return FakeHub(conf_dir)


@pytest.fixture
def app(hub):
    return make_app(hub, public=PUBLIC, rate_limit=None)
