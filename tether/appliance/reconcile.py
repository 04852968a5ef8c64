"""What must change on a running device so that it matches its file, and nothing more.

The file is the source of truth, but a running device also carries state the file does not:
sessions, and endpoints learned from roaming peers. So the plan compares the new file with the
device as it runs (keys, ports, allowed IPs: the device must match the file exactly, as after
`wg syncconf`) except for endpoints, which are compared with the previously applied file: an
endpoint is pushed only when the file changed it, so a roaming phone is not sent back to an
address it has left every time someone edits another peer.

Peers whose settings did not change are not named in the change at all, which is what keeps
their sessions (and the TCP connections inside them) alive across edits. The plan is one
`DeviceChange` (the value `wg set` requests become too), applied by `Device.apply`.

Planning costs what the edit touched, not what the file holds (a fleet host has 10,000 peers
and renders one more): when nothing but the reconciler applied anything to the device since it
applied `last` (the device's `generation` is the one it noted then), the device runs `last`
exactly (endpoints aside, which are compared with `last` anyway), so only the peers whose
objects differ between `last` and `new` can need a change, and the device is asked for those
alone (`snapshot(peers=...)`). The file's editor never changes a peer in place (it replaces the
object), so object identity is a safe "unchanged". After a `wg set` the generation differs and
the whole file is compared with the whole device, as before.
"""

from __future__ import annotations

from typing import Protocol

from tether import keys
from tether.config.model import DeviceConfig
from tether.config.model import Peer as PeerConfig
from tether.config.values import Endpoint
from tether.device.change import ZERO_KEY, DeviceChange, PeerChange
from tether.device.state import PeerState, RunningState

__all__ = ["DeviceOps", "allowed_ips_changed", "describe", "plan", "reconcile", "touched_peers"]


class DeviceOps(Protocol):
    """What the reconciler needs of a running device: its one snapshot and its one entry point
    (`tether.device.device.Device` offers both)."""

    @property
    def generation(self) -> int:
        """Counts `apply` calls (whoever made them)."""

    def snapshot(self, peers=None) -> RunningState:
        """The device as it runs (what the plan compares the file with); `peers`: only those."""

    def apply(self, change: DeviceChange) -> None:
        """Make the planned change live."""


def plan(
    running: RunningState,
    last: DeviceConfig | None,
    new: DeviceConfig,
    touched: set[bytes] | None = None,
) -> DeviceChange:
    """The change that makes a device running as `running` match `new`, given that `last` was
    the file applied before (None: nothing was). `touched` (see `touched_peers`): only these
    peers can differ from the device, and `running` may hold only them."""
    iface = new.interface
    listen_port = None
    if iface.listen_port is not None and iface.listen_port != running.listen_port:
        # `ListenPort = 0` means "any port": the device already has one, so only a file that
        # changed to 0 from a real port asks for a new one. Rebinding on every edit would move
        # the device to a fresh random port each time and strand every client.
        was = last.interface.listen_port if last is not None else 0
        if iface.listen_port != 0 or was:
            listen_port = iface.listen_port
    private_key = None
    if iface.private_key != running.private_key:
        private_key = iface.private_key if iface.private_key is not None else ZERO_KEY
    mtu = iface.effective_mtu if iface.effective_mtu != running.mtu else None
    addresses = None
    if list(iface.addresses) != list(running.addresses):
        addresses = tuple(iface.addresses)
    exit_settings = new.exit if new.exit != running.exit else None

    own = iface.public_key  # an X25519 computation: once, not per peer
    if touched is None:
        wanted = {p.public_key: p for p in new.peers if p.public_key != own}
        before = {p.public_key: p for p in last.peers} if last is not None else {}
        egress_may_differ = True
    else:
        wanted = {p.public_key: p for p in new.peers if p.public_key in touched}
        before = {p.public_key: p for p in last.peers if p.public_key in touched}
        wanted.pop(own, None)
        egress_may_differ = any(
            getattr(wanted.get(k), "egress", None) != getattr(before.get(k), "egress", None)
            for k in touched
        )
    peer_egress = None
    if egress_may_differ:  # every peer's, also when planning a few (the device takes them all)
        peer_egress = {p.public_key: p.egress for p in new.peers if p.egress is not None}
        peer_egress.pop(own, None)
        if peer_egress == dict(running.peer_egress):
            peer_egress = None
    peers = [PeerChange(key, remove=True) for key in running.peers if key not in wanted]
    for key, peer in wanted.items():
        change = _peer_change(running.peers.get(key), before.get(key), peer)
        if change is not None:
            peers.append(change)
    return DeviceChange(
        private_key=private_key,
        listen_port=listen_port,
        mtu=mtu,
        addresses=addresses,
        exit=exit_settings,
        peer_egress=peer_egress,
        peers=tuple(peers),
    )


