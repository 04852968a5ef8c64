"""Between the UAPI codec (uapi.py) and a device: `get` from its snapshot, `set` as one change.

The device knows nothing of the UAPI text protocol and the codec nothing of devices; this module
maps one onto the other. A `set` request becomes one `DeviceChange` (the same value the
appliance's reconciler builds from a file), applied whole: a port that cannot be bound refuses
the request with EADDRINUSE before anything changed. The rest of wg's rules live in the device
(`Device.apply`): a peer with the device's own key is ignored, a zero key means "none".
"""

from __future__ import annotations

import ipaddress

from tether.config.values import Endpoint
from tether.device.change import DeviceChange, PeerChange
from tether.device.state import RunningState
from tether.device.uapi.protocol import (
    EADDRINUSE,
    EINVAL,
    DeviceSnapshot,
    PeerOp,
    PeerSnapshot,
    SetRequest,
    UapiError,
)
from tether.device.uapi.protocol import Endpoint as UapiEndpoint
from tether.device.udp import BindError

__all__ = ["change_from_request", "snapshot_for_get", "uapi_get", "uapi_set"]


def change_from_request(request: SetRequest) -> DeviceChange:
    """A parsed `set` request as a device change (fwmark, which has no effect here, is
    dropped). The codec folded each peer section already (see uapi.py); `allowed_ip=-CIDR`
    lines become removals, the others additions."""
    return DeviceChange(
        private_key=request.private_key,
        listen_port=request.listen_port,
        replace_peers=request.replace_peers,
        peers=tuple(_peer_change(op) for op in request.peers),
    )


def _peer_change(op: PeerOp) -> PeerChange:
    if op.remove:
        return PeerChange(op.public_key, remove=True)
    endpoint = None
    if op.endpoint is not None:
        endpoint = Endpoint(str(op.endpoint.address), op.endpoint.port)
    return PeerChange(
        op.public_key,
        update_only=op.update_only,
        preshared_key=op.preshared_key,
        endpoint=endpoint,
        persistent_keepalive=op.persistent_keepalive_interval,
        replace_allowed_ips=op.replace_allowed_ips,
        allowed_ips=tuple(c.network for c in op.allowed_ips if not c.remove),
        remove_allowed_ips=tuple(c.network for c in op.allowed_ips if c.remove),
    )


def snapshot_for_get(state: RunningState) -> DeviceSnapshot:
    """What a `get` reports of a device snapshot."""
    peers = []
    for key, peer in state.peers.items():
        wall = peer.last_handshake
        sec, nsec = (0, 0) if wall is None else (int(wall), int((wall % 1) * 1e9))
        endpoint = None
        if peer.endpoint is not None:
            host, port = peer.endpoint
            endpoint = UapiEndpoint(ipaddress.ip_address(host.split("%", 1)[0]), port)
        peers.append(
            PeerSnapshot(
                public_key=key,
                preshared_key=peer.preshared_key,
                endpoint=endpoint,
                last_handshake_time_sec=sec,
                last_handshake_time_nsec=nsec,
                tx_bytes=peer.tx_bytes,
                rx_bytes=peer.rx_bytes,
                persistent_keepalive_interval=peer.persistent_keepalive,
                allowed_ips=list(peer.allowed_ips),
            )
        )
    return DeviceSnapshot(private_key=state.private_key, listen_port=state.listen_port, peers=peers)


def uapi_get(device) -> DeviceSnapshot:
    """Answer `get=1` for `device` (anything with `snapshot()`)."""
    return snapshot_for_get(device.snapshot())


def uapi_set(device, request: SetRequest) -> None:
    """Apply a `set=1` request to `device` (anything with `apply(DeviceChange)`); raises
    UapiError with wg's errno when the device refuses it."""
    try:
        device.apply(change_from_request(request))
    except BindError as e:
        raise UapiError(EADDRINUSE, str(e)) from None
    except ValueError as e:
        raise UapiError(EINVAL, str(e)) from None
