"""The host side of the exit's IO shell: what the host's addresses are, how many descriptors
the process may hold (and so how many flows the exit may open), and the ping sockets that
carry peers' echo requests.

Kept apart from `shell` so that module stays about sockets per flow.
"""

from __future__ import annotations

import errno
import logging
import random
import socket
import struct
import time
from collections.abc import Callable

from tether.netstack.exit import ExitConfig
from tether.netstack.wire import (
    ICMPV4_ECHO_REPLY,
    ICMPV4_ECHO_REQUEST,
    ICMPV6_ECHO_REPLY,
    ICMPV6_ECHO_REQUEST,
    build_icmp,
)

log = logging.getLogger("tether.exit")

PING_BATCH = 64  # replies read per readable callback
_ICMP6_FILTER = 1  # <netinet/icmp6.h>; not exported by the socket module
_NOFILE_RAISED = False


def discover_host_addresses() -> tuple[set[bytes], set[bytes]]:
    """The host's own unicast addresses and its IPv4 directed broadcast addresses (Linux)."""
    local: set[bytes] = set()
    broadcast: set[bytes] = set()
    try:
        with open("/proc/net/fib_trie") as f:
            last = None
            for line in f:
                s = line.strip()
                if s.startswith("|-- "):
                    last = s[4:]
                elif last is not None and s.startswith("/32 host LOCAL"):
                    local.add(socket.inet_aton(last))
                elif last is not None and s.startswith("/32 link BROADCAST"):
                    broadcast.add(socket.inet_aton(last))
    except OSError:
        pass
    try:
        with open("/proc/net/if_inet6") as f:
            for line in f:
                field = line.split(None, 1)[0] if line.strip() else ""
                if len(field) == 32:
                    local.add(bytes.fromhex(field))
    except (OSError, ValueError):
        pass
    return local, broadcast


LIMIT_FIELDS = ("max_flows", "max_flows_per_peer", "max_buffer", "max_buffer_per_peer")


def limits_from(settings, base: ExitConfig, fd_cap: int) -> dict[str, int]:
    """The exit's four limits from an `[Exit]` section (an ExitSettings; None: a file without
    one): a limit the section leaves out is `base`'s. The total number of flows is capped by
    the file descriptors this process may open (`fd_cap`), since each flow holds one."""
    limits = {}
    for name in LIMIT_FIELDS:
        value = getattr(settings, name, None) if settings is not None else None
        limits[name] = value if value is not None else getattr(base, name)
    limits["max_flows"] = max(16, min(limits["max_flows"], fd_cap))
    return limits


def raise_nofile_limit() -> int:
    """Raise the soft limit on open files to the hard limit (every flow is a descriptor); the
    loop uses epoll, so large descriptor numbers are fine. Returns the soft limit in effect."""
    global _NOFILE_RAISED
    try:
        import resource
    except ImportError:  # pragma: no cover - not Linux
        return 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    want = min(want, 1 << 20)
    if not _NOFILE_RAISED and soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
        _NOFILE_RAISED = True
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


# (version, source address bytes, sequence number, payload, now) of one echo reply
EchoReply = Callable[[int, bytes, int, bytes, float], None]


class Pinger:
    """One ping socket for one address family, shared by every peer.

    Replies go to `on_reply` one by one, and `on_batch` runs after each readable callback's
    batch (the shell then runs the exit's actions and wakes the device). `readers` watches the
    socket (the shell's `DatagramSockets`: add(fd, callback), remove(fd))."""

    def __init__(
        self,
        readers,
        version: int,
        on_reply: EchoReply,
        on_batch: Callable[[], None],
    ) -> None:
        self.readers = readers
        self.version = version
        self._on_reply = on_reply
        self._on_batch = on_batch
        fam = socket.AF_INET if version == 4 else socket.AF_INET6
        proto = socket.IPPROTO_ICMP if version == 4 else socket.IPPROTO_ICMPV6
        self.family = fam
        self.request = ICMPV4_ECHO_REQUEST if version == 4 else ICMPV6_ECHO_REQUEST
        self.reply = ICMPV4_ECHO_REPLY if version == 4 else ICMPV6_ECHO_REPLY
        try:
            sock = socket.socket(fam, socket.SOCK_DGRAM, proto)
            self.raw = False
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EPERM, errno.EPROTONOSUPPORT):
                raise
            sock = socket.socket(fam, socket.SOCK_RAW, proto)  # needs CAP_NET_RAW
            self.raw = True
            if version == 6:
                words = [0xFFFFFFFF] * 8  # ICMP6_FILTER: block all but echo replies
                words[self.reply >> 5] &= ~(1 << (self.reply & 31))
                sock.setsockopt(proto, _ICMP6_FILTER, struct.pack("=8I", *words))
        sock.setblocking(False)
        self.sock = sock
        # A ping socket sets the identifier itself; a raw one sends ours and sees every echo
        # reply on the host, so ours is random and replies are filtered by it.
        self.ident = random.getrandbits(16)
        readers.add(sock.fileno(), self._readable)
        log.info("exit: IPv%d ping via %s socket", version, "raw" if self.raw else "ping")

    def send(self, host: str, seq: int, payload) -> int | None:
        """Send one echo request; the errno if the host refused it (logged at debug level),
        so the exit can answer the peer as a failed send deserves."""
        zero = bytes(4)  # ICMPv4 has no pseudo-header; for ICMPv6 the kernel sums it
        msg = build_icmp(zero, zero, self.request, 0, (self.ident << 16) | seq, payload)
        try:
            self.sock.sendto(msg, (host, 0))
        except OSError as e:
            log.debug("exit: ping %s: %s", host, e)
            return e.errno or errno.EIO
        return None

    def _readable(self) -> None:
        sock, on_reply, v4, raw = self.sock, self._on_reply, self.version == 4, self.raw
        now = time.monotonic()
        for _ in range(PING_BATCH):
            try:
                data, addr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue
            if raw and v4 and data:
                data = data[(data[0] & 15) << 2 :]
            if len(data) < 8 or data[0] != self.reply:
                continue
            if raw and int.from_bytes(data[4:6], "big") != self.ident:
                continue  # another program's ping
            try:
                src = socket.inet_pton(self.family, addr[0].split("%", 1)[0])
            except OSError:
                continue
            on_reply(self.version, src, int.from_bytes(data[6:8], "big"), data[8:], now)
        self._on_batch()

    def close(self) -> None:
        """Stop reading and close the socket (the shell is closing)."""
        self.readers.remove(self.sock.fileno())
        self.sock.close()
