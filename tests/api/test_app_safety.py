"""Safety: bearer token, size limits, rate limit, secrets never in answers, metrics, /peers."""

from __future__ import annotations

import json
import os

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tether import keys
from tether.api.http.app import make_app
from tether.api.http.ratelimit import RateLimit, RateLimiter, parse_rate_limit
from tether.api.settings import read_token_file
from tether.device.hub import DeviceCounters

from .conftest import PUBLIC
from .support import PEER1, SERVER_PRIVATE, call, new_key, write_device

TOKEN = "s3cret-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def locked_app(hub):
    return make_app(hub, public=PUBLIC, token=TOKEN, rate_limit=None)


def test_peers_lists_no_secrets(locked_app, hub):
    hub.stats = {"bywg0": {keys.decode(PEER1): (100, 200, 1700000000.5)}}
    r = call(locked_app, "GET", "/peers", headers=AUTH)
    assert r.status == 200 and r.headers["content-type"] == "application/json"
    peers = json.loads(r.body)["peers"]
    assert peers == [
        {
            "device": "bywg0",
            "public_key": PEER1,
            "allowed_ips": ["10.8.0.2/32", "fd08::2/128"],
            "live": True,
            "rx_bytes": 100,
            "tx_bytes": 200,
            "last_handshake": 1700000000.5,
            "added_by": None,
            "expires": None,
        }
    ]
    assert SERVER_PRIVATE not in r.text
    r = call(locked_app, "GET", "/devices/bywg0/peers", headers=AUTH)
    assert json.loads(r.body)["peers"][0]["public_key"] == PEER1
    assert call(locked_app, "GET", "/devices/none/peers", headers=AUTH).status == 404


def test_token_file_rules(tmp_path):
    f = tmp_path / "token"
    f.write_text(TOKEN + "\n")
    os.chmod(f, 0o600)
    assert read_token_file(str(f)) == TOKEN
    os.chmod(f, 0o644)
    with pytest.raises(ValueError, match="readable by others"):
        read_token_file(str(f))
    os.chmod(f, 0o600)
    f.write_text("short\n")
    with pytest.raises(ValueError, match="at least 16"):
        read_token_file(str(f))
    with pytest.raises(ValueError, match="cannot read"):
        read_token_file(str(tmp_path / "missing"))


def test_huge_bodies_and_targets_are_refused_unread(app, conf_dir):
    before = (conf_dir / "bywg0.conf").read_bytes()
    r = call(app, "POST", f"/peer/add/ipv4/{new_key()}", body=b"x" * 100_000)
    assert r.status == 413 and r.text.startswith("request body too large")
    r = call(app, "POST", f"/peer/add/ipv4/{new_key()}", headers={"Content-Length": "-5"})
    assert r.status == 413
    r = call(app, "POST", f"/peer/add/ipv4/{new_key()}", headers={"Content-Length": "x"})
    assert r.status == 400
    r = call(app, "GET", "/peer/config/ipv4/" + "A" * 5000)
    assert r.status == 414
    r = call(app, "GET", f"/peer/config/ipv4/{PEER1}", query="format=qr&" + "a=b&" * 1000)
    assert r.status == 414
    assert (conf_dir / "bywg0.conf").read_bytes() == before
    assert call(app, "POST", f"/peer/add/ipv4/{new_key()}", body=b"small").status == 200


def test_rate_limiter_refills_and_bounds_its_table():
    now = [0.0]
    lim = RateLimiter(RateLimit(per_minute=60, burst=2, max_clients=3), clock=lambda: now[0])
    assert lim.take("a") == 0 and lim.take("a") == 0
    assert lim.take("a") == pytest.approx(1.0)
    now[0] = 1.0
    assert lim.take("a") == 0
    for c in "bcde":
        lim.take(c)
    assert len(lim._buckets) == 3


@pytest.mark.parametrize(
    ("text", "expected"),
    [("30", (30.0, 10)), ("30:5", (30.0, 5)), ("1", (1.0, 1)), ("0.5:2", (0.5, 2))],
)
def test_parse_rate_limit(text, expected):
    limit = parse_rate_limit(text)
    assert (limit.per_minute, limit.burst) == expected
    assert parse_rate_limit("0") is None and parse_rate_limit("0:5") is None


@pytest.mark.parametrize("text", ["", "x", "10:", "10:0", "-1", "nan", "inf", "10:x", "1e9"])
def test_parse_rate_limit_refuses(text):
    with pytest.raises(ValueError, match="--api-rate-limit"):
        parse_rate_limit(text)


def test_preshared_keys_are_never_handed_out(tmp_path, hub):
    psk = keys.genpsk()
    text = (
        f"[Interface]\nAddress = 10.8.0.1/24\nListenPort = 1\nPrivateKey = {SERVER_PRIVATE}\n\n"
        f"[Peer]\nPublicKey = {PEER1}\nPresharedKey = {psk}\nAllowedIPs = 10.8.0.2/32\n"
    )
    write_device(hub.config_dir, "bywg0", text)
    app = make_app(hub, public=PUBLIC, rate_limit=None)
    r = call(app, "GET", f"/peer/config/ipv4/{PEER1}")
    assert r.status == 200 and psk not in r.text
    assert "PresharedKey = __PLACEHOLDER__ # this peer has a preshared key" in r.text


def test_metrics(app, hub):
    hub.stats = {"bywg0": {keys.decode(PEER1): (1234, 5678, 1700000000.0)}}
    hub.counts = DeviceCounters(
        handshakes=7,
        drops={"replay": 2, "allowed_ips": 3},
        exit_flows={"tcp": 4, "udp": 1},
        exit_refused={keys.decode(PEER1): 9},
        egress_up={"socks5://alice@192.0.2.9:1080": False, "socks5://10.1.1.1:1080": True},
        queue_delay=(0.25, 100),
    )
    call(app, "GET", "/healthz")
    r = call(app, "GET", "/metrics")
    assert r.status == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(r.text)
        for s in fam.samples
    }
    peer = (("device", "bywg0"), ("public_key", PEER1))
    assert samples[("tetherctl_peer_receive_bytes_total", peer)] == 1234
    assert samples[("tetherctl_peer_transmit_bytes_total", peer)] == 5678
    assert samples[("tetherctl_peer_last_handshake_seconds", peer)] == 1700000000.0
    assert samples[("tetherctl_handshakes_total", (("device", "bywg0"),))] == 7
    assert (
        samples[("tetherctl_dropped_packets_total", (("device", "bywg0"), ("reason", "replay")))]
        == 2
    )
    assert samples[("tetherctl_exit_flows", (("device", "bywg0"), ("protocol", "tcp")))] == 4
    assert samples[("tetherctl_exit_refused_total", peer)] == 9
    assert samples[("tetherctl_peers", (("device", "bywg0"),))] == 1
    for egress, up in (("socks5://alice@192.0.2.9:1080", 0), ("socks5://10.1.1.1:1080", 1)):
        assert samples[("tetherctl_egress_up", (("device", "bywg0"), ("egress", egress)))] == up
    device = (("device", "bywg0"),)
    assert samples[("tetherctl_device_queue_delay_seconds_sum", device)] == 0.25
    assert samples[("tetherctl_device_queue_delay_seconds_count", device)] == 100
    assert samples[("tetherctl_api_requests_total", (("method", "GET"), ("status", "200")))] >= 1
    assert SERVER_PRIVATE not in r.text


def test_metrics_survive_a_failing_device(app, hub):
    def broken(name):
        raise RuntimeError("device went away")

    hub.peer_stats = broken
    assert call(app, "GET", "/metrics").status == 200
