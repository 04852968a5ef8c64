"""Invites (issue 11): the store's rules, the invite and join routes at the WSGI level, and
redemption racing in threads and processes. The page itself: test_join_page.py; in a browser:
test_join_browser.py; the commands: tests/test_cli_invite.py."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tether import keys
from tether.api.http.app import make_app
from tether.api.http.ratelimit import RateLimit
from tether.api.hub import FileOnlyHub
from tether.api.join import invites
from tether.api.join.invites import Invite, JoinLinks
from tether.api.peers.clientconf import PublicEndpoints
from tether.api.registry import FileRegistry, state_path
from tether.api.state import DeviceState
from tether.config import store

from .conftest import PUBLIC
from .support import FakeHub, call, new_key, slash_key, small_device_dir, write_device

REPO = Path(__file__).resolve().parents[2]
TOKEN = "admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
NOW = 1_800_000_000.0


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def state_of(conf_dir, name="bywg0") -> dict:
    return json.loads(state_path(conf_dir, name).read_text())


def make(hub, **kw):
    kw.setdefault("rate_limit", None)
    kw.setdefault("token", TOKEN)
    return make_app(hub, public=PUBLIC, links=JoinLinks("https://vpn.example.org"), **kw)


def create(app, query="", headers=ADMIN, **kw) -> dict:
    r = call(app, "POST", "/invites", query, headers=headers, **kw)
    assert r.status == 200, r.text
    return json.loads(r.text)


def redeem(app, code, key=None, **kw):
    return call(app, "POST", f"/join/{code}/{key or new_key()}", **kw)


# -- the store --------------------------------------------------------------------------------


def test_codes_are_192_random_bits_and_only_their_hash_is_stored(tmp_path):
    reg = FileRegistry(tmp_path / "d.state.json")
    codes = [
        reg.update(lambda s: invites.create(s, NOW, uses=1, expires_in=60, endpoint_type="any"))
        for _ in range(50)
    ]
    assert len(set(codes)) == 50
    for code in codes:
        assert invites.is_code(code) and len(code) == 32  # 24 bytes, URL-safe base64
    text = (tmp_path / "d.state.json").read_text()
    assert not any(code in text for code in codes)  # a leaked file holds no working invite
    digests = set(json.loads(text)["invites"])
    assert digests == {invites.code_hash(c) for c in codes}
    assert (tmp_path / "d.state.json").stat().st_mode & 0o777 == 0o600


def test_a_code_is_found_by_comparing_every_hash_and_odd_texts_find_nothing():
    state = DeviceState()
    codes = [
        invites.create(state, NOW, uses=1, expires_in=0, endpoint_type="any") for _ in range(3)
    ]
    for code in codes:
        assert invites.find(state.invites, code) == invites.code_hash(code)
    swapped = codes[0].swapcase()
    odd = ["", "x", codes[0][:-1], codes[0] + "A", "A" * 10**6, "é" * 32, codes[0][:31] + "/"]
    odd += ["../" * 11, "A" * 32, swapped if swapped != codes[0] else "B" * 32]
    for text in odd:
        assert invites.find(state.invites, text) is None, text[:40]


def test_an_invite_is_named_by_its_id_its_code_or_its_url():
    state = DeviceState()
    code = invites.create(state, NOW, uses=1, expires_in=0, endpoint_type="any")
    digest = invites.code_hash(code)
    ident = invites.invite_id(digest)
    for text in (ident, code, f"https://vpn.example.org/join/{code}", f"/join/{code}/"):
        assert invites.by_id(state.invites, text) == digest
    for text in ("", "0" * 10, ident[:9], f"https://x/join/{code[:-1]}", "join/"):
        assert invites.by_id(state.invites, text) is None


def test_uses_expiry_give_back_and_pruning():
    state = DeviceState()
    code = invites.create(state, NOW, uses=2, expires_in=3600, endpoint_type="ipv4")
    digest = invites.code_hash(code)
    inv = state.invites[digest]
    assert (inv.uses, inv.used, inv.expires, inv.endpoint_type) == (2, 0, NOW + 3600, "ipv4")
    assert invites.take(state, digest, NOW + 1) == invites.USABLE
    assert invites.take(state, digest, NOW + 2) == invites.USABLE
    assert invites.take(state, digest, NOW + 3) == invites.USED_UP
    assert state.invites[digest].used == 2 and state.invites[digest].last_used == NOW + 2
    invites.give_back(state, digest)
    assert state.invites[digest].status(NOW + 4) == invites.USABLE
    assert state.invites[digest].status(NOW + 3600) == invites.EXPIRED
    state.prune(NOW + 3600 + invites.KEEP_DONE - 1)
    assert digest in state.invites  # kept a day, so the page can say "expired"
    state.prune(NOW + 3600 + invites.KEEP_DONE)
    assert digest not in state.invites
    never = invites.code_hash(invites.create(state, NOW, uses=1, expires_in=0, endpoint_type="any"))
    state.prune(NOW + 10 * 365 * 86400)
    assert state.invites[never].expires is None and never in state.invites
    assert invites.take(state, "f" * 64, NOW) == ""


def test_a_device_holds_at_most_max_invites_usable_ones(monkeypatch):
    monkeypatch.setattr(invites, "MAX_INVITES", 3)
    state = DeviceState()
    for _ in range(3):
        invites.create(state, NOW, uses=1, expires_in=60, endpoint_type="any")
    with pytest.raises(invites.InviteError, match="3 usable invites"):
        invites.create(state, NOW, uses=1, expires_in=60, endpoint_type="any")
    invites.create(state, NOW + 61, uses=1, expires_in=60, endpoint_type="any")  # others expired


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (None, 1),
        ("", 1),
        ("3", 3),
        (" 10000 ", 10000),
        ("0", None),
        ("10001", None),
        ("-1", None),
        ("two", None),
        ("1.5", None),
        ("9" * 400, None),
    ],
)
def test_uses(text, expected):
    if expected is None:
        with pytest.raises(invites.InviteError) as e:
            invites.parse_uses(text)
        assert "\n" not in str(e.value) and len(str(e.value)) < 120
    else:
        assert invites.parse_uses(text) == expected


def test_join_url_base():
    base = invites.base_url
    assert (
        base(
            "https://x.org/vpn",
            domain=None,
            ipv4=None,
            ipv6=None,
            listen_host=None,
            listen_port=None,
        )
        == "https://x.org/vpn"
    )
    assert (
        base(
            None,
            domain="vpn.example.org",
            ipv4="203.0.113.7",
            ipv6=None,
            listen_host="*",
            listen_port=9090,
        )
        == "http://vpn.example.org:9090"
    )
    assert (
        base(None, domain=None, ipv4=None, ipv6="2001:db8::7", listen_host="*", listen_port=9090)
        == "http://[2001:db8::7]:9090"
    )
    assert (
        base(None, domain=None, ipv4=None, ipv6=None, listen_host="198.51.100.1", listen_port=80)
        == "http://198.51.100.1:80"
    )
    assert base(None, domain=None, ipv4=None, ipv6=None, listen_host="*", listen_port=9090) is None
    assert JoinLinks().url("abc") == "/join/abc"


# -- the routes: who may do what ---------------------------------------------------------------


def test_only_the_admin_makes_lists_and_revokes_invites(hub, conf_dir):
    app = make(hub)
    for method, path in (("POST", "/invites"), ("GET", "/invites"), ("DELETE", "/invites/x")):
        assert call(app, method, path).status == 401
        other = {"Authorization": "Bearer not-the-admin-token"}
        assert call(app, method, path, headers=other).status == 403
    doc = create(app, "uses=3&expires=2h&endpoint_type=ipv4")
    assert doc["url"] == f"https://vpn.example.org/join/{doc['code']}"
    assert (doc["uses"], doc["used"], doc["endpoint_type"], doc["status"]) == (
        3,
        0,
        "ipv4",
        "usable",
    )
    assert doc["expires"] - doc["created"] in (7200, 7201)
    listed = json.loads(call(app, "GET", "/invites", headers=ADMIN).text)["invites"]
    assert [i["id"] for i in listed] == [doc["id"]] and "code" not in listed[0]
    assert doc["code"] not in call(app, "GET", "/devices/bywg0/invites", headers=ADMIN).text
    r = call(app, "DELETE", f"/invites/{doc['id']}", headers=ADMIN)
    assert r.status == 200 and r.text == f"invite {doc['id']} revoked\n"
    assert call(app, "DELETE", f"/invites/{doc['id']}", headers=ADMIN).status == 404
    assert redeem(app, doc["code"]).status == 404  # revoked: no such invite


def test_invite_options_are_checked(hub):
    app = make(hub)
    form = {"Content-Type": "application/x-www-form-urlencoded", **ADMIN}
    doc = create(app, body=b"uses=2&expires=0", headers=form)
    assert doc["uses"] == 2 and doc["expires"] is None
    for query, message in (
        ("uses=0", "uses: expected a whole number"),
        ("uses=x", "uses: 'x' is not a whole number"),
        ("expires=soon", "expires: 'soon' is not a duration"),
        ("endpoint_type=carrier-pigeon", "unknown endpoint type"),
        ("colour=red", "unknown option"),
        ("uses=1&uses=2", "uses is given twice"),
        ("&".join(f"uses{i}=1" for i in range(40)), "cannot read the options"),
    ):
        r = call(app, "POST", "/invites", query, headers=ADMIN)
        assert r.status == 400 and message in r.text and r.text.count("\n") == 1, (query, r.text)
    r = call(
        app, "POST", "/invites", body=b"{}", headers={"Content-Type": "application/json", **ADMIN}
    )
    assert r.status == 400 and "urlencoded" in r.text
    no_v6 = make_app(hub, public=PublicEndpoints(ipv4="203.0.113.7"), token=TOKEN, rate_limit=None)
    r = call(no_v6, "POST", "/invites", "endpoint_type=ipv6", headers=ADMIN)
    assert r.status == 400 and "no public ipv6" in r.text


def test_a_single_use_invite_admits_one_peer_then_says_it_is_used(hub, conf_dir, caplog):
    caplog.set_level(logging.INFO, "tether.api")
    app = make(hub, self_service="invite")
    doc = create(app, "endpoint_type=ipv4")
    key = slash_key()
    r = redeem(app, doc["code"], key)
    assert r.status == 200, r.text
    assert r.headers["tether-peer-secret"] and "Endpoint = 203.0.113.7:51820" in r.text
    assert "PrivateKey = __PLACEHOLDER__" in r.text  # the browser fills in its own key
    device = (conf_dir / "bywg0.conf").read_text()
    assert f"PublicKey = {key}" in device and f"(invite {doc['id']})" in device
    again = redeem(app, doc["code"])
    assert again.status == 410 and again.text == (
        "this invite has been used already; ask for a new one\n"
    )
    page = call(app, "GET", f"/join/{doc['code']}")
    assert page.status == 410 and 'data-state="closed"' in page.text
    assert 'id="create"' not in page.text
    assert state_of(conf_dir)["invites"][invites.code_hash(doc["code"])]["used"] == 1
    assert doc["code"] not in caplog.text and doc["id"] in caplog.text  # ids in logs, not codes


def test_replaying_a_redemption_adds_no_second_peer(hub, conf_dir):
    app = make(hub)
    doc = create(app, "uses=3")
    key = new_key()
    assert redeem(app, doc["code"], key).status == 200
    assert redeem(app, doc["code"], key).status == 409  # the same request again: exists
    assert (conf_dir / "bywg0.conf").read_text().count(key) == 1
    assert state_of(conf_dir)["invites"][invites.code_hash(doc["code"])]["used"] == 1


def test_invite_peers_are_self_service_peers(hub, conf_dir):
    clock = Clock()
    app = make(hub, clock=clock, peer_expiry=600, self_service_max=1)
    doc = create(app, "uses=5")
    key = new_key()
    assert redeem(app, doc["code"], key).status == 200
    owner = state_of(conf_dir)["owners"][key]
    assert owner["self_service"] and owner["expires"] == NOW + 600  # expires unused
    peers = json.loads(call(app, "GET", "/peers", headers=ADMIN).text)["peers"]
    assert [p["added_by"] for p in peers if p["public_key"] == key] == ["anyone"]
    r = redeem(app, doc["code"])  # the self-service cap counts them
    assert r.status == 503 and "maximum of 1 self-service" in r.text
    assert state_of(conf_dir)["invites"][invites.code_hash(doc["code"])]["used"] == 1


def test_an_expired_invite_admits_nobody(hub, conf_dir):
    clock = Clock()
    app = make(hub, clock=clock)
    doc = create(app, "expires=10m")
    clock.now += 601
    r = redeem(app, doc["code"])
    assert r.status == 410 and "this invite expired at" in r.text
    page = call(app, "GET", f"/join/{doc['code']}")
    assert page.status == 410 and "expired at" in page.text


# -- failures never use up an invite ----------------------------------------------------------


def test_no_free_address_does_not_use_the_invite(tmp_path):
    conf = small_device_dir(tmp_path)
    app = make(FakeHub(conf))
    doc = create(app, "uses=2")
    assert redeem(app, doc["code"]).status == 200
    r = redeem(app, doc["code"])
    assert r.status == 503 and "no free address" in r.text
    assert state_of(conf, "small")["invites"][invites.code_hash(doc["code"])]["used"] == 1


def test_an_add_the_device_cannot_apply_gives_the_use_back(hub, conf_dir):
    app = make(hub)
    doc = create(app)
    before = (conf_dir / "bywg0.conf").read_bytes()
    hub.fail_apply = "device bywg0 is not running"
    key = new_key()
    r = redeem(app, doc["code"], key)
    assert r.status == 503 and "could not be applied" in r.text
    assert (conf_dir / "bywg0.conf").read_bytes() == before
    st = state_of(conf_dir)
    assert st["invites"][invites.code_hash(doc["code"])]["used"] == 0 and key not in st["owners"]
    hub.fail_apply = None
    assert redeem(app, doc["code"], key).status == 200  # the invite still works


def test_a_device_file_that_cannot_be_written_gives_the_use_back(hub, conf_dir, monkeypatch):
    app = make(hub)
    doc = create(app)
    real = store.atomic_write

    def full_disk(path, data, **kw):
        if str(path).endswith(".conf"):
            raise OSError(28, "No space left on device")
        return real(path, data, **kw)

    monkeypatch.setattr(store, "atomic_write", full_disk)
    key = new_key()
    with pytest.raises(OSError):
        app.tether_onboarding.redeem(None, doc["code"], keys.decode(key))
    monkeypatch.setattr(store, "atomic_write", real)
    st = state_of(conf_dir)
    assert st["invites"][invites.code_hash(doc["code"])]["used"] == 0 and key not in st["owners"]
    assert key not in (conf_dir / "bywg0.conf").read_text()
    assert redeem(app, doc["code"], key).status == 200


# -- self-service modes -----------------------------------------------------------------------


def test_invite_mode_admits_only_invites_and_the_admin(hub, conf_dir):
    app = make(hub, self_service="invite")
    r = call(app, "POST", f"/peer/add/any/{new_key()}")
    assert r.status == 401 and "needs an invite" in r.text
    assert call(app, "POST", "/peer/new/any").status == 401
    assert call(app, "GET", "/join").status == 403
    assert call(app, "POST", f"/peer/add/any/{new_key()}", headers=ADMIN).status == 200
    doc = create(app)
    assert call(app, "GET", f"/join/{doc['code']}").status == 200
    assert redeem(app, doc["code"]).status == 200


def test_off_mode_refuses_invites_too(hub):
    app = make(hub, self_service="off")
    doc = create(app)  # the admin may still make them (for later)
    assert call(app, "GET", f"/join/{doc['code']}").status == 403
    r = redeem(app, doc["code"])
    assert r.status == 403 and "invites are not accepted" in r.text
    assert call(app, "GET", "/join").status == 403


def test_open_mode_serves_the_plain_join_page_and_invites(hub):
    app = make(hub)
    r = call(app, "GET", "/join")
    assert r.status == 200 and 'data-add="./devices/bywg0/peer/add/any"' in r.text
    doc = create(app)
    assert redeem(app, doc["code"]).status == 200


# -- abuse ------------------------------------------------------------------------------------


def test_guessing_codes_is_rate_limited_and_odd_codes_are_harmless(hub, conf_dir):
    app = make(hub, rate_limit=RateLimit(per_minute=0.001, burst=5))
    doc = create(app)  # the admin is never limited
    guesses = [invites.new_code() for _ in range(5)]
    assert [call(app, "GET", f"/join/{g}", remote="198.51.100.9").status for g in guesses] == [
        404
    ] * 5
    r = call(app, "GET", f"/join/{doc['code']}", remote="198.51.100.9")
    assert r.status == 429 and "Retry-After".lower() in r.headers  # even the right code now
    assert redeem(app, doc["code"], remote="198.51.100.9").status == 429
    assert redeem(app, doc["code"], remote="198.51.100.10").status == 200  # another client
    for odd in ("x" * 2000, "%00", "..", "é", "A" * 33, doc["code"] + "%2F"):
        r = call(app, "GET", f"/join/{odd}", remote="203.0.113.99")
        assert r.status in (404, 414, 429), (odd, r.status)
    assert call(app, "GET", "/join/" + "A" * 5000, remote="203.0.113.98").status == 414
    assert state_of(conf_dir)["invites"][invites.code_hash(doc["code"])]["used"] == 1


def two_devices(tmp_path, first: str, second: str, invite_on: str):
    """A config dir with two devices, an app serving both and an invite of `invite_on`."""
    conf = tmp_path / "c"
    conf.mkdir()
    write_device(conf, first)
    write_device(conf, second)
    app = make(FakeHub(conf))
    doc = json.loads(call(app, "POST", f"/devices/{invite_on}/invites", headers=ADMIN).text)
    return conf, app, doc


def test_a_code_of_one_device_is_not_found_under_another(tmp_path):
    _, app, doc = two_devices(tmp_path, "one", "two", "one")
    assert call(app, "GET", f"/devices/two/join/{doc['code']}").status == 404
    r = call(app, "GET", f"/join/{doc['code']}")  # the bare route looks in every device
    assert r.status == 200 and f'data-add="../devices/one/join/{doc["code"]}"' in r.text
    assert call(app, "POST", f"/devices/two/join/{doc['code']}/{new_key()}").status == 404
    assert call(app, "POST", f"/devices/one/join/{doc['code']}/{new_key()}").status == 200


def test_one_devices_broken_state_does_not_break_the_others_invites(tmp_path):
    """The bare /join/<code> (the link invites print) looks in every device: a device whose
    state file is unreadable is skipped, not a 503 for everyone; a code found nowhere else
    still says that something is wrong."""
    conf, app, doc = two_devices(tmp_path, "a", "b", "b")
    state_path(conf, "a").write_text("{oops")
    assert call(app, "GET", f"/join/{doc['code']}").status == 200
    assert redeem(app, doc["code"]).status == 200
    assert call(app, "GET", f"/join/{invites.new_code()}").status == 503
    assert call(app, "GET", f"/devices/a/join/{doc['code']}").status == 503


def test_every_answer_under_the_join_urls_carries_the_pages_headers(hub, conf_dir):
    """Not only the page: a rate-limited answer, a refused redemption, a 404 and the static
    files carry the CSP, nosniff, no-referrer and no framing."""
    app = make(hub, rate_limit=RateLimit(per_minute=0.001, burst=1))
    doc = create(app)
    answers = [
        call(app, "GET", f"/join/{invites.new_code()}", remote="198.51.100.7"),  # 404
        call(app, "GET", f"/join/{doc['code']}", remote="198.51.100.7"),  # 429
        redeem(app, doc["code"], key="not-a-key", remote="198.51.100.8"),  # 400
        call(app, "GET", "/static/join.js"),
        call(app, "GET", "/devices/bywg0/join/x", remote="198.51.100.9"),
    ]
    assert [a.status for a in answers][:2] == [404, 429]
    for a in answers:
        headers = {k.lower(): v for k, v in a.headers.items()}
        assert "default-src 'none'" in headers["content-security-policy"], a.status
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"
        assert headers["x-frame-options"] == "DENY"


# -- racing redemptions -----------------------------------------------------------------------


def test_threads_racing_for_a_single_use_code_admit_exactly_one(hub, conf_dir):
    app = make(hub)
    doc = create(app)
    go = threading.Event()
    results = []

    def phone():
        go.wait()
        results.append(redeem(app, doc["code"]).status)

    threads = [threading.Thread(target=phone) for _ in range(16)]
    for t in threads:
        t.start()
    go.set()
    for t in threads:
        t.join(30)
    assert sorted(results) == [200] + [410] * 15
    assert (conf_dir / "bywg0.conf").read_text().count("(invite ") == 1


WORKER = r"""
import json, os, sys, time
from concurrent.futures import ThreadPoolExecutor
sys.path.insert(0, sys.argv[1])
from tether import keys
from tether.api.peers.clientconf import PublicEndpoints
from tether.api.hub import FileOnlyHub
from tether.api.join.onboarding import Onboarding
from tether.api.peers.service import PeerError, PeerService

