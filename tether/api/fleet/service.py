"""Peer operations of a fleet device: the API's adds and removes go to etcd, not to the file.

`FleetPeerService` is the `PeerService` of `tetherctl run --fleet-etcd`: the routes, the `peer`
operations of the invites and the janitor call it exactly as they call the file-only one. An add
allocates from the fleet's allocations (plus this host's hand-written peers) and commits, in ONE
etcd transaction guarded by the device's serial key, the peer, every address it takes
(create-only), its owner entry and an invite use; a remove deletes the peer and its addresses and
quarantines them. Neither edits the file: the watcher renders the committed revision into every
host's file (`appliance/fleet.py`), and an API write returns once this host's file and device have
that revision, so a 200 still means "in the file and live on the device", and within a second it
is live on the other hosts too.

Reads (a config, the owner check, the peer list) stay those of the file-only service: the
rendered file has the fleet's peers, so a peer gets its config while etcd is down. Peers written
by hand in this host's file stay this host's: they are never sent to etcd, their addresses are
kept out of this host's allocations, and removing one edits only this file.
"""

from __future__ import annotations

import ipaddress
import logging

from tether import keys
from tether.api.errors import BadRequest, Conflict, Forbidden, PeerError, Unavailable
from tether.api.fleet.device import Fleet, FleetDevice
from tether.api.fleet.etcd import absent
from tether.api.fleet.layout import address_value, peer_value, state_diff
from tether.api.fleet.registry import EtcdRegistry
from tether.api.fleet.render import LocalView, managed_keys
from tether.api.peers.allocator import Allocator
from tether.api.peers.clientconf import render_client_config
from tether.api.peers.ownership import Added, Claim
from tether.api.peers.service import _EXISTS, PeerService, key_pair
from tether.api.state import DeviceState
from tether.config import store
from tether.config.editor import ConfigFile
from tether.config.model import Peer
from tether.device.hub import ApplyError

log = logging.getLogger("tether.api")

_FORBIDDEN = object()


