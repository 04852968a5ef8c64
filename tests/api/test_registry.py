"""The per-device state file: strict parser, round trip, locking, corrupt files, quarantine."""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import stat
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether import keys
from tether.api.http.app import make_app
from tether.api.join.invites import Invite
from tether.api.registry import FileRegistry, record_file_change, state_path
from tether.api.state import DeviceState, Owner, Release, StateError, parse, render
from tether.config import store

from .conftest import PUBLIC
from .support import PEER1, call, new_key

KEY = new_key()
GOOD = {
    "schema": 1,
    "owners": {
        KEY: {
            "secret_sha256": "ab" * 32,
            "added": 1700000000,
            "self_service": True,
            "expires": 1700003600,
            "addresses": ["10.8.0.3/32", "fd08::3/128"],
        }
    },
    "released": {
        "10.8.0.9/32": {"released": 1700000000, "until": 1700000600, "self_service": False}
    },
    "invites": {
        "ef" * 32: {
            "created": 1700000000,
            "expires": 1700086400,
            "uses": 3,
            "used": 1,
            "endpoint_type": "ipv4",
            "last_used": 1700000100,
        }
    },
}


def encode(doc) -> bytes:
    return json.dumps(doc).encode()


def test_round_trip_and_layout():
    state = parse(encode(GOOD), "x")
    assert state.owners[KEY].addresses == ("10.8.0.3/32", "fd08::3/128")
    assert state.released["10.8.0.9/32"] == Release(1700000000, 1700000600, False)
    assert state.invites == {"ef" * 32: Invite(1700000000, 1700086400, 3, 1, "ipv4", 1700000100)}
    data = render(state)
    assert parse(data, "x") == state
    assert json.loads(data) == GOOD
    assert data.decode().count("\n") >= 5  # one owner per line: readable, diffable


def bad(mutate):
    doc = json.loads(json.dumps(GOOD))
    mutate(doc)
    return encode(doc)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "x:1:1: not valid JSON"),
        (b"{", "not valid JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[]", "top level: expected a JSON object"),
        (b"[" * 100000, "nested too deeply"),
        (bad(lambda d: d.update(schema=2)), "schema: 2 is newer than this tetherctl"),
        (bad(lambda d: d.pop("schema")), "schema: expected 1"),
        (bad(lambda d: d.update(extra=1)), "unknown key 'extra'"),
        (bad(lambda d: d["owners"].update(nokey={})), "not a public key"),
        (bad(lambda d: d["owners"][KEY].pop("expires")), "missing key 'expires'"),
        (bad(lambda d: d["owners"][KEY].update(secret_sha256="AB" * 32)), "64 lowercase hex"),
        (bad(lambda d: d["owners"][KEY].update(added=-1)), "Unix time"),
        (bad(lambda d: d["owners"][KEY].update(added=True)), "Unix time"),
        (bad(lambda d: d["owners"][KEY].update(added=1.5)), "Unix time"),
        (bad(lambda d: d["owners"][KEY].update(self_service=1)), "true or false"),
        (bad(lambda d: d["owners"][KEY].update(addresses=[])), "non-empty list"),
        (bad(lambda d: d["owners"][KEY].update(addresses=["10.0.0.1/33"])), "not an IP network"),
        (
            bad(lambda d: d["released"].update({"10.0.0.1/24": GOOD["released"]["10.8.0.9/32"]})),
            "not an IP network",
        ),
        (bad(lambda d: d["released"].update({"10.0.0.0/24": {"released": 1}})), "missing key"),
        (bad(lambda d: d["released"].update({"fd08:0::1/128": {}})), "canonical"),
        (bad(lambda d: d.update(invites=[])), "invites: expected a JSON object"),
        (bad(lambda d: d["invites"].update({"ab" * 32: 3})), "expected a JSON object"),
        (bad(lambda d: d["invites"].update(abc={})), "not the SHA-256 of a code"),
        (bad(lambda d: d["invites"]["ef" * 32].pop("last_used")), "missing key 'last_used'"),
        (bad(lambda d: d["invites"]["ef" * 32].update(uses=0)), "uses: expected a whole number"),
        (bad(lambda d: d["invites"]["ef" * 32].update(used=4)), "used: expected a whole number"),
        (bad(lambda d: d["invites"]["ef" * 32].update(endpoint_type="ANY")), "expected one of"),
        (bad(lambda d: d["invites"]["ef" * 32].update(expires="1h")), "expires: expected a Unix"),
        (bad(lambda d: d["invites"]["ef" * 32].update(code="x")), "unknown key 'code'"),
    ],
)
def test_the_parser_refuses_with_one_line(data, message):
    with pytest.raises(StateError, match=message) as e:
        parse(data, "x")
    assert "\n" not in str(e.value) and str(e.value).startswith("x")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_the_parser_raises_only_state_errors(data):
    try:
        parse(data, "f")
    except StateError:
        pass


