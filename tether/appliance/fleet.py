"""The fleet beside the daemon: per device, a watch on etcd and a renderer into the device file.

For each device of `tetherctl run --fleet-etcd`, two threads (the etcd client blocks):

- the watcher reads everything of the device once (startup; and once more whenever etcd says
  the revision to resume from was compacted: one full resync, not a storm), then watches the
  device's keys from the mirror's revision + 1 (a watch response too large to hold means a
  full read too: by range pages, which are bounded). When etcd becomes unreachable it retries
  with a growing pause (to 2 s) and resumes from the last revision it saw, so a host that was
  cut off gets exactly the changes it missed, removals included;
- the renderer wakes when the watch changed a peer (or the daemon saw the file change under it),
  renders the mirror's peers into the file through the lossless editor (one locked atomic write
  for however many events arrived meanwhile), asks the daemon to apply the file now, and then
  marks the revision rendered, which is what an API write on this host waits for.

Meanwhile the data plane never waits for etcd: the device runs whatever the file says, so with
etcd down every tunnel and exit flow keeps going on the last rendered peers.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from tether import keys
from tether.api.fleet.device import Fleet, FleetDevice
from tether.api.fleet.etcd import EtcdUnavailable, WatchCompacted, WatchTooLarge
from tether.api.fleet.render import LocalView, render
from tether.config import store
from tether.config.editor import ConfigFile
from tether.config.errors import ConfigError

log = logging.getLogger("tether.fleet")

RETRY_MIN, RETRY_MAX = 0.2, 2.0  # seconds between attempts to reach etcd
FIRST_LOAD_WAIT = 5.0  # seconds startup waits for the first read before serving the API anyway
APPLY_TIMEOUT = 30.0


class DeviceFleetSync:
    """The watcher and renderer of one device (see the module docstring)."""

    def __init__(self, path: Path, dev: FleetDevice, name: str, apply: Callable[[], None]) -> None:
        """`apply()` makes the running device match the file now (the daemon's sync)."""
        self.apply = apply
        self.dev = dev
        self.name = name
        self.path = path
        self.stop = threading.Event()
        self.kick = threading.Event()
        self.loaded = threading.Event()
        self.cache = store.ParseCache()
        self.written: bytes | None = None  # the bytes the renderer wrote last
        self.known: set[bytes] = set()  # fleet peers rendered so far
        self.problems: dict[str, str] = {}  # fleet peers left out, and why (logged once each)
        self.stream = None
        self.renders = 0  # file writes (tests and the bench count them)
        self.pending_lock = threading.Lock()
        self.pending: set[bytes] | None = None  # peers to look at again; None: the whole file
        self.rendered_cfg: ConfigFile | None = None  # the parse the last rendering edited
        self.managed: frozenset[bytes] = frozenset()  # its fleet blocks
        self._threads = [
            threading.Thread(target=self._watch, name=f"fleet-watch-{name}", daemon=True),
            threading.Thread(target=self._render_loop, name=f"fleet-render-{name}", daemon=True),
        ]

    def start(self) -> None:
        """Start watching and rendering."""
        for t in self._threads:
            t.start()

    def close(self) -> None:
        """Stop both threads (the open watch is cut) and wait for them."""
        self.stop.set()
        self.kick.set()
        stream = self.stream
        if stream is not None:
            stream.stop()
        for t in self._threads:
            t.join(5)

    def _want(self, keys: set[bytes] | None) -> None:
        """Ask the renderer to look at these peers again (None: at the whole file)."""
        with self.pending_lock:
            if keys is None or self.pending is None:
                self.pending = None
            else:
                self.pending |= keys
        self.kick.set()

    def file_changed(self, data: bytes) -> None:
        """The daemon saw the file change: if it was not our write, check our blocks."""
        if data != self.written:
            self._want(None)

    # -- watching ------------------------------------------------------------------------------

    def _watch(self) -> None:
        pause = RETRY_MIN
        resync = not self.dev.mirror.loaded  # a mirror kept from before resumes from its revision
        if not resync:
            self.loaded.set()
            self._want(None)
        down = False
        while not self.stop.is_set():
            try:
                if resync:
                    self.dev.load()
                    resync = False
                    self.loaded.set()
                    self._want(None)
                    log.info(
                        "%s: fleet state read at revision %d (%d peers)",
                        self.name,
                        self.dev.mirror.snapshot.revision,
                        len(self.dev.mirror.snapshot.peers),
                    )
                start = self.dev.mirror.snapshot.revision + 1
                for revision, events in self.dev.etcd.watch(
                    self.dev.layout.root, start, self._started
                ):
                    if down:
                        log.info(
                            "%s: etcd reachable again, watching from revision %d", self.name, start
                        )
                        down = False
                    pause = RETRY_MIN
                    changed = self.dev.feed(revision, events)
                    if changed:
                        self._want(changed)
                    if self.stop.is_set():
                        return
            except (WatchCompacted, WatchTooLarge) as e:
                log.warning("%s: %s; reading the fleet state once more", self.name, e)
                resync = True
                continue
            except (EtcdUnavailable, OSError, ValueError, KeyError) as e:
                if not down:
                    log.error(
                        "%s: %s; the device keeps running on its file, retrying", self.name, e
                    )
                    down = True
            except Exception as e:  # a bug must not end the watch (writes would 503 for good)
                log.error("%s: the fleet watch failed: %s; retrying", self.name, e, exc_info=e)
                down = True
            self.stream = None
            if self.stop.wait(pause):
                return
            pause = min(RETRY_MAX, pause * 2)

    def _started(self, stream) -> None:
        self.stream = stream
        if self.stop.is_set():
            stream.stop()

    # -- rendering -----------------------------------------------------------------------------

    def _render_loop(self) -> None:
        while not self.stop.is_set():
            self.kick.wait()
            self.kick.clear()
            if self.stop.is_set() or not self.dev.mirror.loaded:
                continue
            try:
                self._render_once()
            except Exception as e:  # one bad pass must not end the renderer
                log.error("%s: rendering the fleet's peers failed: %s", self.name, e, exc_info=e)
                self.stop.wait(RETRY_MAX)
                self._want(None)

    def _render_once(self) -> None:
        with self.pending_lock:
            only, self.pending = self.pending, set()
        with self.dev.cond:
            snap = self.dev.mirror.snapshot
        wanted = snap.peers

        def change(cfg: ConfigFile):
            # only what changed in etcd, unless someone else wrote the file since our write
            some = only if cfg is self.rendered_cfg else None
            done = render(
                cfg,
                wanted,
                known=self.known,
                allocations=snap.addresses,
                only=some,
                managed=self.managed,
            )
            return done, cfg, some

        try:
            done, cfg, some = store.edit(self.path, change, cache=self.cache)
        except ConfigError as e:
            log.error("%s: fleet peers not rendered, the file is invalid: %s", self.name, e)
            return
        except FileNotFoundError:
            return
        self.known = set(wanted)
        self.rendered_cfg, self.managed = cfg, done.managed
        for key in done.restored:
            log.warning("%s: fleet peer %s was edited by hand here; restored", self.name, key)
        looked = None if some is None else {keys.encode(k) for k in some}
        problems = (
            {}
            if looked is None
            else {k: why for k, why in self.problems.items() if k not in looked}
        )
        problems.update(done.refused)
        for key in done.shadowed:
            problems[key] = "a hand-written block with its key wins on this host"
        for key, why in done.refused.items() | {k: problems[k] for k in done.shadowed}.items():
            if self.problems.get(key) != why:
                log.error("%s: fleet peer %s not rendered: %s", self.name, key, why)
        self.problems = problems
        view = LocalView.of(self.cache.data, cfg, done.managed)
        self.dev.local = view
        if done:
            self.renders += 1
            self.written = view.data
            log.info(
                "%s: fleet revision %d rendered (%d added, %d removed, %d restored)",
                self.name,
                snap.revision,
                len(done.added),
                len(done.removed),
                len(done.restored),
            )
            self.apply((view.data, view))
        self.dev.mark_rendered(snap.revision)


class FleetRunner:
    """The fleet syncs of a daemon's devices."""

    def __init__(self, daemon, fleet: Fleet) -> None:
        self.daemon = daemon
        self.fleet = fleet
        self.syncs: dict[str, DeviceFleetSync] = {}

    async def start(self, names: list[str]) -> None:
        """Start a sync per device and wait (a few seconds at most) for their first read."""
        for name in names:
            self.ensure(name)
        for sync in self.syncs.values():
            await asyncio.to_thread(sync.loaded.wait, FIRST_LOAD_WAIT)
        log.info("fleet: %r, devices %s", self.fleet, ", ".join(sorted(self.syncs)) or "none")

    def ensure(self, name: str) -> None:
        """A sync for `name` (a device file that appeared later gets one when it comes up)."""
        if name not in self.syncs:
            path = store.device_path(self.daemon.config_dir, name)
            sync = DeviceFleetSync(path, self.fleet.device(name), name, self._applier(name))
            self.syncs[name] = sync
            sync.start()

    def _applier(self, name: str) -> Callable[[tuple], None]:
        def apply(parsed: tuple) -> None:
            daemon = self.daemon
            future = asyncio.run_coroutine_threadsafe(daemon.sync(name, parsed), daemon.loop)
            future.result(APPLY_TIMEOUT)

        return apply

    def rendered(self, name: str) -> tuple | None:
        """(bytes, view) of the file as the renderer last wrote it, or None."""
        sync = self.syncs.get(name)
        view = sync.dev.local if sync is not None else None
        return (view.data, view) if view is not None else None

    def file_changed(self, name: str, data: bytes) -> None:
        """The daemon saw device `name`'s file change (see DeviceFleetSync.file_changed)."""
        sync = self.syncs.get(name)
        if sync is not None:
            sync.file_changed(data)

    async def close(self) -> None:
        """Stop every device's sync."""
        for sync in self.syncs.values():
            await asyncio.to_thread(sync.close)
