"""Where a device's API state (owners, released addresses, invites) is kept: the registry.

The API, the `peer` commands and the daemon reach the state only through the small `Registry`
interface (read the current state; apply a change atomically), so that a later fleet store (etcd,
DESIGN.md §7) can replace the file without touching its callers.

`FileRegistry` keeps it in `<config-dir>/<device>.state.json`, mode 0600, written like every other
file through `tether.config.store` (exclusive directory lock, temporary file, fsync, rename). The
directory lock is the one the device file's editor takes, so a peer edit and its state change can
happen under one lock (`update(..., locked=True)` from inside `store.edit`), and no process ever
sees a peer without its owner entry or the reverse. A file that does not parse is never written:
every read and update raises `StateError` until the operator fixes or removes it.

Reads are cached by the file's identity (inode, size, mtime, ctime): a hand edit or another
process's write is seen on the next call, and a 10,000-owner file is not parsed per request.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Protocol, TypeVar

from tether import keys
from tether.api.state import DeviceState, StateError, owner_line, parse, render
from tether.config import store
from tether.config.model import DeviceConfig

log = logging.getLogger("tether.api")

T = TypeVar("T")
DEFAULT_QUARANTINE = 600.0  # seconds a freed address stays out of the allocator


class Registry(Protocol):
    """Where the API keeps a device's state; an interface so that the service can be tested with
    state in memory and the file can be swapped for a shared store."""

    def read(self) -> DeviceState:
        """The current state (shared: do not change it). Raises StateError."""

    def update(self, change: Callable[[DeviceState], T], *, locked: bool = False) -> T:
        """Apply `change` to a copy of the current state and store it if it changed, atomically
        with respect to every other writer. `locked`: the caller already holds the device
        directory's lock (it is inside `store.edit` of the device file). Raises StateError."""


def state_path(config_dir: str | os.PathLike, name: str) -> Path:
    """The state file beside the device file: `<config-dir>/<device>.state.json`."""
    return Path(config_dir) / f"{store.check_device_name(name)}.state.json"


class FileRegistry:
    """The state in its file: cached by stat, re-read when another process changed it, written
    under the device directory's lock like the device files."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()  # guards the cache (threads of one process)
        self._stamp: tuple | None = None
        self._data: bytes | None = None  # the bytes self._state was parsed from
        self._state: DeviceState | None = None
        self._lines: dict[str, bytes] | None = None  # owner_line of each owner of self._state

    def _stat(self) -> tuple | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def _load(self, exact: bool = False) -> DeviceState:
        """The file's state (call with self._lock held). The stat stamp lets a plain read skip
        the file; an update (`exact`, under the file lock) compares the bytes themselves: an
        inode reused by the atomic rename and a rewrite of the same size within one tick of a
        coarse clock would pass the stamp, and an update built on a stale state would write it
        back (a use counted twice, a revocation lost)."""
        stamp = self._stat()
        if stamp is None:
            if self._stamp is not None or self._state is None:
                self._stamp, self._data, self._state, self._lines = None, None, DeviceState(), {}
            return self._state
        if stamp == self._stamp and self._state is not None and not exact:
            return self._state
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise StateError(f"{self.path}: cannot read: {e.strerror or e}") from None
        if data == self._data and self._state is not None:
            self._stamp = stamp
            return self._state
        state = parse(data, str(self.path))  # StateError propagates; nothing is cached
        self._stamp, self._data, self._state, self._lines = stamp, data, state, None
        return state

    def read(self) -> DeviceState:
        """The current state, re-read only when the file changed."""
        with self._lock:
            return self._load()

    def update(self, change: Callable[[DeviceState], T], *, locked: bool = False) -> T:
        """Change the state atomically with respect to every other writer, in this and other
        processes."""
        if locked:
            return self._update(change)
        with store.locked(self.path):
            return self._update(change)

    def _update(self, change: Callable[[DeviceState], T]) -> T:
        with self._lock:
            state = self._load(exact=True).copy()
            result = change(state)
            if not state.changed:
                return result
            lines = self._lines
            if lines is None:
                lines = {k: owner_line(k, o) for k, o in state.owners.items()}
            else:  # only the owners this change touched are encoded again
                for key in state.touched:
                    owner = state.owners.get(key)
                    if owner is None:
                        lines.pop(key, None)
                    else:
                        lines[key] = owner_line(key, owner)
            state.changed, state.touched = False, set()
            data = render(state, lines.values())
            try:
                store.atomic_write(self.path, data)
            except BaseException:
                self._stamp = self._data = self._state = self._lines = None
                raise
            self._stamp, self._data, self._state, self._lines = self._stat(), data, state, lines
            return result


# -- what the daemon reports ---------------------------------------------------------------------


def released_networks(
    before: DeviceConfig, after: DeviceConfig, changed: Collection[bytes] | None = None
) -> list[tuple[str, list, bool]]:
    """For each peer of `before` that lost addresses in `after`: (its base64 key, the networks
    it no longer routes, whether it left the file). `changed`: the keys whose AllowedIPs may
    differ (the daemon knows them from its reconciler); None compares every peer. Comparing
    10,000 peers' networks costs tens of milliseconds, comparing their keys about one."""
    present = {p.public_key for p in after.peers}
    check = set(changed) if changed is not None else present
    now = {p.public_key: p for p in after.peers if p.public_key in check} if check else {}
    out = []
    for peer in before.peers:
        key = peer.public_key
        if key not in present:
            out.append((keys.encode(key), list(peer.allowed_ips), True))
        elif key in now:
            kept = set(now[key].allowed_ips)
            freed = [net for net in peer.allowed_ips if net not in kept]
            if freed:
                out.append((keys.encode(key), freed, False))
    return out


def record_file_change(
    registry: Registry,
    before: DeviceConfig,
    after: DeviceConfig,
    *,
    now: float,
    quarantine: float = DEFAULT_QUARANTINE,
    changed: Collection[bytes] | None = None,
) -> None:
    """Called by the daemon whenever it applies a new version of a device file: peers removed
    by any means (the API, a hand edit, SaveConfig after `wg set ... remove`) lose their owner
    entry, and the addresses they no longer route enter quarantine. Nothing is read or written
    when no peer lost an address (the common case: an add, an endpoint change)."""
    changes = released_networks(before, after, changed)
    if changes:
        registry.update(lambda state: apply_releases(state, changes, now, quarantine))


def apply_releases(state: DeviceState, changes, now: float, quarantine: float) -> None:
    """Record the addresses an edit freed (quarantined from now), forgetting the owners of peers
    that are gone."""
    for key, freed, gone in changes:
        owner = state.forget(key) if gone else state.owners.get(key)
        state.release(freed, now, quarantine, bool(owner and owner.self_service))
    state.prune(now)


def forget_missing(
    state: DeviceState, config: DeviceConfig, now: float, quarantine: float
) -> list[str]:
    """Drop owner entries whose peer is no longer in the file with the addresses it was given
    (removed or replaced while no tetherctl process watched), and quarantine those addresses
    from now on where no peer routes them. Returns the dropped keys."""
    if not state.owners:
        return []
    current = {keys.encode(p.public_key): p for p in config.peers}
    routed = {str(net) for p in config.peers for net in p.allowed_ips}
    stale = []
    for key, owner in list(state.owners.items()):
        peer = current.get(key)
        if peer is not None and tuple(str(n) for n in peer.allowed_ips) == owner.addresses:
            continue
        stale.append(key)
        state.forget(key)
        freed = [text for text in owner.addresses if text not in routed]
        state.release(freed, now, quarantine, owner.self_service)
    return stale