class FleetPeerService(PeerService):
    """See the module docstring; the other arguments are PeerService's."""

    shared = True

    def __init__(self, hub, public, *, fleet: Fleet, **kwargs) -> None:
        kwargs["registry"] = lambda name: EtcdRegistry(fleet.device(name))
        super().__init__(hub, public, **kwargs)
        self.fleet = fleet
        self._pools: dict[str, _Pool] = {}

    def add(
        self,
        name: str,
        public_key: bytes | None,
        endpoint_type: str,
        *,
        client: str | None = None,
        apply: bool = True,
        grant: str | None = None,
        claim: Claim | None = None,
        note: str = "",
    ) -> Added:
        """As PeerService.add, in etcd (see the module docstring)."""
        host = self._host(endpoint_type)
        live_port = self.hub.listen_port(name)
        public_key, private = key_pair(public_key)
        dev = self.fleet.device(name)
        view = self._local(name, dev)
        iface = view.config.interface
        port = self._port(name, live_port, view)
        if iface.public_key == public_key:
            raise BadRequest("this is the device's own public key")
        hand = view.hand_written()
        if any(p.public_key == public_key for p in hand):
            raise Conflict("a peer with this public key already exists")
        local_nets = [n for p in hand for n in p.allowed_ips]
        admission = self._admission(public_key, client, grant, claim, note)
        layout = dev.layout

        def build(snap):
            if public_key in snap.peers:
                return _EXISTS, None, None
            now = self.clock()
            rs = snap.state.copy()
            rs.prune(now)
            alloc = self._pool(name, iface.addresses).sync(snap.peers)
            orphans = [t for t, k in snap.addresses.items() if k not in snap.peers]

            def hold(quarantined: set[str]) -> None:
                texts = [*orphans, *quarantined]
                alloc.hold([*(ipaddress.ip_network(t) for t in texts), *local_nets])

            nets = admission.admit(rs, now, alloc, hold)
            if not isinstance(nets, list):
                return nets, None, None
            alloc.remove_peer(nets)  # taken once etcd says so (the mirror brings it back)
            peer = Peer(public_key, allowed_ips=nets)
            ops = state_diff(layout, snap.state, rs)
            ops.append(("put", layout.peer(public_key), peer_value(peer, admission.comment)))
            ops += [("put", layout.address(n), address_value(public_key)) for n in nets]
            compare = [absent(layout.peer(public_key))]
            compare += [absent(layout.address(n)) for n in nets]
            return peer, compare, ops

        result, revision = dev.transact(build)
        self._refuse(name, result)
        peer: Peer = result
        log.info(
            "%s: peer %s added to the fleet with %s (%s%s)",
            name,
            keys.encode(public_key),
            ", ".join(map(str, peer.allowed_ips)),
            client or self.source,
            f", {grant}" if grant else "",
        )
        try:
            self._live_here(name, dev, revision, public_key, apply)
        except Unavailable:
            self._unstore(dev, peer, claim)
            raise
        text = render_client_config(
            view.config,
            peer,
            host,
            port,
            private_key=private,
            include_psk=self.include_psk,
        )
        return Added(peer, text, admission.secret)

    def _pool(self, name: str, addresses) -> _Pool:
        """The device's allocator, kept in step with the fleet's peers between adds (called
        under the device's write lock: see FleetDevice.transact)."""
        pool = self._pools.get(name)
        if pool is None or pool.addresses != addresses:
            pool = self._pools[name] = _Pool(addresses)
        return pool

    def _local(self, name: str, dev: FleetDevice) -> LocalView:
        """This host's file as the renderer last wrote it, when it still holds those bytes
        (reading 10,000 peers' bytes costs a millisecond, parsing them half a second); else
        the file parsed as it is now (a hand edit the renderer has not seen yet)."""
        view = dev.local
        if view is not None:
            try:
                if self._path(name).read_bytes() == view.data:
                    return view
            except OSError:
                pass
        cfg = self.device_config(name)
        return LocalView.of(cfg.text().encode(), cfg, frozenset(managed_keys(cfg)))

    def _live_here(
        self, name: str, dev: FleetDevice, revision: int, public_key: bytes, apply: bool
    ) -> None:
        """Wait until this host rendered `revision` into the file (and its daemon applied it);
        Unavailable when that does not happen in time."""
        if not apply:
            return
        if not dev.wait_rendered(revision):
            raise Unavailable(f"device {name}: the change did not reach this host's file in time")
        try:
            self.hub.apply_now(name, (public_key,))
        except ApplyError as e:
            raise Unavailable(f"the change could not be applied: {e}") from None

    def _unstore(self, dev: FleetDevice, peer: Peer, claim: Claim | None) -> None:
        """Undo an add that never went live here: no quarantine, the invite use given back."""
        key = keys.encode(peer.public_key)
        layout = dev.layout

        def build(snap):
            entry = snap.peers.get(peer.public_key)
            if entry is None or entry.peer.allowed_ips != peer.allowed_ips:
                return None, None, None
            rs = snap.state.copy()
            rs.forget(key)
            if claim is not None:
                claim.give_back(rs)
            return None, [], [*state_diff(layout, snap.state, rs), *_drop_peer(snap, layout, peer)]

        try:
            dev.transact(build)
        except PeerError as e:
            log.error("%s: peer %s not undone in the fleet: %s", layout.device, key, e)

    def remove(
        self,
        name: str,
        public_key: bytes,
        *,
        client: str | None = None,
        apply: bool = True,
        authorize=None,
    ) -> bool:
        """As PeerService.remove: a fleet peer leaves etcd (and so every host); a peer written
        by hand in this host's file leaves this file only."""
        dev = self.fleet.device(name)
        key = keys.encode(public_key)
        if public_key not in dev.snapshot().peers:
            return self._remove_local(name, public_key, client, apply, authorize)
        layout = dev.layout

        def build(snap):
            entry = snap.peers.get(public_key)
            if entry is None:
                return False, None, None
            owner = snap.state.owners.get(key)
            if authorize is not None and not authorize(entry.peer, owner):
                return _FORBIDDEN, None, None
            now = self.clock()
            rs: DeviceState = snap.state.copy()
            gone = rs.forget(key)
            rs.release(
                entry.peer.allowed_ips, now, self.quarantine, bool(gone and gone.self_service)
            )
            ops = [*state_diff(layout, snap.state, rs), *_drop_peer(snap, layout, entry.peer)]
            return True, [], ops

        result, revision = dev.transact(build)
        if result is _FORBIDDEN:
            raise Forbidden("this token does not own that peer")
        if result:
            log.info("%s: peer %s removed from the fleet (%s)", name, key, client or self.source)
            self._live_here(name, dev, revision, public_key, apply)
        return bool(result)

    def _remove_local(self, name, public_key, client, apply, authorize) -> bool:
        managed_now = []

        def change(cfg: ConfigFile):
            peer = cfg.peer(public_key)
            if peer is None:
                return False
            if public_key in managed_keys(cfg):
                managed_now.append(peer)  # rendered, but gone from etcd: the renderer's job
                return False
            if authorize is not None and not authorize(peer, None):
                return _FORBIDDEN
            cfg.remove_peer(public_key)
            return True

        state = self._state(name)
        with state.lock:
            result = store.edit(self._path(name), change, cache=state.cache)
        if result is _FORBIDDEN:
            raise Forbidden("this token does not own that peer")
        if result:
            log.info(
                "%s: hand-written peer %s removed from this host's file (%s)",
                name,
                keys.encode(public_key),
                client or self.source,
            )
        if apply and (result or managed_now):
            try:
                self.hub.apply_now(name, (public_key,))
            except ApplyError as e:
                raise Unavailable(f"the removal could not be applied: {e}") from None
        return bool(result)


class _Pool:
    """An allocator over the fleet's peers, updated by difference: building one for 10,000
    peers costs more than the rest of an add, and consecutive snapshots share their entries."""

    def __init__(self, addresses) -> None:
        self.addresses = list(addresses)
        self.alloc = Allocator(self.addresses)
        self.seen: dict[bytes, object] = {}  # public key -> the FleetPeer entry covered

    def sync(self, peers) -> Allocator:
        seen, alloc = self.seen, self.alloc
        for key in [k for k in seen if k not in peers]:
            alloc.remove_peer(seen.pop(key).peer.allowed_ips)
        for key, entry in peers.items():
            old = seen.get(key)
            if old is not entry:
                if old is not None:
                    alloc.remove_peer(old.peer.allowed_ips)
                alloc.add_peer(entry.peer.allowed_ips)
                seen[key] = entry
        return alloc


def _drop_peer(snap, layout, peer: Peer) -> list[tuple]:
    """Delete the peer's key and the address keys that name it."""
    ops = [("delete", layout.peer(peer.public_key))]
    for net in peer.allowed_ips:
        if snap.addresses.get(str(net)) == peer.public_key:
            ops.append(("delete", layout.address(net)))
    return ops
