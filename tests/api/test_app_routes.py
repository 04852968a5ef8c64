"""Every route of DESIGN.md §5 and its statuses, at the WSGI level, against real device files."""

from __future__ import annotations

import ipaddress
import logging

import pytest

from tether import keys
from tether.api.http.app import make_app
from tether.api.peers.clientconf import PublicEndpoints
from tether.config import store

from .conftest import PUBLIC
from .support import (
    PEER1,
    SERVER_PUBLIC,
    FakeHub,
    call,
    new_key,
    slash_key,
    small_device_dir,
    write_device,
)


def test_add_returns_the_client_config_and_edits_the_file(app, hub, conf_dir):
    key = slash_key()
    r = call(app, "POST", f"/peer/add/any/{key}")
    assert r.status == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    assert r.headers["cache-control"] == "no-store"
    assert r.text == (
        f'# Config for public key "{key}"\n'
        "[Interface]\n"
        "PrivateKey = __PLACEHOLDER__ # replace with your private key\n"
        "Address = 10.8.0.3/32, fd08::3/128\n"
        "DNS = 10.8.0.1\n"
        "MTU = 1380\n"
        "\n"
        "[Peer]\n"
        f"PublicKey = {SERVER_PUBLIC}\n"
        "AllowedIPs = 0.0.0.0/0, ::/0\n"
        "Endpoint = vpn.example.org:51820\n"
    )
    cfg = store.load(conf_dir / "bywg0.conf")
    peer = cfg.peer(keys.decode(key))
    assert [str(n) for n in peer.allowed_ips] == ["10.8.0.3/32", "fd08::3/128"]
    assert hub.applied == [("bywg0", (keys.decode(key),))]
    text = (conf_dir / "bywg0.conf").read_text()
    assert text.startswith("# Office exit. Keep this comment.\n")
    assert "# Alice's laptop\n" in text


@pytest.mark.parametrize(
    ("etype", "endpoint"),
    [
        ("ipv4", "203.0.113.7:51820"),
        ("IPv4", "203.0.113.7:51820"),
        ("IPV6", "[2001:db8::7]:51820"),
        ("Domain", "vpn.example.org:51820"),
        ("ANY", "vpn.example.org:51820"),
    ],
)
def test_endpoint_types_are_case_insensitive(app, etype, endpoint):
    key = new_key()
    r = call(app, "POST", f"/peer/add/{etype}/{key}")
    assert r.status == 200
    assert f"Endpoint = {endpoint}\n" in r.text
    r = call(app, "GET", f"/peer/config/{etype}/{key}")
    assert r.status == 200 and f"Endpoint = {endpoint}\n" in r.text


def test_unconfigured_and_unknown_endpoint_types_are_400(hub, conf_dir):
    app = make_app(hub, public=PublicEndpoints(ipv4="203.0.113.7"), rate_limit=None)
    key = new_key()
    r = call(app, "POST", f"/peer/add/ipv6/{key}")
    assert r.status == 400 and r.text == "no public ipv6 is configured for this device\n"
    assert store.load(conf_dir / "bywg0.conf").peer(keys.decode(key)) is None
    assert call(app, "POST", f"/peer/add/carrier-pigeon/{key}").status == 400
    assert call(app, "GET", f"/peer/config/ipv9/{PEER1}").status == 400
    # `any` falls back to what exists
    assert "Endpoint = 203.0.113.7:51820" in call(app, "POST", f"/peer/add/any/{key}").text


def test_same_key_twice_is_409(app):
    key = new_key()
    assert call(app, "POST", f"/peer/add/ipv4/{key}").status == 200
    r = call(app, "POST", f"/peer/add/ipv4/{key}")
    assert r.status == 409 and r.text == "a peer with this public key already exists\n"
    assert call(app, "POST", f"/peer/add/ipv4/{PEER1}").status == 409


def test_the_devices_own_key_is_refused(app, conf_dir):
    r = call(app, "POST", f"/peer/add/ipv4/{SERVER_PUBLIC}")
    assert r.status == 400
    store.load(conf_dir / "bywg0.conf")  # still a valid file


def test_config_of_existing_and_absent_peers(app):
    r = call(app, "GET", f"/peer/config/ipv4/{PEER1}")
    assert r.status == 200
    assert "Address = 10.8.0.2/32, fd08::2/128\n" in r.text
    r = call(app, "GET", f"/peer/config/ipv4/{new_key()}")
    assert r.status == 404 and r.text == "no peer with this public key\n"


def test_remove_is_idempotent_and_takes_the_comment_along(app, hub, conf_dir):
    r = call(app, "DELETE", f"/peer/remove/{PEER1}")
    assert r.status == 200 and r.text == "peer removed\n"
    text = (conf_dir / "bywg0.conf").read_text()
    assert PEER1 not in text and "Alice" not in text
    assert text.startswith("# Office exit. Keep this comment.\n")
    r = call(app, "DELETE", f"/peer/remove/{PEER1}")
    assert r.status == 200 and r.text == "no such peer (nothing to remove)\n"
    assert hub.applied[-1] == ("bywg0", (keys.decode(PEER1),))


