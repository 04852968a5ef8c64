"""One running WireGuard device: the thin IO shell around the sans-IO protocol core.

The shell owns what the core must not: the UDP socket, the clock, the timer, the UAPI socket
and the "inside" that decrypted packets go to (the exit netstack, or until it exists the local
responder that answers pings to the device's own addresses). Everything runs on one asyncio
loop thread; the core is only ever touched from that thread, so it needs no locks.

Datagrams are read in batches until the socket would block, and the core's outputs are flushed
once per batch, so the per-datagram cost is the core's work plus one `recvfrom_into`.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import struct
import time
from collections.abc import Callable
from typing import Protocol

from tether import keys
from tether.config.exit_settings import ExitSettings
from tether.config.model import DEFAULT_MTU
from tether.config.values import Endpoint
from tether.device import udp
from tether.device.resolve import RESOLVE_TIMEOUT, Request, Resolver
from tether.device.state import PeerState, RunningState
from tether.device.uapi import (
    EADDRINUSE,
    EINVAL,
    DeviceSnapshot,
    PeerSnapshot,
    SetRequest,
    UapiError,
)
from tether.device.uapi import Endpoint as UapiEndpoint
from tether.wireguard.core import WireGuardCore

log = logging.getLogger("tether.device")

BATCH = 256
DATAGRAM_MAX = 65535
# UDP generic segmentation offload (Linux ≥ 4.18, udp(7)): the socket option's numbers are not
# in Python's socket module.
SOL_UDP = 17
UDP_SEGMENT = 103
GSO_MAX = 64  # the kernel's UDP_MAX_SEGMENTS
GSO_BYTES = 65000  # a GSO send is one UDP datagram before segmentation
GSO_MIN = 512  # small datagrams (ACKs, keepalives) rarely come in runs; send them as they are
_GSO_SIZE = struct.Struct("=H")


class Inside(Protocol):
    """Where decrypted packets go, and where packets toward peers come from. Optional:
    `set_mtu(mtu)`, `set_addresses(list)`, and `forget_peer(peer_key, now, keep=None)`, which
    ends what the inside holds for a peer's source addresses (all, or those `keep(src)` rejects)."""

    def deliver(self, peer_key: bytes, packet: bytes, now: float) -> None: ...

    def take_outbound(self) -> list[bytes]: ...

    def next_deadline(self) -> float | None: ...

    def on_timer(self, now: float) -> None: ...

    def close(self) -> None: ...


