"""The device's UDP socket: one dual-stack socket where the host has IPv6, else IPv4 only.

A single AF_INET6 socket with IPV6_V6ONLY off receives IPv4 peers as v4-mapped addresses
(`::ffff:192.0.2.1`). The protocol core and `wg show` should see plain `192.0.2.1`, so addresses
are unmapped on the way in and mapped again on the way out; the core never learns which kind of
socket is underneath.

Sending goes through a `DatagramSender`, which turns runs of equal-sized datagrams to one
endpoint into UDP GSO sends (below).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import struct
import sys

__all__ = [
    "GSO_BYTES",
    "GSO_MAX",
    "SOL_UDP",
    "UDP_SEGMENT",
    "BindError",
    "DatagramSender",
    "bind",
    "receive_stamped",
    "to_socket_address",
    "unmap",
]

log = logging.getLogger("tether.device")

RECV_BUFFER = 4 * 1024 * 1024
SEND_BUFFER = 4 * 1024 * 1024
# UDP generic segmentation offload (Linux >= 4.18, udp(7)): the socket option's numbers are not
# in Python's socket module.
SOL_UDP = 17
UDP_SEGMENT = 103
GSO_MAX = 64  # the kernel's UDP_MAX_SEGMENTS
GSO_BYTES = 65000  # a GSO send is one UDP datagram before segmentation
GSO_MIN = 512  # small datagrams (ACKs, keepalives) rarely come in runs; send them as they are
_GSO_SIZE = struct.Struct("=H")
# Kernel receive timestamps (socket(7) SO_TIMESTAMPNS, Linux): the queueing delay in front of
# the device is the age of the datagram at the head of its socket queue when it is read.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35 if sys.platform == "linux" else 0)
_TIMESPEC = struct.Struct("=qq")
_STAMP_SPACE = socket.CMSG_SPACE(_TIMESPEC.size) if hasattr(socket, "CMSG_SPACE") else 0


class BindError(OSError):
    pass


def bind(
    port: int, host4: str = "0.0.0.0", host6: str = "::", *, reuseport: bool = False
) -> socket.socket:
    """A non-blocking UDP socket on `port` (0 = a free one), dual-stack when possible.
    `reuseport`: join the port's SO_REUSEPORT group (the worker processes of one device share
    its port that way, steering.py); without it the port must be free."""
    sock = None
    if socket.has_ipv6:
        try:
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            if reuseport:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
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
            if reuseport:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host4, port))
        except OSError as e:
            sock.close()
            raise BindError(e.errno, f"cannot bind UDP port {port}: {e.strerror}") from None
    for opt, size in ((socket.SO_RCVBUF, RECV_BUFFER), (socket.SO_SNDBUF, SEND_BUFFER)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, opt, size)
        except OSError:
            pass  # the kernel caps it at net.core.*mem_max; a smaller buffer still works
    if SO_TIMESTAMPNS and _STAMP_SPACE:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        except OSError:
            pass  # no receive timestamps: the device reports no queueing delay
    sock.setblocking(False)
    return sock


def receive_stamped(sock: socket.socket, buf: bytearray) -> tuple[int, tuple, float | None]:
    """`recvfrom_into` that also returns when the kernel queued the datagram (wall-clock
    seconds), or None where the socket has no timestamps. Costlier than `recvfrom_into`, so the
    device uses it for the first datagram of a read only: its age is the socket queue's delay."""
    if not _STAMP_SPACE:
        n, address = sock.recvfrom_into(buf)
        return n, address, None
    n, ancillary, _flags, address = sock.recvmsg_into([buf], _STAMP_SPACE)
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            sec, nsec = _TIMESPEC.unpack_from(data)
            return n, address, sec + nsec * 1e-9
    return n, address, None


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


class DatagramSender:
    """Sends the protocol core's datagrams through one socket.

    A run of equal-sized datagrams to one endpoint (the full segments of a TCP download) goes
    out as one UDP GSO send (UDP_SEGMENT): one system call and one trip through the host stack
    for up to GSO_MAX datagrams. Where the kernel has no UDP GSO, the first refusal switches to
    one `sendto` per datagram for good. Socket addresses are cached per endpoint.
    """

    def __init__(self, sock: socket.socket, name: str = "") -> None:
        self.sock = sock
        self.name = name  # for log lines
        self.gso = True
        self._addresses: dict = {}  # endpoint -> socket address

    def send(self, datagrams: list[tuple[bytes, tuple]]) -> int:
        """Send every (datagram, endpoint) pair; returns how many were dropped because the
        socket buffer was full (as a NIC drops: WireGuard and the inner transports recover)."""
        sock = self.sock
        addresses = self._addresses
        dropped = 0
        n = len(datagrams)
        i = 0
        while i < n:
            datagram, endpoint = datagrams[i]
            address = addresses.get(endpoint)
            if address is None:
                address = to_socket_address(sock, endpoint)
                if address is None:
                    i += 1
                    continue
                if len(addresses) > 4096:
                    addresses.clear()
                addresses[endpoint] = address
            size = len(datagram)
            j = i + 1
            if self.gso and size >= GSO_MIN:
                limit = min(n, i + min(GSO_MAX, GSO_BYTES // size))
                while j < limit:
                    d, e = datagrams[j]
                    if e != endpoint or len(d) != size:
                        if e == endpoint and len(d) < size:
                            j += 1  # a shorter last segment ends a GSO batch legally
                        break
                    j += 1
            try:
                if j - i > 1:
                    sock.sendmsg(
                        [d for d, _ in datagrams[i:j]],
                        [(SOL_UDP, UDP_SEGMENT, _GSO_SIZE.pack(size))],
                        0,
                        address,
                    )
                else:
                    sock.sendto(datagram, address)
            except (BlockingIOError, InterruptedError):
                dropped += j - i
            except OSError as e:
                if j - i > 1 and e.errno in (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT):
                    self.gso = False
                    log.info(
                        "%s: no UDP GSO here (%s); sending datagrams one by one",
                        self.name,
                        e.strerror,
                    )
                    continue  # the same datagrams again, one at a time
                log.debug("%s: sendto %s: %s", self.name, endpoint, e)
            i = j
        return dropped