def test_removed_address_waits_in_quarantine(app):
    call(app, "DELETE", f"/peer/remove/{PEER1}")
    r = call(app, "POST", f"/peer/add/ipv4/{new_key()}")
    assert "Address = 10.8.0.3/32, fd08::3/128\n" in r.text  # not 10.8.0.2: freed just now


def test_exhaustion_is_503(tmp_path):
    conf = small_device_dir(tmp_path)
    app = make_app(FakeHub(conf), public=PUBLIC, rate_limit=None)
    assert "Address = 10.9.0.2/32\n" in call(app, "POST", f"/peer/add/ipv4/{new_key()}").text
    r = call(app, "POST", f"/peer/add/ipv4/{new_key()}")
    assert r.status == 503 and "no free address left on device small" in r.text


def test_v6_only_device_gets_v6_routes(tmp_path):
    conf = tmp_path / "c"
    conf.mkdir()
    text = f"[Interface]\nAddress = fd10::1/120\nListenPort = 7\nPrivateKey = {keys.genkey()}\n"
    write_device(conf, "six", text)
    app = make_app(FakeHub(conf, port=7), public=PUBLIC, rate_limit=None)
    r = call(app, "POST", f"/peer/add/ipv6/{new_key()}")
    assert "Address = fd10::2/128\nDNS = 1.1.1.1, 8.8.8.8\n" in r.text
    assert "AllowedIPs = ::/0\n" in r.text and "Endpoint = [2001:db8::7]:7\n" in r.text


def test_named_device_routes_and_default_device(tmp_path):
    conf = tmp_path / "c"
    conf.mkdir()
    write_device(conf, "bywg0")
    other = f"[Interface]\nAddress = 10.20.0.0/24\nListenPort = 9\nPrivateKey = {keys.genkey()}\n"
    write_device(conf, "wg-two", other)
    hub = FakeHub(conf)
    app = make_app(hub, public=PUBLIC, rate_limit=None)
    key = new_key()
    r = call(app, "POST", f"/peer/add/ipv4/{key}")
    assert r.status == 404 and "address one as /devices/<name>/" in r.text
    r = call(app, "POST", f"/devices/wg-two/peer/add/ipv4/{key}")
    assert r.status == 200 and "Address = 10.20.0.1/32\n" in r.text
    assert call(app, "GET", f"/devices/wg-two/peer/config/ipv4/{key}").status == 200
    assert call(app, "GET", f"/devices/bywg0/peer/config/ipv4/{key}").status == 404
    assert call(app, "DELETE", f"/devices/wg-two/peer/remove/{key}").status == 200
    assert call(app, "POST", f"/devices/nosuch/peer/add/ipv4/{key}").status == 404
    app2 = make_app(hub, public=PUBLIC, api_device="wg-two", rate_limit=None)
    # 10.20.0.1 was freed by the removal above and waits in quarantine
    assert "Address = 10.20.0.2/32" in call(app2, "POST", f"/peer/add/ipv4/{key}").text


@pytest.mark.parametrize("name", ["..", ".", "a" * 16, "bad name", "x%00y", "a*b"])
def test_bad_device_names_are_400(app, name):
    r = call(app, "POST", f"/devices/{name}/peer/add/ipv4/{new_key()}")
    assert r.status == 400 and r.text == "invalid device name\n"


def test_dotdot_paths_never_reach_outside_files(app, conf_dir):
    r = call(app, "GET", f"/devices/../peer/config/ipv4/{PEER1}")
    assert r.status == 400
    r = call(app, "GET", f"/devices/bywg0/../../etc/peer/config/ipv4/{PEER1}")
    assert r.status == 404


@pytest.mark.parametrize(
    "bad",
    [
        "not-base64!",
        "10NguWHSLJ0tUOr4AkbTtOEYHoagq1KH/PJSIJ3SwF=",  # 31 bytes
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=A",  # 45 chars
        "10NguWHSLJ0tUOr4AkbTtOEYHoagq1KH/PJSIJ3SwFt=",  # nonzero padding bits
        "10NguWHSLJ0tUOr4AkbTtOEYHoagq1KH_PJSIJ3SwFs=",  # urlsafe alphabet
        "10NguWHSLJ0tUOr4AkbTtOEYHoagq1KH/PJSIJ3SwFs",  # no padding
        "10NguWHSLJ0tUOr4AkbTtOEYHoagq1KH/PJSIJ3SwFs=/",
        "10NguWHSLJ0tUOr4AkbTtOEYHoagq1KH/PJSIJ3SwFs=%20",
        "ÄÄÄÄ",
    ],
)
def test_malformed_keys_are_400_on_every_route(app, bad):
    for method, path in (
        ("POST", f"/peer/add/ipv4/{bad}"),
        ("GET", f"/peer/config/ipv4/{bad}"),
        ("DELETE", f"/peer/remove/{bad}"),
    ):
        r = call(app, method, path)
        assert r.status == 400, (method, path, r.text)
        assert r.text == "invalid public key: expected 32 bytes in standard base64\n"