conf, go, code = sys.argv[2], sys.argv[3], sys.argv[4]
onboarding = Onboarding(PeerService(FileOnlyHub(conf), PublicEndpoints(ipv4="203.0.113.7")))
while not os.path.exists(go):
    time.sleep(0.002)

def phone(_):
    key = keys.public_from_private(keys.generate_private())
    try:
        onboarding.redeem(None, code, key)
        return 200
    except PeerError as e:
        return e.status

with ThreadPoolExecutor(4) as pool:
    print(json.dumps(list(pool.map(phone, range(4)))))
"""


@pytest.mark.parametrize("uses", [1, 3])
def test_processes_racing_for_an_invite_admit_exactly_its_uses(tmp_path, uses):
    conf = tmp_path / "conf"
    conf.mkdir()
    write_device(conf)
    app = make(FileOnlyHub(conf))
    doc = create(app, f"uses={uses}")
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(REPO), str(conf), str(go), doc["code"]],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    time.sleep(0.5)  # let them all start and wait
    go.touch()
    statuses = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        statuses += json.loads(out)
    assert sorted(statuses) == [200] * uses + [410] * (16 - uses)
    device = store.load(conf / "bywg0.conf").config
    assert len(device.peers) == 1 + uses  # PEER1 and the admitted ones
    st = state_of(conf)
    assert st["invites"][invites.code_hash(doc["code"])]["used"] == uses
    assert len(st["owners"]) == uses


def test_invites_survive_a_restart_and_are_shared_between_processes(tmp_path):
    conf = tmp_path / "conf"
    conf.mkdir()
    write_device(conf)
    first = make(FileOnlyHub(conf))
    doc = create(first, "uses=2")
    second = make(FileOnlyHub(conf))  # another process, or the daemon after a restart
    assert redeem(second, doc["code"]).status == 200
    listed = json.loads(call(first, "GET", "/invites", headers=ADMIN).text)["invites"]
    assert listed[0]["used"] == 1
    assert isinstance(
        FileRegistry(state_path(conf, "bywg0")).read().invites[invites.code_hash(doc["code"])],
        Invite,
    )
