"""What must change on a running device so that it matches its file, and nothing more.

The file is the source of truth, but a running device also carries state the file does not:
sessions, and endpoints learned from roaming peers. So the plan compares the new file with the
device as it runs (keys, ports, allowed IPs: the device must match the file exactly, as after
`wg syncconf`) except for endpoints, which are compared with the previously applied file: an
endpoint is pushed only when the file changed it, so a roaming phone is not sent back to an
address it has left every time someone edits another peer.

Peers whose settings did not change get no operation at all, which is what keeps their sessions
(and the TCP connections inside them) alive across edits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from tether.config.model import DeviceConfig
from tether.config.model import Peer as PeerConfig
from tether.config.values import Endpoint
from tether.device.state import PeerState, RunningState


class DeviceOps(Protocol):
    """The primitive operations a running device offers the reconciler."""

    def running_state(self) -> RunningState: ...

    def set_private_key(self, key: bytes | None) -> None: ...

    def set_listen_port(self, port: int) -> None: ...

    def set_mtu(self, mtu: int) -> None: ...

    def set_addresses(self, addresses: list) -> None: ...

    def set_exit(self, settings) -> None: ...

    def set_peer(self, public_key: bytes, **changes) -> None: ...

    def remove_peer(self, public_key: bytes) -> None: ...


@dataclass(frozen=True)
class Op:
    # set_private_key | set_listen_port | set_mtu | set_addresses | set_exit | set_peer |
    # remove_peer
    name: str
    args: tuple = ()
    changes: tuple = ()  # (field, value) pairs for set_peer

    def apply(self, device: DeviceOps) -> None:
        getattr(device, self.name)(*self.args, **dict(self.changes))


def plan(running: RunningState, last: DeviceConfig | None, new: DeviceConfig) -> list[Op]:
    ops: list[Op] = []
    iface = new.interface
    # The port comes first: if it cannot be bound, nothing else has changed yet.
    if iface.listen_port is not None and iface.listen_port != running.listen_port:
        ops.append(Op("set_listen_port", (iface.listen_port,)))
    if iface.private_key != running.private_key:
        ops.append(Op("set_private_key", (iface.private_key,)))
    if iface.effective_mtu != running.mtu:
        ops.append(Op("set_mtu", (iface.effective_mtu,)))
    if list(iface.addresses) != list(running.addresses):
        ops.append(Op("set_addresses", (list(iface.addresses),)))
    if new.exit != running.exit:
        ops.append(Op("set_exit", (new.exit,)))

    own = iface.public_key  # an X25519 computation: once, not per peer
    wanted = {p.public_key: p for p in new.peers if p.public_key != own}
    before = {p.public_key: p for p in last.peers} if last is not None else {}
    for key in running.peers:
        if key not in wanted:
            ops.append(Op("remove_peer", (key,)))
    for key, peer in wanted.items():
        changes = _peer_changes(running.peers.get(key), before.get(key), peer)
        if changes is not None:
            ops.append(Op("set_peer", (key,), tuple(changes.items())))
    return ops


def _peer_changes(
    state: PeerState | None, last: PeerConfig | None, peer: PeerConfig
) -> dict | None:
    if state is None:
        return {
            "preshared_key": peer.preshared_key,
            "persistent_keepalive": peer.persistent_keepalive,
            "allowed_ips": list(peer.allowed_ips),
            "endpoint": peer.endpoint,
        }
    changes: dict = {}
    if state.preshared_key != peer.preshared_key:
        changes["preshared_key"] = peer.preshared_key
    if state.persistent_keepalive != peer.persistent_keepalive:
        changes["persistent_keepalive"] = peer.persistent_keepalive
    if list(state.allowed_ips) != list(peer.allowed_ips):
        changes["allowed_ips"] = list(peer.allowed_ips)
    last_endpoint: Endpoint | None = last.endpoint if last is not None else None
    if peer.endpoint is not None and (last is None or peer.endpoint != last_endpoint):
        changes["endpoint"] = peer.endpoint
    return changes or None


def reconcile(device: DeviceOps, last: DeviceConfig | None, new: DeviceConfig) -> list[Op]:
    """Apply the plan; returns the operations performed (for logs and tests)."""
    ops = plan(device.running_state(), last, new)
    for op in ops:
        op.apply(device)
    return ops
