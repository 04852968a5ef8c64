"""FileOnlyHub: file edits alone, or waiting for a running device (over its UAPI socket)."""

from __future__ import annotations

import ipaddress
import threading
import time

import pytest

from tether import keys
from tether.api.http.app import make_app
from tether.api.hub import FileOnlyHub
from tether.device.hub import ApplyError, DeviceHub
from tether.device.uapi.protocol import DeviceSnapshot, PeerSnapshot

from .conftest import PUBLIC
from .support import PEER1, SERVER_PRIVATE, FakeHub, FakeUapi, call, new_key


def snapshot(*peers):
    return DeviceSnapshot(
        private_key=keys.decode(SERVER_PRIVATE),
        listen_port=40001,
        peers=[
            PeerSnapshot(
                keys.decode(k),
                allowed_ips=[ipaddress.ip_network(n) for n in nets],
                rx_bytes=11,
                tx_bytes=22,
                last_handshake_time_sec=1700000000,
                last_handshake_time_nsec=500_000_000,
            )
            for k, nets in peers
        ],
    )


@pytest.fixture
def uapi(tmp_path):
    fake = FakeUapi(tmp_path / "run", "bywg0", snapshot((PEER1, ["10.8.0.2/32", "fd08::2/128"])))
    yield fake
    fake.close()


def test_both_hubs_satisfy_the_protocol(conf_dir):
    assert isinstance(FileOnlyHub(conf_dir), DeviceHub)
    assert isinstance(FakeHub(conf_dir), DeviceHub)


def test_without_a_running_device(conf_dir, tmp_path):
    hub = FileOnlyHub(conf_dir, str(tmp_path / "run"))
    assert hub.device_names() == ["bywg0"]
    assert hub.listen_port("bywg0") is None  # not running: the API uses the file's ListenPort
    hub.apply_now("bywg0", (keys.decode(PEER1),))  # returns at once
    assert not hub.peer_is_live("bywg0", keys.decode(PEER1))
    assert hub.peer_stats("bywg0") == []
    assert hub.counters("bywg0").handshakes == 0


def test_reads_the_running_device(conf_dir, uapi, tmp_path):
    hub = FileOnlyHub(conf_dir, str(tmp_path / "run"))
    assert hub.listen_port("bywg0") == 40001  # the port really bound, not the file's
    assert hub.peer_is_live("bywg0", keys.decode(PEER1))
    [stats] = hub.peer_stats("bywg0")
    assert (stats.rx_bytes, stats.tx_bytes, stats.last_handshake) == (11, 22, 1700000000.5)


def test_apply_waits_for_the_daemon_and_times_out(conf_dir, uapi, tmp_path):
    hub = FileOnlyHub(conf_dir, str(tmp_path / "run"), live_timeout=0.3, poll_interval=0.01)
    app = make_app(hub, public=PUBLIC, rate_limit=None)
    key = new_key()

    applied_at = []

    def daemon_applies_later():
        time.sleep(0.1)
        uapi.snapshot = snapshot(
            (PEER1, ["10.8.0.2/32", "fd08::2/128"]), (key, ["10.8.0.3/32", "fd08::3/128"])
        )
        applied_at.append(time.monotonic())

    t = threading.Thread(target=daemon_applies_later)
    t.start()
    r = call(app, "POST", f"/peer/add/ipv4/{key}")
    returned_at = time.monotonic()
    t.join()
    assert r.status == 200 and returned_at >= applied_at[0]
    assert "Endpoint = 203.0.113.7:40001" in r.text
    # a daemon that never applies: 503 and the file is as before
    before = (conf_dir / "bywg0.conf").read_bytes()
    r = call(app, "POST", f"/peer/add/ipv4/{new_key()}")
    assert r.status == 503 and "did not apply the change within 0.3 s" in r.text
    assert (conf_dir / "bywg0.conf").read_bytes() == before
    # a removal the daemon does not apply is reported too (the file keeps the removal)
    r = call(app, "DELETE", f"/peer/remove/{PEER1}")
    assert r.status == 503 and r.text.startswith("the removal could not be applied")
    with pytest.raises(ApplyError):
        hub.apply_now("bywg0", (keys.decode(PEER1),))