def owner(addresses=("10.8.0.3/32",), self_service=True, expires=None):
    return Owner("cd" * 32, 1700000000, self_service, expires, tuple(addresses))


def test_file_registry_writes_0600_through_the_store_and_sees_hand_edits(tmp_path):
    reg = FileRegistry(tmp_path / "dev.state.json")
    assert reg.read() == DeviceState()  # no file: empty
    reg.update(lambda s: s.set_owner(KEY, owner()))
    path = tmp_path / "dev.state.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["owners"][KEY]["addresses"] == ["10.8.0.3/32"]
    assert reg.update(lambda s: "no change") == "no change"
    doc = json.loads(path.read_text())
    doc["owners"] = {}
    path.write_text(json.dumps(doc))  # an operator's edit
    assert reg.read().owners == {}


def test_a_corrupt_file_is_never_overwritten(tmp_path, conf_dir, hub, caplog):
    path = conf_dir / "bywg0.state.json"
    path.write_text('{"schema": 1, "owners": {"oops"')
    before = path.read_bytes()
    device = (conf_dir / "bywg0.conf").read_bytes()
    app = make_app(hub, public=PUBLIC, rate_limit=None)
    caplog.set_level(logging.ERROR)
    for method, route in (
        ("POST", f"/peer/add/ipv4/{new_key()}"),
        ("POST", "/peer/new/ipv4"),
        ("DELETE", f"/peer/remove/{PEER1}"),
    ):
        r = call(app, method, route)
        assert r.status == 503
        assert r.text == "the API state of device bywg0 is invalid; the operator must fix it\n"
    assert path.read_bytes() == before and (conf_dir / "bywg0.conf").read_bytes() == device
    assert "bywg0.state.json:1:" in caplog.text and "never overwritten" in caplog.text
    reg = FileRegistry(path)
    with pytest.raises(StateError):
        reg.update(lambda s: s.set_owner(KEY, owner()))
    assert path.read_bytes() == before
    path.unlink()  # the operator removes it: the API works again
    assert call(app, "POST", "/peer/new/ipv4").status == 200


