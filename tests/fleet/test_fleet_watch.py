"""The watch: a host cut off catches up from its revision (removals included), a compacted
revision costs exactly one full read, and many changes become few file writes."""

from __future__ import annotations

from tether import keys
from tether.appliance.fleet import DeviceFleetSync

from ..api.support import call, new_key
from ..e2e.netlab import wait_for
from .hosts import NAME, Host, add_seen


def reconnect(host: Host) -> None:
    """Stop host's watcher and start another on the same mirror (a watch that was cut off)."""
    host.sync.close()
    host.sync = DeviceFleetSync(host.path, host.dev, NAME, lambda parsed: None)
    host.sync.start()


def test_cut_off_host_resumes_from_its_revision(tmp_path, etcd):
    a, b = Host(tmp_path, "a", etcd.urls), Host(tmp_path, "b", etcd.urls)
    try:
        keep, gone = new_key(), new_key()
        for k in (keep, gone):
            assert call(a.app, "POST", f"/peer/add/any/{k}").status == 200
        wait_for(lambda: {keep, gone} <= set(b.peers()), 2, "b has both")
        b.sync.close()  # b is cut off
        assert call(a.app, "DELETE", f"/peer/remove/{gone}").status == 200
        late = new_key()
        assert call(a.app, "POST", f"/peer/add/any/{late}").status == 200
        assert gone in b.peers()
        reconnect(b)
        wait_for(lambda: set(b.peers()) == {keep, late}, 3, "b caught up")
        assert b.dev.loads == 1  # resumed from its revision: no full read
    finally:
        a.close()
        b.close()


def test_compacted_revision_means_one_full_read(tmp_path, etcd):
    a, b = Host(tmp_path, "a", etcd.urls), Host(tmp_path, "b", etcd.urls)
    try:
        first = add_seen(a, b, within=2)
        b.sync.close()
        assert call(a.app, "DELETE", f"/peer/remove/{first}").status == 200
        added = [new_key() for _ in range(5)]
        for k in added:
            assert call(a.app, "POST", f"/peer/add/any/{k}").status == 200
        etcd.compact()
        reconnect(b)
        wait_for(lambda: set(b.peers()) == set(added), 3, "b resynchronized")
        assert b.dev.loads == 2  # startup, and one resync after the compaction
        assert keys.decode(first) not in b.dev.snapshot().peers
    finally:
        a.close()
        b.close()


def test_a_burst_of_changes_is_few_file_writes(tmp_path, etcd):
    a, b = Host(tmp_path, "a", etcd.urls), Host(tmp_path, "b", etcd.urls)
    try:
        b.sync.close()
        added = [new_key() for _ in range(40)]
        for k in added:
            assert (
                call(
                    a.app,
                    "POST",
                    f"/peer/add/any/{k}",
                ).status
                == 200
            )
        reconnect(b)
        wait_for(lambda: set(b.peers()) == set(added), 5, "b has all 40")
        assert b.sync.renders <= 2, b.sync.renders  # the whole backlog in one or two writes
    finally:
        a.close()
        b.close()