def _peer_change(
    state: PeerState | None, last: PeerConfig | None, peer: PeerConfig
) -> PeerChange | None:
    key = peer.public_key
    psk = peer.preshared_key if peer.preshared_key is not None else ZERO_KEY
    if state is None:
        return PeerChange(
            key,
            preshared_key=psk,
            endpoint=peer.endpoint,
            persistent_keepalive=peer.persistent_keepalive,
            replace_allowed_ips=True,
            allowed_ips=tuple(peer.allowed_ips),
        )
    changed = False
    preshared_key = None
    if state.preshared_key != peer.preshared_key:
        preshared_key, changed = psk, True
    keepalive = None
    if state.persistent_keepalive != peer.persistent_keepalive:
        keepalive, changed = peer.persistent_keepalive, True
    replace = list(state.allowed_ips) != list(peer.allowed_ips)
    changed = changed or replace
    last_endpoint: Endpoint | None = last.endpoint if last is not None else None
    endpoint = None
    if peer.endpoint is not None and (last is None or peer.endpoint != last_endpoint):
        endpoint, changed = peer.endpoint, True
    if not changed:
        return None
    return PeerChange(
        key,
        preshared_key=preshared_key,
        endpoint=endpoint,
        persistent_keepalive=keepalive,
        replace_allowed_ips=replace,
        allowed_ips=tuple(peer.allowed_ips) if replace else (),
    )


def touched_peers(last: DeviceConfig, new: DeviceConfig) -> set[bytes]:
    """The public keys of the peers whose objects are not the same in `last` and `new` (added,
    removed or replaced: the editor replaces a peer it changes): one pass of identity checks."""
    kept = {id(p) for p in last.peers}
    fresh = {p.public_key for p in new.peers if id(p) not in kept}
    kept = {id(p) for p in new.peers}
    return fresh | {p.public_key for p in last.peers if id(p) not in kept}


def reconcile(
    device: DeviceOps,
    last: DeviceConfig | None,
    new: DeviceConfig,
    *,
    since: int | None = None,
) -> DeviceChange:
    """Apply the plan; returns the change made (for logs and tests). `since`: the device's
    `generation` right after `last` was reconciled; while it is still that, only the peers the
    edit touched are planned (module docstring)."""
    if (
        last is not None
        and since is not None
        and since == device.generation
        # a new private key may turn a peer skipped as the device's own into a real one
        and last.interface.private_key == new.interface.private_key
    ):
        touched = touched_peers(last, new)
        change = plan(device.snapshot(peers=touched), last, new, touched)
    else:
        change = plan(device.snapshot(), last, new)
    if change:
        device.apply(change)
    return change


def allowed_ips_changed(change: DeviceChange) -> list[bytes]:
    """Public keys of the peers the change gives a new AllowedIPs list (new peers included)."""
    return [p.public_key for p in change.peers if p.replace_allowed_ips]


def describe(change: DeviceChange) -> list[str]:
    """One word (and a key prefix) per part of the change, for the daemon's "applied" log."""
    parts = [
        name
        for name, value in (
            ("set_listen_port", change.listen_port),
            ("set_private_key", change.private_key),
            ("set_mtu", change.mtu),
            ("set_addresses", change.addresses),
            ("set_exit", change.exit),
            ("set_peer_egress", change.peer_egress),
        )
        if value is not None
    ]
    for peer in change.peers:
        word = "remove_peer" if peer.remove else "set_peer"
        parts.append(f"{word} {keys.encode(peer.public_key)[:8]}…")
    return parts
