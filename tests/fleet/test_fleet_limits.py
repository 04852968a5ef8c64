"""What etcd sends is bounded before it is kept: large values under the prefix (anyone with
write access to it, or a mistake) cost a host's daemon a few MiB, not GBs."""

from __future__ import annotations

import tracemalloc

from tether import keys
from tether.api.fleet import etcd as e
from tether.api.fleet.layout import MAX_VALUE

from ..api.support import call, new_key
from ..e2e.netlab import wait_for
from .hosts import Host, add_seen
from .test_fleet_watch import reconnect

BIG = 1 << 20  # etcd's default request limit is 1.5 MiB: one such value per transaction
COUNT = 24


def _write_big(host: Host, what: bytes) -> list[bytes]:
    names = []
    for i in range(COUNT):
        name = host.dev.layout.root + b"peers/junk%d" % i
        host.fleet.etcd.txn([], [e.put(name, what * BIG)])
        names.append(name)
    return names


def _peak(run) -> int:
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_full_read_keeps_no_large_value(tmp_path, etcd):
    a = Host(tmp_path, "a", etcd.urls)
    try:
        good = new_key()
        assert call(a.app, "POST", f"/peer/add/any/{good}").status == 200
        names = _write_big(a, b"x")
        peak = _peak(lambda: a.dev.load())
        # whole pages of these values peaked at about 5 bytes per byte of value (120+ MiB here)
        assert peak < 4 * e.RANGE_BYTES + 8 * BIG, peak
        revision, kvs = a.fleet.etcd.range_prefix(a.dev.layout.root, MAX_VALUE)
        kept = {k: v for k, v, _ in kvs}
        assert set(names) <= set(kept)  # the keys are known (a later good value replaces them)
        assert all(len(kept[n]) == MAX_VALUE + 1 for n in names)
        assert keys.decode(good) in a.dev.snapshot().peers
        assert all(n in a.dev.mirror.bad for n in names)  # reported, not used
    finally:
        a.close()


def test_a_watch_response_over_the_limit_means_a_bounded_resync(tmp_path, etcd):
    a, b = Host(tmp_path, "a", etcd.urls), Host(tmp_path, "b", etcd.urls)
    try:
        victim = add_seen(a, b)
        b.sync.close()  # b is cut off: its catch-up will be one response of 24+ MiB
        _write_big(a, b"y")
        assert call(a.app, "DELETE", f"/peer/remove/{victim}").status == 200
        assert b.dev.loads == 1

        def catch_up():
            reconnect(b)
            wait_for(lambda: victim not in b.peers(), 20, "the removal reached b")

        peak = _peak(catch_up)
        assert b.dev.loads == 2  # the oversized response was dropped for one full read
        assert peak < 4 * e.RANGE_BYTES + 8 * BIG, peak
    finally:
        a.close()
        b.close()


def test_junk_on_the_watch_is_an_error_the_watcher_handles():
    for line in (b"5", b"[]", b'{"result": 5}', b'{"result": {"events": [5]}}', b"\xff"):
        try:
            e.WatchStream._decode(line)
        except e.EtcdUnavailable as err:
            assert "\n" not in str(err)
        else:
            raise AssertionError(f"{line!r} decoded")


def test_the_watcher_survives_a_failure_it_did_not_expect(tmp_path, etcd, monkeypatch):
    a, b = Host(tmp_path, "a", etcd.urls), Host(tmp_path, "b", etcd.urls)
    try:
        real, failed = b.dev.feed, []

        def feed_once_broken(revision, events):
            if not failed:
                failed.append(revision)
                raise TypeError("a bug")
            return real(revision, events)

        monkeypatch.setattr(b.dev, "feed", feed_once_broken)
        first = new_key()
        assert call(a.app, "POST", f"/peer/add/any/{first}").status == 200
        wait_for(lambda: failed, 3, "the watcher failed once")
        wait_for(lambda: first in b.peers(), 5, "b reconnected and has the peer")
        assert b.sync._threads[0].is_alive()
    finally:
        a.close()
        b.close()


def test_a_quiet_watch_reconnects_without_a_log_line(tmp_path, etcd, monkeypatch, caplog):
    import logging

    monkeypatch.setattr(e, "WATCH_IDLE", 0.5)
    caplog.set_level(logging.DEBUG, "tether.fleet")
    a, b = Host(tmp_path, "a", etcd.urls), Host(tmp_path, "b", etcd.urls)
    try:
        wait_for(lambda: sum("idle" in r.message for r in caplog.records) >= 4, 10, "idle cuts")
        assert not [r for r in caplog.records if r.levelno >= logging.INFO and "watch" in r.message]
        add_seen(a, b)  # b still watches
    finally:
        a.close()
        b.close()
