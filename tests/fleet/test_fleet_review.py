"""Review of the fleet as an attacker/operator (issue 15): reproductions of what was wrong,
now fixed, so these tests guard against the problems coming back."""

from __future__ import annotations

from tether import keys
from tether.api.fleet import etcd as e
from tether.api.fleet.device import Fleet, FleetOptions
from tether.api.fleet.etcd import EtcdOptions

from ..api.support import call, new_key
from ..e2e.netlab import wait_for
from ..test_cli import run
from .hosts import NAME, Host, add_seen
from .test_fleet_watch import reconnect


class AuthHost(Host):
    """A Host whose etcd client logs in as a user (Host itself knows only URLs)."""

    def __init__(self, tmp, label, urls, user, password):
        real = Fleet.__init__

        def with_user(fleet, options, client=None):
            etcd = EtcdOptions(options.etcd.urls, user=user, password=password)
            real(fleet, FleetOptions(etcd, options.prefix), client)

        Fleet.__init__ = with_user
        try:
            super().__init__(tmp, label, urls)
        finally:
            Fleet.__init__ = real


def test_watch_logs_in_again_after_etcd_restart(tmp_path, etcd):
    etcd.enable_auth("root", "rootpw")
    a = AuthHost(tmp_path, "a", etcd.urls, "root", "rootpw")
    b = AuthHost(tmp_path, "b", etcd.urls, "root", "rootpw")
    try:
        add_seen(a, b)  # b has a first peer
        etcd.stop()
        etcd.start(etcd.names[0])  # (restart() checks health without a user: not with auth)
        healthy = ("--user", "root:rootpw", "endpoint", "health")
        wait_for(lambda: etcd.ctl(*healthy).returncode == 0, 20, "etcd is back")
        later = new_key()
        # today every try answers 503 "etcd refused user root: ... invalid auth token"
        wait_for(lambda: call(a.app, "POST", f"/peer/add/any/{later}").status == 200, 20, "a adds")
        wait_for(lambda: later in b.peers(), 5, "b sees the peer added after the restart")
    finally:
        a.close()
        b.close()


def test_removal_survives_a_cut_during_catch_up(tmp_path, etcd):
    a, b = Host(tmp_path, "a", etcd.urls), Host(tmp_path, "b", etcd.urls)
    try:
        victim = add_seen(a, b)
        b.sync.close()  # b is cut off
        root = b.dev.layout.root
        for i in range(1100):  # ordinary traffic under the device's prefix, one revision each
            a.fleet.etcd.txn([], [e.put(root + b"note/%d" % i, b"x")])
        assert call(a.app, "DELETE", f"/peer/remove/{victim}").status == 200
        # b reconnects, reads one response of its catch-up, and is cut again
        start = b.dev.mirror.snapshot.revision + 1
        for revision, events in b.dev.etcd.watch(root, start, lambda s: None):
            if not events:  # the response that says the watch was created
                continue
            newest = max(ev[3] for ev in events)
            b.dev.feed(revision, events)
            break
        assert newest < revision  # the header is ahead of the events it carried
        reconnect(b)  # resumes from b's mirror revision, as after any cut
        wait_for(lambda: victim not in b.peers(), 5, "the removal reached b")
        assert keys.decode(victim) not in b.dev.snapshot().peers
    finally:
        a.close()
        b.close()


def test_cli_invite_on_a_fleet_host_is_the_fleets(tmp_path, etcd, cli_env):
    a = Host(tmp_path, "a", etcd.urls)
    try:
        env = dict(cli_env, TETHERCTL_CONFIG_DIR=str(a.dir), TETHERCTL_FLEET_ETCD=etcd.urls)
        (a.dir / f"{NAME}.env").write_text(f"TETHERCTL_FLEET_ETCD={etcd.urls}\n")
        made = run(
            "invite", "create", NAME, "--api-public-url", "http://vpn.example.org:9090", env=env
        )
        assert made.returncode == 0, made.stderr
        code = made.stdout.decode().strip().rsplit("/", 1)[1]
        joined = call(a.app, "POST", f"/join/{code}/{new_key()}")
        assert joined.status == 200, joined.body
        # an invite made elsewhere (the registry every host's API uses) is listed and revoked
        other = run("invite", "create", NAME, "--api-public-url", "http://x.example:1", env=env)
        other_code = other.stdout.decode().strip().rsplit("/", 1)[1]
        listed = run("invite", "list", NAME, env=env)
        assert listed.returncode == 0, listed.stderr
        rows = listed.stdout.decode().splitlines()[1:]
        assert len(rows) == 2 and any(" 1/1 " in r for r in rows), rows
        revoked = run("invite", "revoke", NAME, other_code, env=env)
        assert revoked.returncode == 0, revoked.stderr
        wait_for(lambda: all(i.revoked for i in a.dev.snapshot().state.invites.values()
                             if not i.used), 3, "a sees the revocation")  # fmt: skip
        assert call(a.app, "POST", f"/join/{other_code}/{new_key()}").status != 200
        assert not (a.dir / f"{NAME}.state.json").exists()
        # a fleet peer is removed in etcd, not from one host's file (the renderer restores it)
        fleet_peer = next(iter(a.peers()))
        removed = run("peer", "remove", NAME, fleet_peer, env=env)
        assert removed.returncode != 0
        assert b"DELETE /peer/remove/" in removed.stderr and len(removed.stderr.splitlines()) == 1
        assert fleet_peer in a.peers()
    finally:
        a.close()


def test_janitor_keeps_a_peer_used_through_another_host(tmp_path, etcd):
    from tether.api.peers.janitor import Janitor, interval_for

    t0 = 1_700_000_000.0
    now = [t0]
    kw = {"peer_expiry": 3600.0, "clock": lambda: now[0], "token": "admin-token-0123456789abcdef"}
    a, b = Host(tmp_path, "a", etcd.urls, **kw), Host(tmp_path, "b", etcd.urls, **kw)
    try:
        k = add_seen(a, b)
        pk = keys.decode(k)
        a.hub.stats = {NAME: {pk: (0, 0, None)}}  # live on a, its client never came here
        b.hub.stats = {NAME: {pk: (0, 0, t0 + 3590)}}  # it handshook with b, in time
        idle = new_key()  # used nowhere: still removed, two sweep intervals late
        assert call(a.app, "POST", f"/peer/add/any/{idle}").status == 200
        a.hub.stats[NAME][keys.decode(idle)] = (0, 0, None)
        now[0] = t0 + 3601
        assert Janitor(a.service).sweep(now[0]) == []
        Janitor(b.service).sweep(now[0])  # b's next sweep records the handshake in etcd
        wait_for(lambda: a.dev.snapshot().state.owners[k].expires is None, 3, "a sees it")
        now[0] = t0 + 3600 + 2 * interval_for(3600.0) + 1
        assert Janitor(a.service).sweep(now[0]) == [(NAME, idle)]
        assert k in a.peers()
    finally:
        a.close()
        b.close()


def test_watch_created_response_does_not_move_the_mirror():
    """The response confirming a watch carries the current revision before any catch-up event:
    it must not become the revision a cut watch resumes from."""
    line = b'{"result":{"header":{"revision":"5000"},"created":true}}'
    assert e.WatchStream._decode(line) == (0, [])
    progress = b'{"result":{"header":{"revision":"5000"}}}'
    assert e.WatchStream._decode(progress) == (5000, [])
