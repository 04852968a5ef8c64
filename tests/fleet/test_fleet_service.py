"""The fleet's API operations against a real etcd: adds, removes, allocation races, owners and
invites shared by two hosts, rendering into each host's file."""

from __future__ import annotations

import json
import threading

import pytest

from tether import keys

from ..api.support import call, new_key
from ..e2e.netlab import wait_for
from .hosts import NAME, Host, add_seen


@pytest.fixture
def two(tmp_path, etcd):
    hosts = [Host(tmp_path, "a", etcd.urls), Host(tmp_path, "b", etcd.urls)]
    try:
        yield hosts
    finally:
        for h in hosts:
            h.close()


def test_add_on_a_is_rendered_on_b_and_removal_on_b_reaches_a(two):
    a, b = two
    key = new_key()
    r = call(a.app, "POST", f"/peer/add/any/{key}")
    assert r.status == 200, r.text
    assert "Address = 10.77.0.2/32" in r.text
    assert a.peers()[key] == ["10.77.0.2/32"]  # a 200 means: in this host's file already
    wait_for(lambda: key in b.peers(), 2, "the peer on host b")
    assert "# fleet-managed" in b.path.read_text()
    r = call(b.app, "DELETE", f"/peer/remove/{key}")
    assert r.status == 200, r.text
    assert key not in b.peers()
    wait_for(lambda: key not in a.peers(), 2, "the removal on host a")
    # the address is quarantined fleet-wide: the next add on either host gets another one
    r = call(a.app, "POST", f"/peer/add/any/{new_key()}")
    assert "Address = 10.77.0.3/32" in r.text


def test_concurrent_adds_on_two_hosts_get_distinct_addresses(two):
    a, b = two
    added, errors = [], []

    def add(host, key):
        r = call(host.app, "POST", f"/peer/add/any/{key}")
        (added if r.status == 200 else errors).append((key, r.status, r.text))

    threads = [threading.Thread(target=add, args=(two[i % 2], new_key())) for i in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors[:3]
    snap = a.dev.snapshot()
    nets = [str(n) for e in snap.peers.values() for n in e.peer.allowed_ips]
    assert len(nets) == 30 and len(set(nets)) == 30
    wait_for(lambda: a.peers() == b.peers() and len(a.peers()) == 30, 5, "identical files")


def test_owner_secret_from_one_host_removes_on_the_other(tmp_path, etcd):
    a = Host(tmp_path, "a", etcd.urls, token="admin-token-0123456789")
    b = Host(tmp_path, "b", etcd.urls, token="admin-token-0123456789")
    try:
        key = new_key()
        r = call(a.app, "POST", f"/peer/add/any/{key}")
        assert r.status == 200, r.text
        secret = r.headers["tether-peer-secret"]
        wait_for(lambda: key in b.peers(), 2, "the peer on b")
        other = call(
            b.app, "DELETE", f"/peer/remove/{key}", headers={"Authorization": "Bearer " + "x" * 43}
        )
        assert other.status in (401, 403)
        r = call(
            b.app, "DELETE", f"/peer/remove/{key}", headers={"Authorization": f"Bearer {secret}"}
        )
        assert r.status == 200, r.text
        wait_for(lambda: key not in a.peers(), 2, "removal on a")
    finally:
        a.close()
        b.close()


def test_hand_written_peers_stay_local_and_keep_their_addresses(tmp_path, etcd):
    from .hosts import device_text

    hand = new_key()
    text = device_text() + f"\n# my own\n[Peer]\nPublicKey = {hand}\nAllowedIPs = 10.77.0.2/32\n"
    a = Host(tmp_path, "a", etcd.urls, text=text)
    b = Host(tmp_path, "b", etcd.urls)
    try:
        key = new_key()
        r = call(a.app, "POST", f"/peer/add/any/{key}")
        assert "Address = 10.77.0.3/32" in r.text  # .2 is a's own peer
        wait_for(lambda: key in b.peers(), 2, "the fleet peer on b")
        assert hand not in b.peers()
        assert a.peers()[hand] == ["10.77.0.2/32"]
        assert "# my own\n[Peer]\nPublicKey = " + hand in a.path.read_text()
    finally:
        a.close()
        b.close()


def test_hand_edit_of_a_rendered_block_is_restored(two, caplog):
    a, b = two
    key = add_seen(a, b, within=2)
    text = b.path.read_text()
    b.path.write_text(text.replace("AllowedIPs = 10.77.0.2/32", "AllowedIPs = 10.77.0.0/24"))
    b.sync.file_changed(b.path.read_bytes())  # what the daemon's watcher reports
    wait_for(lambda: b.peers()[key] == ["10.77.0.2/32"], 2, "the restore")
    assert "edited by hand here; restored" in caplog.text
    assert b.path.read_text() == text


def test_etcd_down_adds_answer_503_fast_and_recover(two, etcd):
    import time

    a, b = two
    etcd.stop()
    t0 = time.monotonic()
    r = call(a.app, "POST", f"/peer/add/any/{new_key()}")
    assert r.status == 503, r.text
    assert "etcd" in r.text
    assert time.monotonic() - t0 < 2.5
    etcd.restart()
    key = new_key()
    wait_for(lambda: call(a.app, "POST", f"/peer/add/any/{key}").status == 200, 15, "recovery")
    wait_for(lambda: key in b.peers(), 5, "b catches up after etcd came back")
    assert keys.decode(key) in b.dev.snapshot().peers
    assert NAME


def test_single_use_invite_admits_one_peer_in_the_whole_fleet(tmp_path, etcd):
    token = "admin-token-0123456789"
    admin = {"Authorization": f"Bearer {token}"}
    kw = {"token": token, "self_service": "invite"}
    a, b = Host(tmp_path, "a", etcd.urls, **kw), Host(tmp_path, "b", etcd.urls, **kw)
    try:
        r = call(a.app, "POST", "/invites", "uses=1", headers=admin)
        assert r.status == 200, r.text
        code = json.loads(r.text)["code"]
        wait_for(lambda: b.dev.snapshot().state.invites, 2, "the invite on b")
        statuses = []

        def redeem(host):
            statuses.append(call(host.app, "POST", f"/join/{code}/{new_key()}").status)

        threads = [threading.Thread(target=redeem, args=(h,)) for h in (a, b, a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(statuses) == [200, 410, 410, 410], statuses
        assert len(a.dev.snapshot().peers) == 1
        # anonymous adds without an invite are refused on both hosts, as on one
        assert call(b.app, "POST", f"/peer/add/any/{new_key()}").status in (401, 403)
    finally:
        a.close()
        b.close()