def test_concurrent_updates_from_threads_lose_nothing(tmp_path):
    path = tmp_path / "dev.state.json"
    added = [new_key() for _ in range(40)]

    def worker(chunk):
        reg = FileRegistry(path)  # separate objects, as separate processes would have
        for key in chunk:
            reg.update(lambda s, key=key: s.set_owner(key, owner()))

    threads = [threading.Thread(target=worker, args=(added[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(FileRegistry(path).read().owners) == set(added)


def test_updates_inside_a_device_edit_share_its_lock(tmp_path, conf_dir):
    reg = FileRegistry(state_path(conf_dir, "bywg0"))

    def change(cfg):
        reg.update(lambda s: s.set_owner(KEY, owner()), locked=True)  # would deadlock if not

    store.edit(conf_dir / "bywg0.conf", change)
    assert KEY in reg.read().owners


def cfg_of(*peers):
    from tether.config.model import DeviceConfig, Interface, Peer

    return DeviceConfig(
        Interface(private_key=keys.decode(keys.genkey())),
        [
            Peer(keys.decode(k), allowed_ips=[ipaddress.ip_network(n) for n in nets])
            for k, nets in peers
        ],
    )


def test_record_file_change_forgets_owners_and_quarantines(tmp_path):
    reg = FileRegistry(tmp_path / "d.state.json")
    a, b = new_key(), new_key()
    reg.update(lambda s: s.set_owner(a, owner(("10.8.0.3/32",))))
    before = cfg_of((a, ["10.8.0.3/32"]), (b, ["10.8.0.4/32", "10.8.0.5/32"]))
    after = cfg_of((b, ["10.8.0.4/32"]))  # a removed, b lost an address
    record_file_change(reg, before, after, now=1000.0, quarantine=300)
    state = reg.read()
    assert state.owners == {}
    assert state.released == {
        "10.8.0.3/32": Release(1000, 1300, True),
        "10.8.0.5/32": Release(1000, 1300, False),
    }
    mtime = os.stat(reg.path).st_mtime_ns
    record_file_change(reg, before, after, now=1003.0, quarantine=300)  # the same edit again
    assert os.stat(reg.path).st_mtime_ns == mtime  # not rewritten
    record_file_change(reg, after, after, now=2000.0)  # nothing removed: nothing touched
    assert os.stat(reg.path).st_mtime_ns == mtime


# -- quarantine, end to end through the API --------------------------------------------------


def address_of(r) -> str:
    return r.text.split("Address = ")[1].split("\n")[0]


def test_quarantine_then_reuse_and_it_survives_a_restart(hub, conf_dir):
    now = [1_700_000_000.0]

    def app():  # a fresh app: a restarted process, with nothing in memory
        return make_app(hub, public=PUBLIC, rate_limit=None, clock=lambda: now[0])

    api = app()
    assert call(api, "DELETE", f"/peer/remove/{PEER1}").status == 200  # frees 10.8.0.2
    r = call(app(), "POST", f"/peer/add/ipv4/{new_key()}")
    assert address_of(r) == "10.8.0.3/32, fd08::3/128"  # a different address, after a restart
    now[0] += 599
    assert (
        address_of(call(api, "POST", f"/peer/add/ipv4/{new_key()}")) == "10.8.0.4/32, fd08::4/128"
    )
    now[0] += 2  # the 10 minutes are over: the lowest free address is 10.8.0.2 again
    assert (
        address_of(call(api, "POST", f"/peer/add/ipv4/{new_key()}")) == "10.8.0.2/32, fd08::2/128"
    )
    assert json.loads((conf_dir / "bywg0.state.json").read_text())["released"] == {}


def test_addresses_freed_by_a_hand_edit_are_quarantined_by_the_daemon_hook(hub, conf_dir):
    now = [1_700_000_000.0]
    api = make_app(hub, public=PUBLIC, rate_limit=None, clock=lambda: now[0])
    path = conf_dir / "bywg0.conf"
    before = store.load(path).config
    path.write_text(
        path.read_text()
        .replace(f"PublicKey = {PEER1}\n", f"PublicKey = {new_key()}\n")
        .replace("10.8.0.2/32, fd08::2/128", "10.8.0.20/32")
    )
    after = store.load(path).config
    record_file_change(FileRegistry(state_path(conf_dir, "bywg0")), before, after, now=now[0])
    assert (
        address_of(call(api, "POST", f"/peer/add/ipv4/{new_key()}")) == "10.8.0.3/32, fd08::3/128"
    )


def test_released_networks_compares_only_the_peers_the_reconciler_changed():
    from tether.api.registry import released_networks

    a, b = new_key(), new_key()
    before = cfg_of((a, ["10.8.0.3/32"]), (b, ["10.8.0.4/32", "10.8.0.5/32"]))
    after = cfg_of((b, ["10.8.0.4/32"]))
    gone = (a, [ipaddress.ip_network("10.8.0.3/32")], True)
    shrunk = (b, [ipaddress.ip_network("10.8.0.5/32")], False)
    assert released_networks(before, after) == [gone, shrunk]
    assert released_networks(before, after, changed=[]) == [gone]  # removals always count
    assert released_networks(before, after, changed=[keys.decode(b)]) == [gone, shrunk]


def test_an_update_builds_on_the_files_bytes_not_on_its_stamp(tmp_path, monkeypatch):
    """Another process rewrote the file to the same size, and the atomic rename reused the
    inode within one tick of a coarse clock: the stat stamp looks unchanged. An update must
    still build on what the file holds (here: one more use of an invite), not on the cache,
    or it writes the stale state back (a use counted twice, a revocation lost)."""
    path = tmp_path / "bywg0.state.json"
    doc = json.loads(json.dumps(GOOD))
    path.write_bytes(encode(doc))
    reg = FileRegistry(path)
    assert reg.read().invites["ef" * 32].used == 1
    stamp = reg._stat()
    monkeypatch.setattr(reg, "_stat", lambda: stamp)  # the stamp cannot tell
    doc["invites"]["ef" * 32]["used"] = 2  # the other process's redemption: same size
    path.write_bytes(encode(doc))
    seen = reg.update(lambda state: state.invites["ef" * 32].used)
    assert seen == 2