def test_new_makes_a_key_pair_and_never_stores_or_logs_the_private_key(app, conf_dir, caplog):
    caplog.set_level(logging.DEBUG)
    r = call(app, "POST", "/peer/new/ipv4")
    assert r.status == 200
    line = next(x for x in r.text.splitlines() if x.startswith("PrivateKey = "))
    private = line.split(" = ", 1)[1]
    public = keys.pubkey(private)
    assert f'# Config for public key "{public}"' in r.text
    text = (conf_dir / "bywg0.conf").read_text()
    assert public in text and private not in text
    assert private not in caplog.text
    assert public in caplog.text  # the add is logged, with the public key only


def test_apply_failure_is_503_and_rolls_the_file_back(app, hub, conf_dir):
    before = (conf_dir / "bywg0.conf").read_bytes()
    hub.fail_apply = "device bywg0 is not running"
    key = new_key()
    r = call(app, "POST", f"/peer/add/ipv4/{key}")
    assert r.status == 503
    assert r.text == "the peer could not be applied: device bywg0 is not running\n"
    assert (conf_dir / "bywg0.conf").read_bytes() == before
    hub.fail_apply = None
    r = call(app, "POST", f"/peer/add/ipv4/{key}")  # a retry works and gets the same address
    assert r.status == 200 and "Address = 10.8.0.3/32" in r.text


def test_listen_port_from_the_running_device_else_the_file(app, hub, conf_dir):
    hub.port = 40404  # what the running device bound
    assert "Endpoint = 203.0.113.7:40404\n" in call(app, "GET", f"/peer/config/ipv4/{PEER1}").text
    hub.port = None  # not running: the file's ListenPort
    assert "Endpoint = 203.0.113.7:51820\n" in call(app, "GET", f"/peer/config/ipv4/{PEER1}").text
    path = conf_dir / "bywg0.conf"
    path.write_text(path.read_text().replace("ListenPort = 51820\n", ""))
    before = path.read_bytes()
    r = call(app, "POST", f"/peer/add/ipv4/{new_key()}")
    assert r.status == 503 and "no known listen port" in r.text
    assert path.read_bytes() == before
    assert call(app, "GET", f"/peer/config/ipv4/{PEER1}").status == 503


def test_invalid_file_is_503_without_details(app, conf_dir, caplog):
    (conf_dir / "bywg0.conf").write_text("[Interface]\nPrivateKey = nope\n")
    r = call(app, "POST", f"/peer/add/ipv4/{new_key()}")
    assert r.status == 503
    assert r.text == "the file of device bywg0 is invalid; the operator must fix it\n"
    assert "bywg0.conf:2" in caplog.text  # the operator gets file:line in the log
    assert call(app, "GET", f"/peer/config/ipv4/{PEER1}").status == 503


def test_vanished_device_file_is_404(app, hub, conf_dir):
    hub.names = ["bywg0"]  # the daemon still lists it for a moment
    (conf_dir / "bywg0.conf").unlink()
    assert call(app, "POST", f"/peer/add/ipv4/{new_key()}").status == 404


def test_hand_edit_between_requests_is_respected(app, conf_dir):
    assert "10.8.0.3/32" in call(app, "POST", f"/peer/add/ipv4/{new_key()}").text
    path = conf_dir / "bywg0.conf"
    hand = new_key()
    path.write_text(
        path.read_text() + f"\n# by hand\n[Peer]\nPublicKey = {hand}\n"
        "AllowedIPs = 10.8.0.4/31, fd08::4/127\n"
    )
    r = call(app, "POST", f"/peer/add/ipv4/{new_key()}")
    assert "Address = 10.8.0.6/32, fd08::6/128" in r.text
    assert "# by hand\n" in path.read_text()


def test_health_methods_and_unknown_routes(app):
    r = call(app, "GET", "/healthz")
    assert r.status == 200 and r.text == "ok: 1 device\n"
    r = call(app, "GET", f"/peer/add/ipv4/{PEER1}")
    assert r.status == 405 and r.text == "method not allowed\n"
    r = call(app, "GET", "/nothing/here")
    assert r.status == 404 and r.text == "not found\n"
    assert r.headers["content-type"].startswith("text/plain")


def test_allowed_ips_are_host_routes(app):
    r = call(app, "POST", f"/peer/add/ipv4/{new_key()}")
    addr = r.text.split("Address = ")[1].split("\n")[0]
    for net in addr.split(", "):
        assert ipaddress.ip_network(net).num_addresses == 1
