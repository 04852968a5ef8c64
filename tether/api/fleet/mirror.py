"""What one host knows of a device's fleet state: a mirror of its etcd keys (sans-IO).

Fed a full load (`reset`, after a range read) or a watch response (`apply`: header revision and
events), it keeps the parsed peers, address allocations, owners, quarantined addresses and
invites as of one revision. Each feed makes new dictionaries (copy on write), so a `Snapshot`
a request took stays consistent while the watcher moves on; writers (`service.py`,
`registry.py`) build their etcd transaction from a snapshot and compare the device's `serial`
key against the snapshot's `serial` revision, so a snapshot that has become stale makes the
transaction fail instead of writing something wrong.

A value that does not parse (`layout.parse_value`) is left out and reported once through
`problems` (the shell logs it); its key is still known, so a later good value replaces it and a
deletion removes it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from tether import keys
from tether.api.fleet.layout import FleetPeer, FleetValueError, Layout, parse_value
from tether.api.state import DeviceState


@dataclass(frozen=True)
class Snapshot:
    """The device's fleet state at `revision` (shared: do not change)."""

    revision: int
    serial: int  # mod revision of the serial key (0: no write yet)
    peers: dict[bytes, FleetPeer] = field(default_factory=dict)
    addresses: dict[str, bytes] = field(default_factory=dict)  # network text -> peer key
    state: DeviceState = field(default_factory=DeviceState)


class Mirror:
    """The fleet state of one device as the watch reports it (see the module docstring)."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.snapshot = Snapshot(0, 0)
        self.loaded = False
        self.bad: dict[bytes, str] = {}  # key -> why its value is not used
        self.problems: list[str] = []  # new reports since the caller last took them

    def reset(self, revision: int, kvs: Iterable[tuple[bytes, bytes, int]]) -> set[bytes]:
        """Replace everything by a full read at `revision`; returns the peer keys that changed."""
        before = self.snapshot.peers
        self.snapshot = Snapshot(revision, 0)
        self.bad = {}
        events = [("PUT", key, value, mod) for key, value, mod in kvs]
        changed = self._feed(revision, events)
        self.loaded = True
        gone = {k for k in before if k not in self.snapshot.peers}
        changed |= gone
        changed |= {k for k, p in self.snapshot.peers.items() if before.get(k) != p}
        return changed

    def apply(self, revision: int, events: list[tuple[str, bytes, bytes, int]]) -> set[bytes]:
        """One watch response; returns the peer keys (public keys) whose entry or address
        allocations changed (what may change the rendered file).

        The mirror's revision (where a watch resumes) becomes the last event's mod revision,
        not the header's: a catching-up watch gets at most 1000 revisions per response with
        the store's *current* revision in the header, and resuming from that after a cut would
        skip the rest, removals included. Only a response without events (a progress notice,
        which etcd sends to a watch that has caught up) moves it to the header's revision."""
        if events:
            revision = max(ev[3] for ev in events)
        if revision <= self.snapshot.revision and not events:
            return set()
        return self._feed(revision, events)

    def take_problems(self) -> list[str]:
        """The values refused since the last call (for the log), once each."""
        problems, self.problems = self.problems, []
        return problems

    def _feed(self, revision: int, events: list[tuple[str, bytes, bytes, int]]) -> set[bytes]:
        snap = self.snapshot
        peers, addresses = dict(snap.peers), dict(snap.addresses)
        state = snap.state.copy()
        serial = snap.serial
        changed: set[bytes] = set()
        for kind_of_event, key, value, mod in events:
            if key == self.layout.serial:
                serial = mod if kind_of_event == "PUT" else 0
                continue
            try:
                split = self.layout.split(key)
            except FleetValueError as e:
                self._report(key, str(e))
                continue
            if split is None:
                continue
            kind, name = split
            self.bad.pop(key, None)
            self._drop(kind, name, peers, addresses, state, changed)
            if kind_of_event != "PUT":
                continue
            try:
                entry = parse_value(kind, name, value, self.layout.root.decode().rstrip("/"))
            except FleetValueError as e:
                self._report(key, f"{e} (skipped)")
                continue
            if kind == "peers":
                peers[entry.peer.public_key] = entry
                changed.add(entry.peer.public_key)
            elif kind == "addresses":
                addresses[name] = entry
                changed.add(entry)  # whether its peer may be rendered depends on it
            else:
                getattr(state, kind)[name] = entry
        state.changed, state.touched = False, set()
        self.snapshot = Snapshot(max(revision, snap.revision), serial, peers, addresses, state)
        return changed

    def _drop(self, kind, name, peers, addresses, state, changed) -> None:
        if kind == "peers":
            try:
                key = keys.decode(name)
            except keys.InvalidKey:
                return  # no peer was ever kept under this name
            if peers.pop(key, None) is not None:
                changed.add(key)
        elif kind == "addresses":
            owner = addresses.pop(name, None)
            if owner is not None:
                changed.add(owner)
        else:
            getattr(state, kind).pop(name, None)

    def _report(self, key: bytes, message: str) -> None:
        if self.bad.get(key) != message:
            self.problems.append(message)
        self.bad[key] = message