class Device:
    """A device is created empty and configured through the primitives below (the appliance's
    reconciler drives them from the file; the UAPI socket drives them from `wg set`)."""

    def __init__(
        self,
        name: str,
        *,
        private_key: bytes | None = None,
        mtu: int = DEFAULT_MTU,
        addresses: list | None = None,
        inside_factory: Callable[[Device], Inside] | None = None,
        bind_host4: str = "0.0.0.0",
        bind_host6: str = "::",
        resolver: Callable = socket.getaddrinfo,
        resolve_timeout: float = RESOLVE_TIMEOUT,
        exit_settings: ExitSettings | None = None,
    ):
        """`resolver` (getaddrinfo's signature) resolves named peer endpoints in a thread, giving
        up after `resolve_timeout` seconds. `exit_settings`: the file's `[Exit]` section, which
        the inside (the exit) reads when it is made; None gives the defaults."""
        self.name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self.core = WireGuardCore(private_key, mtu=mtu)
        self.addresses: list = list(addresses or [])
        self.exit_settings = exit_settings if exit_settings is not None else ExitSettings()
        self.sock: socket.socket | None = None
        self.listen_port = 0
        self._bind_hosts = (bind_host4, bind_host6)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._buffer = bytearray(DATAGRAM_MAX)
        self._addresses: dict = {}  # endpoint -> socket address, per bound socket
        self._gso = True
        self._inside_factory = inside_factory
        self.inside: Inside | None = None
        self.closed = False
        self._resolver = Resolver(resolver)
        self._resolve_timeout = resolve_timeout
        self._resolving: dict[bytes, Request] = {}  # peer key -> the name being resolved for it

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop | None = None, listen_port: int = 0) -> None:
        """Bind the socket and start serving. Raises udp.BindError if the port is taken."""
        self.loop = loop or asyncio.get_running_loop()
        self._bind(listen_port)
        if self._inside_factory is not None:
            self.inside = self._inside_factory(self)
        self.process_pending()

    def _bind(self, port: int) -> None:
        sock = udp.bind(port, *self._bind_hosts)
        self._addresses = {}
        if self.sock is not None:
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
        self.sock = sock
        self.listen_port = sock.getsockname()[1]
        self.loop.add_reader(sock.fileno(), self._on_readable)
        log.info("%s: listening on UDP port %d", self.name, self.listen_port)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self.sock is not None:
            if self.loop is not None and not self.loop.is_closed():
                self.loop.remove_reader(self.sock.fileno())
            self.sock.close()
        if self.inside is not None:
            self.inside.close()

    # -- configuration primitives (the reconciler's DeviceOps) --------------------------------

    def running_state(self) -> RunningState:
        peers = {
            key: PeerState(
                peer.preshared_key,
                peer.persistent_keepalive or 0,
                list(peer.allowed_ips),
                peer.endpoint,
            )
            for key, peer in self.core.peers.items()
        }
        return RunningState(
            self.core.private_key,
            self.listen_port,
            self.core.mtu,
            list(self.addresses),
            peers,
            self.exit_settings,
        )

    def set_private_key(self, key: bytes | None) -> None:
        self.core.set_private_key(key, time.monotonic())
        self.process_pending()

    def set_listen_port(self, port: int) -> None:
        """Rebind; raises udp.BindError (leaving the old socket in place) if the port is taken."""
        if port != self.listen_port or port == 0:
            self._bind(port)

    def set_mtu(self, mtu: int) -> None:
        self.core.mtu = mtu
        notify = getattr(self.inside, "set_mtu", None)
        if notify is not None:
            notify(mtu)

    def set_addresses(self, addresses: list) -> None:
        self.addresses = list(addresses)
        notify = getattr(self.inside, "set_addresses", None)
        if notify is not None:
            notify(self.addresses)

    def set_exit(self, settings: ExitSettings) -> None:
        """A changed `[Exit]` section, passed on to the inside (what it applies: ExitShell)."""
        self.exit_settings = settings
        notify = getattr(self.inside, "set_exit", None)
        if notify is not None:
            notify(settings)

    def set_peer(self, public_key: bytes, **changes) -> None:
        """Create or change a peer. `allowed_ips` replaces the peer's list; `endpoint` is a
        config Endpoint or an (ip, port) tuple. A host name is resolved off the loop (see
        `_resolve_later`); until then the peer keeps the endpoint it had (a new one has none)."""
        if public_key == self.core.public_key:
            return  # wg's rule: a peer with the device's own key is ignored
        kwargs = {}
        for name in ("preshared_key", "persistent_keepalive"):
            if name in changes:
                kwargs[name] = changes[name]
        if "allowed_ips" in changes:
            kwargs["allowed_ips"] = changes["allowed_ips"]
            kwargs["replace_allowed_ips"] = True
        named = None
        if "endpoint" in changes:
            endpoint = changes["endpoint"]
            pending = self._resolving.pop(public_key, None)
            if pending is not None:
                pending.cancel()  # this endpoint replaces the name being resolved
            if isinstance(endpoint, Endpoint):
                if endpoint.ip is None:
                    named, endpoint = endpoint, None
                else:
                    endpoint = (endpoint.host, endpoint.port)
            if endpoint is not None or public_key not in self.core.peers:
                kwargs["endpoint"] = endpoint
        self.core.add_or_update_peer(public_key, now=time.monotonic(), **kwargs)
        if named is not None:
            self._resolve_later(public_key, named)
        self.process_pending()

    def _resolve_later(self, public_key: bytes, endpoint: Endpoint) -> None:
        """Resolve a named endpoint in a thread (as wg does at `setconf` time, but never on the
        loop). The answer is applied if the peer is still the same peer and nothing (roaming,
        `wg set`) moved its endpoint meanwhile; a failure or timeout is logged once and leaves
        the peer as it is until it contacts us."""
        peer = self.core.peers.get(public_key)
        if peer is None or self.loop is None:
            return
        before = peer.endpoint

        def done(address: tuple[str, int] | None, reason: str | None) -> None:
            if self._resolving.get(public_key) is request:
                del self._resolving[public_key]
            if self.closed or self.core.peers.get(public_key) is not peer:
                return
            if peer.endpoint != before:
                return
            if address is None:
                log.warning(
                    "%s: peer %s: cannot resolve endpoint %s: %s (the peer is reachable once "
                    "it contacts us)",
                    self.name,
                    keys.encode(public_key),
                    endpoint,
                    reason,
                )
                return
            self.core.add_or_update_peer(public_key, now=time.monotonic(), endpoint=address)
            self.process_pending()

        request = self._resolver.resolve(
            self.loop, endpoint.host, endpoint.port, done, self._resolve_timeout
        )
        self._resolving[public_key] = request

    def remove_peer(self, public_key: bytes) -> None:
        self.core.remove_peer(public_key, time.monotonic())
        self.process_pending()

    # -- data path ---------------------------------------------------------------------------

    def _on_readable(self) -> None:
        sock = self.sock
        buf = self._buffer
        view = memoryview(buf)
        core = self.core
        now = time.monotonic()
        wall = time.time()
        for _ in range(BATCH):
            try:
                n, address = sock.recvfrom_into(buf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:  # ICMP errors surface here on Linux; the socket carries on
                log.debug("%s: recvfrom: %s", self.name, e)
                continue
            core.receive_datagram(bytes(view[:n]), udp.unmap(address), now, wall)
        self.process_pending()

    def send_packet(self, packet: bytes) -> bool:
        """Route an IP packet from the inside to the peer whose AllowedIPs cover its destination."""
        ok = self.core.send_packet(packet, time.monotonic(), time.time())
        return ok

    def process_pending(self) -> None:
        """Flush what the core produced, hand decrypted packets inside, collect what the inside
        has for peers, and rearm the timer. The inside calls this after host-side IO."""
        core = self.core
        inside = self.inside
        if core.routes_lost:
            self._end_lost_flows()
        for _ in range(4):  # inside replies may produce more core output; bounded passes
            if core.delivered:
                delivered, core.delivered = core.delivered, []
                if inside is not None:
                    now = time.monotonic()
                    for peer, packet in delivered:
                        inside.deliver(peer.public_key, packet, now)
            if inside is not None:
                outbound = inside.take_outbound()
                if outbound:
                    now, wall = time.monotonic(), time.time()
                    for packet in outbound:
                        core.send_packet(packet, now, wall)
            if core.outgoing:
                self._flush()
            if not core.delivered and not core.outgoing:
                break
        self._rearm()

    def _end_lost_flows(self) -> None:
        """Peers were removed or lost addresses (the file, the API through it, `wg set`, a key
        change): the inside ends what it holds for the addresses they lost, at once and without
        a word toward the tunnel, since replies are routed by destination address and the next
        owner of an address must not receive the old owner's streams. Every configuration path
        ends in `process_pending`, so this one place covers them all."""
        lost, self.core.routes_lost = self.core.routes_lost, set()
        forget = getattr(self.inside, "forget_peer", None)
        if forget is None:
            return
        now = time.monotonic()
        lookup = self.core.allowed_ips.lookup
        for key in lost:
            peer = self.core.peers.get(key)
            if peer is None:
                forget(key, now)
            else:  # still a peer: keep the flows of addresses still routed to it
                forget(key, now, keep=lambda src, peer=peer: lookup(src) is peer)

    def _flush(self) -> None:
        """Send the core's datagrams. A run of equal-sized datagrams to one endpoint (the full
        segments of a TCP download) goes out as one UDP GSO send (UDP_SEGMENT): one system call
        and one trip through the host stack for up to GSO_MAX datagrams. Where the kernel has no
        UDP GSO, the first refusal switches to one `sendto` per datagram."""
        outgoing, self.core.outgoing = self.core.outgoing, []
        sock = self.sock
        addresses = self._addresses
        drops = self.core.stats.drops
        n = len(outgoing)
        i = 0
        while i < n:
            datagram, endpoint = outgoing[i]
            address = addresses.get(endpoint)
            if address is None:
                address = udp.to_socket_address(sock, endpoint)
                if address is None:
                    i += 1
                    continue
                if len(addresses) > 4096:
                    addresses.clear()
                addresses[endpoint] = address
            size = len(datagram)
            j = i + 1
            if self._gso and size >= GSO_MIN:
                limit = min(n, i + min(GSO_MAX, GSO_BYTES // size))
                while j < limit:
                    d, e = outgoing[j]
                    if e != endpoint or len(d) != size:
                        if e == endpoint and len(d) < size:
                            j += 1  # a shorter last segment ends a GSO batch legally
                        break
                    j += 1
            try:
                if j - i > 1:
                    sock.sendmsg(
                        [d for d, _ in outgoing[i:j]],
                        [(SOL_UDP, UDP_SEGMENT, _GSO_SIZE.pack(size))],
                        0,
                        address,
                    )
                else:
                    sock.sendto(datagram, address)
            except (BlockingIOError, InterruptedError):
                # The socket buffer is full: drop, as a NIC would; WireGuard and the inner
                # transports recover from loss.
                drops["send_buffer_full"] += j - i
            except OSError as e:
                if j - i > 1 and e.errno in (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT):
                    self._gso = False
                    log.info(
                        "%s: no UDP GSO here (%s); sending datagrams one by one",
                        self.name,
                        e.strerror,
                    )
                    continue  # the same datagrams again, one at a time
                log.debug("%s: sendto %s: %s", self.name, endpoint, e)
            i = j

    def _rearm(self) -> None:
        deadline = self.core.next_deadline()
        if self.inside is not None:
            inner = self.inside.next_deadline()
            if inner is not None and (deadline is None or inner < deadline):
                deadline = inner
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None and not self.closed:
            # core deadlines are time.monotonic(); asyncio's loop.time() is the same clock
            self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        now, wall = time.monotonic(), time.time()
        self.core.on_timer(now, wall)
        if self.inside is not None:
            self.inside.on_timer(now)
        self.process_pending()

    # -- UAPI --------------------------------------------------------------------------------

    def uapi_get(self) -> DeviceSnapshot:
        peers = []
        for peer in self.core.peers.values():
            wall = peer.last_handshake_wall
            sec, nsec = (0, 0) if wall is None else (int(wall), int((wall % 1) * 1e9))
            endpoint = None
            if peer.endpoint is not None:
                endpoint = UapiEndpoint(
                    ipaddress.ip_address(peer.endpoint[0].split("%", 1)[0]), peer.endpoint[1]
                )
            peers.append(
                PeerSnapshot(
                    public_key=peer.public_key,
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
        return DeviceSnapshot(
            private_key=self.core.private_key, listen_port=self.listen_port, peers=peers
        )

    def uapi_set(self, request: SetRequest) -> None:
        """Apply a parsed `set` request as a whole: a port that cannot be bound is refused before
        anything changes."""
        now = time.monotonic()
        if request.listen_port is not None and request.listen_port != self.listen_port:
            try:
                self._bind(request.listen_port)
            except udp.BindError as e:
                raise UapiError(EADDRINUSE, str(e)) from None
        if request.private_key is not None:
            key = None if request.private_key == bytes(32) else request.private_key
            if key != self.core.private_key:
                self.core.set_private_key(key, now)
        if request.replace_peers:
            self.core.remove_all_peers(now)
        own = self.core.public_key
        for op in request.peers:
            if op.public_key == own:
                continue  # wg's rule: a peer with our own key is silently ignored
            if op.remove:
                self.core.remove_peer(op.public_key, now)
                continue
            exists = op.public_key in self.core.peers
            if op.update_only and not exists:
                continue
            changes = {}
            if op.preshared_key is not None:
                changes["preshared_key"] = (
                    None if op.preshared_key == bytes(32) else op.preshared_key
                )
            if op.endpoint is not None:
                changes["endpoint"] = (str(op.endpoint.address), op.endpoint.port)
            if op.persistent_keepalive_interval is not None:
                changes["persistent_keepalive"] = op.persistent_keepalive_interval
            adds = [c.network for c in op.allowed_ips if not c.remove]
            removes = [c.network for c in op.allowed_ips if c.remove]
            if op.replace_allowed_ips or adds:
                changes["allowed_ips"] = adds
                changes["replace_allowed_ips"] = op.replace_allowed_ips
            if removes:
                changes["remove_allowed_ips"] = removes
            try:
                self.core.add_or_update_peer(op.public_key, now=now, **changes)
            except ValueError as e:
                raise UapiError(EINVAL, str(e)) from None
        self.process_pending()
