"""One device's fleet state on this host: the etcd client, the mirror the watch keeps, and the
transactions every writer goes through.

Writers (the peer operations, the registry) never lock anything across hosts. They build their
change from a mirror snapshot and commit it in one etcd transaction that also requires the
device's `serial` key to be unchanged since that snapshot (and, for an add, the peer's key and
every address key to be absent). When another host wrote first, the transaction fails, the
writer waits until the watch has brought the mirror past that write, and builds again: the
writes of all hosts are serialized as the writes of one host are under its directory lock,
without a lock that a dead host could leave held.

`Fleet` holds the devices of one `tetherctl run` (they share the client and the prefix).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from tether.api.errors import Unavailable
from tether.api.fleet import etcd as e
from tether.api.fleet.layout import MAX_VALUE, Layout, check_prefix
from tether.api.fleet.mirror import Mirror, Snapshot

log = logging.getLogger("tether.fleet")

TRIES = 25  # transactions one write may attempt while other hosts keep writing first
CATCH_UP = 2.0  # seconds a writer waits for the watch to show a write that beat it
RENDER_WAIT = 5.0  # seconds an API write waits for its peer to be rendered and applied here


@dataclass(frozen=True)
class FleetOptions:
    """`--fleet-etcd` and its companions, checked (see `cli/run.py`)."""

    etcd: e.EtcdOptions
    prefix: str = "/tetherctl/"

    def __post_init__(self) -> None:
        check_prefix(self.prefix)


class FleetDevice:
    """See the module docstring. Thread-safe: the watcher feeds it, API threads read and write."""

    def __init__(self, client: e.Etcd, layout: Layout, *, watched: bool = True) -> None:
        """`watched`: a watcher feeds the mirror (the daemon); else (a shell command) every
        commit and every lost race reads the device's keys again."""
        self.etcd = client
        self.watched = watched
        self.layout = layout
        self.mirror = Mirror(layout)
        self.cond = threading.Condition()
        self.rendered = 0  # the revision whose peers the device file and the device have
        self.local = None  # render.LocalView of the file as the renderer last wrote it
        self.last_commit = 0  # the latest revision this host wrote
        self.loads = 0  # full reads so far (startup, and once per compaction seen)
        self.writing = threading.Lock()  # this host's writers take turns (see transact)

    # -- fed by the watcher --------------------------------------------------------------------

    def load(self) -> set[bytes]:
        """Read everything of the device (startup, after compaction): the changed peer keys.
        EtcdUnavailable when no member answers."""
        revision, kvs = self.etcd.range_prefix(self.layout.root, MAX_VALUE)
        with self.cond:
            self.loads += 1
            changed = self.mirror.reset(revision, kvs)
            self.cond.notify_all()
        self._log_problems()
        return changed

    def feed(self, revision: int, events: list) -> set[bytes]:
        """One watch response."""
        with self.cond:
            changed = self.mirror.apply(revision, events)
            self.cond.notify_all()
        self._log_problems()
        return changed

    def _log_problems(self) -> None:
        with self.cond:
            problems = self.mirror.take_problems()
        for problem in problems:
            log.error("%s: %s", self.layout.device, problem)

    def mark_rendered(self, revision: int) -> None:
        """The file and the device now have the peers of `revision` (wakes waiting writers)."""
        with self.cond:
            self.rendered = max(self.rendered, revision)
            self.cond.notify_all()

    # -- read by the API -----------------------------------------------------------------------

    def snapshot(self) -> Snapshot:
        """The mirror now; Unavailable until the first full read succeeded."""
        with self.cond:
            if not self.mirror.loaded:
                raise Unavailable(
                    f"device {self.layout.device}: the fleet's state has not been read from "
                    "etcd yet (etcd unreachable?)"
                )
            return self.mirror.snapshot

    def _wait(self, ready: Callable[[], bool], timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(ready, timeout)

    def wait_for(self, revision: int, timeout: float = CATCH_UP) -> bool:
        """Wait until the mirror shows `revision`; False on timeout."""
        return self._wait(lambda: self.mirror.snapshot.revision >= revision, timeout)

    def wait_rendered(self, revision: int, timeout: float = RENDER_WAIT) -> bool:
        """Wait until the file and the device have the peers of `revision`; False on timeout."""
        return self._wait(lambda: self.rendered >= revision, timeout)

    # -- written by the API --------------------------------------------------------------------

    def transact(self, build: Callable[[Snapshot], tuple]) -> tuple[object, int]:
        """Commit what `build(snapshot)` returns, `(result, compares, operations)`, rebuilding on
        a fresh snapshot while other hosts win the race; returns (result, revision). `build`
        returning operations None means nothing to write (result, snapshot revision). Raises
        Unavailable when etcd does not answer or stays too busy.

        This host's writers take turns: they would only make each other's transactions fail,
        so the optimistic retries are left to races between hosts, which a handful settle."""
        with self.writing:
            return self._transact(build)

    def _transact(self, build: Callable[[Snapshot], tuple]) -> tuple[object, int]:
        self.wait_for(self.last_commit)
        for _ in range(TRIES):
            snap = self.snapshot()
            result, compare, ops = build(snap)
            if ops is None:
                return result, snap.revision
            success = [_op(op) for op in ops] + [e.put(self.layout.serial, b"")]
            try:
                ok, revision = self.etcd.txn(
                    [e.modified_at(self.layout.serial, snap.serial), *compare], success
                )
            except e.EtcdUnavailable as err:
                raise Unavailable(f"{err}; try again later") from None
            if ok:
                with self.cond:
                    self.last_commit = max(self.last_commit, revision)
                if not self.watched:
                    self._reload()
                elif not self.wait_for(revision):
                    log.warning(
                        "%s: the watch has not shown revision %d yet", self.layout.device, revision
                    )
                return result, revision
            # another host wrote first: wait until the mirror has its write, then build again
            if not self.watched:
                self._reload()
                continue
            self._wait(lambda s=snap: self.mirror.snapshot.serial != s.serial, CATCH_UP)
        raise Unavailable(
            f"device {self.layout.device}: too many concurrent changes in the fleet; try again"
        )

    def _reload(self) -> None:
        try:
            self.load()
        except e.EtcdUnavailable as err:
            raise Unavailable(f"{err}; try again later") from None


def _op(op: tuple) -> dict:
    return e.put(op[1], op[2]) if op[0] == "put" else e.delete(op[1])


class Fleet:
    """The fleet of one daemon: one etcd client, one FleetDevice per device name."""

    def __init__(
        self, options: FleetOptions, client: e.Etcd | None = None, *, watched: bool = True
    ) -> None:
        """`watched`: see FleetDevice (False for a shell command, which runs no watcher)."""
        self.options = options
        self.watched = watched
        self.etcd = client or e.Etcd(options.etcd)
        self._devices: dict[str, FleetDevice] = {}
        self._lock = threading.Lock()

    def device(self, name: str) -> FleetDevice:
        """The fleet state of device `name` (made on first use)."""
        with self._lock:
            dev = self._devices.get(name)
            if dev is None:
                dev = self._devices[name] = FleetDevice(
                    self.etcd, Layout(self.options.prefix, name), watched=self.watched
                )
            return dev

    def __repr__(self) -> str:
        return f"Fleet({self.etcd!r}, prefix={self.options.prefix!r})"
