"""The device's UDP socket: one dual-stack socket where the host has IPv6, else IPv4 only.

A single AF_INET6 socket with IPV6_V6ONLY off receives IPv4 peers as v4-mapped addresses
(`::ffff:192.0.2.1`). The protocol core and `wg show` should see plain `192.0.2.1`, so addresses
are unmapped on the way in and mapped again on the way out; the core never learns which kind of
socket is underneath.
"""

from __future__ import annotations

import errno
import ipaddress
import socket

RECV_BUFFER = 4 * 1024 * 1024
SEND_BUFFER = 4 * 1024 * 1024


class BindError(OSError):
    pass


def bind(port: int, host4: str = "0.0.0.0", host6: str = "::") -> socket.socket:
    """A non-blocking UDP socket on `port` (0 = a free one), dual-stack when possible."""
    sock = None
    if socket.has_ipv6:
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind((host6, port))
        except OSError as e:
            if sock is not None:
                sock.close()
            sock = None
            if e.errno == errno.EADDRINUSE:
                raise BindError(e.errno, f"UDP port {port} is already in use") from None
    if sock is None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((host4, port))
        except OSError as e:
            sock.close()
            raise BindError(e.errno, f"cannot bind UDP port {port}: {e.strerror}") from None
    for opt, size in ((socket.SO_RCVBUF, RECV_BUFFER), (socket.SO_SNDBUF, SEND_BUFFER)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, size)
        except OSError:
            pass  # the kernel caps it at net.core.*mem_max; a smaller buffer still works
    sock.setblocking(False)
    return sock


def is_dual_stack(sock: socket.socket) -> bool:
    return sock.family == socket.AF_INET6


def unmap(address: tuple) -> tuple[str, int]:
    """Socket address → (ip, port) as the core and `wg` want it (v4-mapped v6 → v4)."""
    host, port = address[0], address[1]
    if host.startswith("::ffff:") and "." in host:
        return host[7:], port
    return host, port


def to_socket_address(sock: socket.socket, endpoint: tuple[str, int]) -> tuple | None:
    """(ip, port) → what `sendto` on this socket takes; None if the family cannot be reached."""
    host, port = endpoint
    if sock.family == socket.AF_INET6:
        if ":" not in host:
            return (f"::ffff:{host}", port)
        return (host, port, 0, 0)
    if ":" in host:
        try:
            mapped = ipaddress.IPv6Address(host.split("%", 1)[0]).ipv4_mapped
        except ValueError:
            return None
        return (str(mapped), port) if mapped else None
    return (host, port)
