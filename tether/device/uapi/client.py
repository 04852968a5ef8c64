"""The client side of the UAPI socket, for `tetherctl show`/`showconf` and the tools that talk
to a running daemon. It reads what `format_get_response` writes (and what wireguard-go
writes), so it works against any userspace WireGuard, not only ours."""

from __future__ import annotations

import os
import socket

from tether.device.uapi.protocol import (
    DeviceSnapshot,
    PeerSnapshot,
    UapiError,
    parse_endpoint,
    parse_hex_key,
    parse_prefix,
    parse_uint,
)

TIMEOUT = 5.0


def request(path: str, text: bytes, timeout: float = TIMEOUT) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(text)
        reply = bytearray()
        while not reply.endswith(b"\n\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    return bytes(reply)


def parse_get_response(data: bytes) -> DeviceSnapshot:
    snap = DeviceSnapshot()
    peer: PeerSnapshot | None = None
    errno = None
    for raw in data.decode("utf-8", "replace").split("\n"):
        if not raw:
            continue
        key, sep, value = raw.partition("=")
        if not sep:
            raise UapiError(71, f"malformed reply line {raw[:60]!r}")
        if key == "errno":
            errno = int(value)
        elif key == "private_key":
            snap.private_key = parse_hex_key(key, value)
        elif key == "listen_port":
            snap.listen_port = parse_uint(key, value, 16)
        elif key == "fwmark":
            snap.fwmark = parse_uint(key, value, 32)
        elif key == "public_key":
            peer = PeerSnapshot(public_key=parse_hex_key(key, value))
            snap.peers.append(peer)
        elif peer is None:
            continue  # a device key we do not know: newer protocol, skip it
        elif key == "preshared_key":
            psk = parse_hex_key(key, value)
            peer.preshared_key = None if psk == bytes(32) else psk
        elif key == "endpoint":
            peer.endpoint = parse_endpoint(value)
        elif key == "last_handshake_time_sec":
            peer.last_handshake_time_sec = int(value)
        elif key == "last_handshake_time_nsec":
            peer.last_handshake_time_nsec = int(value)
        elif key == "tx_bytes":
            peer.tx_bytes = int(value)
        elif key == "rx_bytes":
            peer.rx_bytes = int(value)
        elif key == "persistent_keepalive_interval":
            peer.persistent_keepalive_interval = int(value)
        elif key == "allowed_ip":
            peer.allowed_ips.append(parse_prefix(value))
        elif key == "protocol_version":
            peer.protocol_version = int(value)
    if errno is None:
        raise UapiError(71, "reply ended without errno")
    if errno != 0:
        raise UapiError(abs(errno), os.strerror(abs(errno)))
    return snap


def get(path: str) -> DeviceSnapshot:
    return parse_get_response(request(path, b"get=1\n\n"))
