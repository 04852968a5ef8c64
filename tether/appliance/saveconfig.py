"""SaveConfig = true: write what changed at runtime back into the device's file.

wg-quick saves by regenerating the file from `wg showconf`, which loses every comment. Here the
running state is folded into the existing file through the lossless editor: peers added with
`wg set` are appended, removed ones deleted (with their comment block), and only the lines of
settings that actually changed are rewritten — an endpoint the peer roamed to, new allowed IPs,
a keepalive or key set over the UAPI socket.
"""

from __future__ import annotations

import ipaddress

from tether.config.editor import ConfigFile
from tether.config.model import Peer
from tether.config.values import Endpoint
from tether.device.state import RunningState


def fold_running_state(cfg: ConfigFile, state: RunningState) -> None:
    """Edit `cfg` in place so that it describes `state`."""
    iface = cfg.config.interface
    changes = {}
    if state.private_key is not None and state.private_key != iface.private_key:
        changes["private_key"] = state.private_key
    # A file without ListenPort (or with 0) asked for a random port: keep it that way rather
    # than pinning whatever port this run happened to get.
    if iface.listen_port and state.listen_port != iface.listen_port:
        changes["listen_port"] = state.listen_port
    if changes:
        cfg.update_interface(**changes)

    for peer in list(cfg.config.peers):
        if peer.public_key not in state.peers:
            cfg.remove_peer(peer.public_key)
    for key, running in state.peers.items():
        endpoint = _endpoint(running.endpoint)
        allowed = [ipaddress.ip_network(n) for n in running.allowed_ips]
        existing = cfg.peer(key)
        if existing is None:
            cfg.add_peer(
                Peer(
                    key,
                    preshared_key=running.preshared_key,
                    allowed_ips=allowed,
                    endpoint=endpoint,
                    persistent_keepalive=running.persistent_keepalive or 0,
                )
            )
            continue
        peer_changes = {}
        if running.preshared_key != existing.preshared_key:
            peer_changes["preshared_key"] = running.preshared_key
        if (running.persistent_keepalive or 0) != existing.persistent_keepalive:
            peer_changes["persistent_keepalive"] = running.persistent_keepalive or 0
        if allowed != existing.allowed_ips:
            peer_changes["allowed_ips"] = allowed
        if endpoint is not None and not _same_endpoint(existing.endpoint, endpoint):
            peer_changes["endpoint"] = endpoint
        if peer_changes:
            cfg.update_peer(key, **peer_changes)


def _endpoint(value: tuple[str, int] | None) -> Endpoint | None:
    if value is None:
        return None
    return Endpoint(value[0], value[1])


def _same_endpoint(written: Endpoint | None, running: Endpoint) -> bool:
    """A host name in the file that resolves to the running address is not replaced by it."""
    if written is None:
        return False
    if written.ip is None:
        return written.port == running.port
    return written.ip == running.ip and written.port == running.port
