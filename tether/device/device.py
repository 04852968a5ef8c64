"""One running WireGuard device: the thin IO shell around the sans-IO protocol core.

The shell owns what the core must not: the UDP socket (`udp.py`, GSO sends), the clock and one
timer, and the inside that decrypted packets go to (the exit, `ExitShell`, made by an
`InsideFactory`; see inside.py). Everything runs on one asyncio loop thread; the core and the
inside are only ever touched from that thread, so they need no locks.

Configuration has one entry point, `apply(DeviceChange)` (wg set's semantics; the appliance's
reconciler and the UAPI adapter both build changes), and one view, `snapshot()`, which every
reader uses (the reconciler's plan, the UAPI `get`, the API's hub). The device knows nothing of
config files or of the UAPI text protocol.

Outputs are collected once, right where input arrived (`_collect`): datagrams read → core →
its packets to the inside, which runs the host actions they cause at once → the inside's packets
back to the core → the core's datagrams flushed → the timer rearmed. Datagrams are read in
batches of up to `BATCH` until the socket would block, so the per-datagram cost is the core's
work plus one `recvfrom_into`. The batch is bounded because every packet in it waits for the
whole batch before its answer leaves: 64 measured as fast as 256 on an upload (544-606 vs 520
Mbit/s) with ping p50/p90 under the upload at 2.8-3.9/4.0-5.2 ms instead of 4.7/7.5; 32 cost a
tenth of the throughput. Host-side input (an exit socket became readable) reaches the device
through the inside's `wake()`, which schedules one collection per loop iteration however often
it is called. The answers to small packets (echo replies, UDP flows) do not wait for that turn:
before each batch the device asks the inside to `poll()` them and collects at once if there were
any, since a tunnel socket kept readable by an upload would otherwise be served first and the
reply would wait for a whole batch. An answer that comes back while the inside is still working
on a batch (it serves the batch's datagrams first) it sends through `send_now`, at once.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Collection
from types import MappingProxyType

from tether import keys
from tether.config.egress import Egress
from tether.config.exit_settings import ExitSettings
from tether.config.model import DEFAULT_MTU
from tether.config.values import Endpoint
from tether.device import udp
from tether.device.change import ZERO_KEY, DeviceChange, PeerChange
from tether.device.inside import Inside, InsideContext, InsideFactory
from tether.device.resolve import RESOLVE_TIMEOUT, Request, Resolver
from tether.device.state import PeerState, RunningState
from tether.device.steering import WorkerRole
from tether.wireguard.core import WireGuardCore

__all__ = ["BATCH", "Device"]

log = logging.getLogger("tether.device")

BATCH = 64  # datagrams read per readable callback (see the module docstring)
DATAGRAM_MAX = 65535


class Device:
    """A device is created empty and configured with `apply` (the appliance's reconciler
    drives it from the file; the UAPI adapter from `wg set`)."""

    def __init__(
        self,
        name: str,
        *,
        private_key: bytes | None = None,
        mtu: int = DEFAULT_MTU,
        addresses: list | tuple | None = None,
        inside_factory: InsideFactory | None = None,
        bind_host4: str = "0.0.0.0",
        bind_host6: str = "::",
        resolver=socket.getaddrinfo,
        resolve_timeout: float = RESOLVE_TIMEOUT,
        exit_settings: ExitSettings | None = None,
        role: WorkerRole | None = None,
    ):
        """`resolver` (getaddrinfo's signature) resolves named peer endpoints in a thread, giving
        up after `resolve_timeout` seconds. `exit_settings`: the file's `[Exit]` section, which
        the inside (the exit) reads when it is made; None gives the defaults.

        `role`: this device is one worker of a device spread over processes (steering.py,
        docs/workers.md): session indices from its residue class, its socket from the role,
        and with an owner rule, initiations of peers owned elsewhere forwarded."""
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._role = role
        residue = (role.k, role.n) if role is not None else (0, 1)
        self._core = WireGuardCore(private_key, mtu=mtu, index_residue=residue)
        if role is not None and role.owner is not None:
            self._core.set_owner(lambda key, owner=role.owner, k=role.k: owner(key) == k)
        self._addresses = tuple(addresses or ())
        self._exit_settings = exit_settings if exit_settings is not None else ExitSettings()
        self._peer_egress: dict[bytes, Egress] = {}
        self._sock: socket.socket | None = None
        self._sender: udp.DatagramSender | None = None
        self._listen_port = 0
        self._bind_hosts = (bind_host4, bind_host6)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._woken = False
        self._buffer = bytearray(DATAGRAM_MAX)
        self._inside_factory = inside_factory
        self._inside: Inside | None = None
        self._send_drops = 0  # datagrams dropped because the socket buffer was full
        self._queue_delay: float | None = None  # how long this read's first datagram waited
        self._queue_delay_sum = 0.0  # of every read's first datagram, for metrics
        self._queue_delay_reads = 0
        self.closed = False
        self._resolver = Resolver(resolver)
        self._resolve_timeout = resolve_timeout
        self._resolving: dict[bytes, Request] = {}  # peer key -> the name being resolved for it
        self._generation = 0  # `apply` calls so far (see `generation`)

    @property
    def listen_port(self) -> int:
        """The UDP port the device really listens on (0 before `start`)."""
        return self._listen_port

    @property
    def public_key(self) -> bytes | None:
        """The device's public key (None without a private key)."""
        return self._core.public_key

    @property
    def generation(self) -> int:
        """How many times `apply` was called: configuration changes only through `apply`, so a
        reader that saw the device at one generation knows nothing changed while it is the same
        (the reconciler plans only the peers a file edit touched when no one else, `wg set`,
        applied anything since its own apply)."""
        return self._generation

    @property
    def inside(self) -> Inside | None:
        """What the inside factory made (None before `start` or without one)."""
        return self._inside

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop | None = None, listen_port: int = 0) -> None:
        """Bind the socket and start serving. Raises udp.BindError if the port is taken."""
        self._loop = loop or asyncio.get_running_loop()
        self._bind(listen_port)
        if self._inside_factory is not None:
            self._inside = self._inside_factory(
                InsideContext(
                    loop=self._loop,
                    wake=self._wake,
                    mtu=self._core.mtu,
                    addresses=self._addresses,
                    exit_settings=self._exit_settings,
                    name=self.name,
                    send_now=self._send_now,
                )
            )
            if self._peer_egress:  # applied before the start: the peers' first flows need it
                self._inside.set_peer_egress(dict(self._peer_egress))
        self._collect()

    def _bind(self, port: int) -> None:
        if self._role is not None:
            sock = self._role.socket(port)
        else:
            sock = udp.bind(port, *self._bind_hosts)
        if self._sock is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
        self._sock = sock
        self._sender = udp.DatagramSender(sock, self.name)
        self._listen_port = sock.getsockname()[1]
        self._loop.add_reader(sock.fileno(), self._on_readable)
        log.info("%s: listening on UDP port %d", self.name, self._listen_port)

    def close(self) -> None:
        """Stop serving: socket, timer, pending name lookups and the inside; idempotent."""
        if self.closed:
            return
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        for request in self._resolving.values():
            request.cancel()
        self._resolving.clear()
        if self._sock is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
        if self._inside is not None:
            self._inside.close()

    # -- configuration: one way in, one way out ----------------------------------------------

    def apply(self, change: DeviceChange) -> None:
        """Make `change` (see change.py) live; peers it does not touch keep their sessions.

        A listen port that cannot be bound raises udp.BindError before anything has changed. A
        peer the core refuses (too many peers) raises ValueError after the parts before it were
        applied. A peer with the device's own public key is ignored, as wg ignores it."""
        core = self._core
        self._generation += 1  # first: a change that fails half-way still counts
        port = change.listen_port
        if port is not None and (port != self._listen_port or port == 0):
            self._bind(port)
        now = time.monotonic()
        try:
            if change.private_key is not None:
                key = None if change.private_key == ZERO_KEY else change.private_key
                core.set_private_key(key, now)
            inside = self._inside
            if change.mtu is not None and change.mtu != core.mtu:
                core.set_mtu(change.mtu)
                if inside is not None:
                    inside.set_mtu(change.mtu)
            if change.addresses is not None:
                self._addresses = tuple(change.addresses)
                if inside is not None:
                    inside.set_addresses(list(self._addresses))
            if change.exit is not None:
                self._exit_settings = change.exit
                if inside is not None:
                    inside.set_exit(change.exit)
            if change.peer_egress is not None:  # before the peers: their first flows use it
                self._peer_egress = dict(change.peer_egress)
                if inside is not None:
                    inside.set_peer_egress(dict(self._peer_egress))
            if change.replace_peers:
                for request in self._resolving.values():
                    request.cancel()
                self._resolving.clear()
                core.remove_all_peers(now)
            own = core.public_key
            for peer in change.peers:
                if peer.public_key != own:
                    self._apply_peer(peer, now)
        finally:
            self._collect()

    def _apply_peer(self, change: PeerChange, now: float) -> None:
        key = change.public_key
        core = self._core
        if change.remove:
            self._cancel_resolving(key)
            core.remove_peer(key, now)
            return
        if change.update_only and not core.has_peer(key):
            return
        kwargs: dict = {}
        if change.preshared_key is not None:
            psk = change.preshared_key
            kwargs["preshared_key"] = None if psk == ZERO_KEY else psk
        if change.persistent_keepalive is not None:
            kwargs["persistent_keepalive"] = change.persistent_keepalive
        if change.replace_allowed_ips or change.allowed_ips:
            kwargs["allowed_ips"] = change.allowed_ips
            kwargs["replace_allowed_ips"] = change.replace_allowed_ips
        if change.remove_allowed_ips:
            kwargs["remove_allowed_ips"] = change.remove_allowed_ips
        named = None
        endpoint = change.endpoint
        if endpoint is not None:
            self._cancel_resolving(key)  # this endpoint replaces the name being resolved
            if endpoint.ip is None:
                named = endpoint  # resolved off the loop; until then the old endpoint stays
            else:
                kwargs["endpoint"] = (endpoint.host, endpoint.port)
        core.add_or_update_peer(key, now=now, **kwargs)
        if named is not None:
            self._resolve_later(key, named)

    def _cancel_resolving(self, key: bytes) -> None:
        request = self._resolving.pop(key, None)
        if request is not None:
            request.cancel()

    def _resolve_later(self, public_key: bytes, endpoint: Endpoint) -> None:
        """Resolve a named endpoint in a thread (as wg does at `setconf` time, but never on the
        loop). The answer is applied if the peer is still there (a removal or a new endpoint
        cancels the request) and nothing (roaming) moved its endpoint meanwhile; a failure or
        timeout is logged once and leaves the peer as it is until it contacts us."""
        status = self._core.peer_status(public_key)
        if status is None or self._loop is None:
            return
        before = status.endpoint

        def done(address: tuple[str, int] | None, reason: str | None) -> None:
            if self._resolving.get(public_key) is not request:
                return
            del self._resolving[public_key]
            now_status = self._core.peer_status(public_key)
            if self.closed or now_status is None or now_status.endpoint != before:
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
            self._core.add_or_update_peer(public_key, now=time.monotonic(), endpoint=address)
            self._collect()

        request = self._resolver.resolve(
            self._loop, endpoint.host, endpoint.port, done, self._resolve_timeout
        )
        self._resolving[public_key] = request

    def snapshot(self, peers: Collection[bytes] | None = None) -> RunningState:
        """The device as it runs now, as an immutable value (see state.py). `peers`: only
        these peers (those present) in `.peers` and `.refusals`: a reader that needs a few of
        10,000 peers (the reconciler's plan for one edit) pays for those alone; everything
        else in the value is the same as in the full one."""
        core = self._core
        snap = {
            s.public_key: PeerState(
                s.preshared_key,
                s.persistent_keepalive,
                s.allowed_ips,
                s.endpoint,
                s.rx_bytes,
                s.tx_bytes,
                s.last_handshake,
            )
            for s in core.peer_stats(peers)
        }
        counters = core.counters()
        if self._send_drops:
            counters["drop_send_buffer_full"] += self._send_drops
        inside = self._inside
        refusals = inside.refusals() if inside is not None else {}
        if peers is not None:
            refusals = {k: n for k, n in refusals.items() if k in snap}
        return RunningState(
            private_key=core.private_key,
            listen_port=self._listen_port,
            mtu=core.mtu,
            addresses=self._addresses,
            peers=MappingProxyType(snap),
            exit=self._exit_settings,
            counters=MappingProxyType(counters),
            inside=MappingProxyType(dict(inside.counters())) if inside is not None else {},
            refusals=MappingProxyType(refusals),
            peer_egress=MappingProxyType(dict(self._peer_egress)),
            egress_up=MappingProxyType(dict(inside.egress_status())) if inside is not None else {},
            queue_delay=(self._queue_delay_sum, self._queue_delay_reads),
        )

    # -- data path ---------------------------------------------------------------------------

    def _on_readable(self) -> None:
        inside = self._inside
        if inside is not None and inside.poll():
            self._collect()  # answers that came in meanwhile leave before the next batch
        sock = self._sock
        buf = self._buffer
        view = memoryview(buf)
        receive = self._core.receive_datagram
        unmap = udp.unmap
        now = time.monotonic()
        wall = time.time()
        stamped = True  # the first datagram read tells how long the socket queue held it
        for _ in range(BATCH):
            try:
                if stamped:
                    stamped = False
                    n, address, queued = udp.receive_stamped(sock, buf)
                    if queued is not None:
                        delay = self._queue_delay = max(0.0, wall - queued)
                        self._queue_delay_sum += delay
                        self._queue_delay_reads += 1
                else:
                    n, address = sock.recvfrom_into(buf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:  # ICMP errors surface here on Linux; the socket carries on
                log.debug("%s: recvfrom: %s", self.name, e)
                continue
            receive(bytes(view[:n]), unmap(address), now, wall)
        self._collect()

    def receive_forwarded(self, datagram: bytes, source: tuple[str, int]) -> None:
        """An initiation another worker of this device forwarded because we own its peer."""
        if not self.closed:
            self._core.receive_forwarded(datagram, source, time.monotonic())
            self._collect()

    def _wake(self) -> None:
        """The inside's `wake`: one collection soon, however many times it is called before."""
        if not self._woken and not self.closed:
            self._woken = True
            self._loop.call_soon(self._on_wake)

    def _on_wake(self) -> None:
        self._woken = False
        if not self.closed:
            self._collect()

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        now, wall = time.monotonic(), time.time()
        self._core.handle_timer(now, wall)
        if self._inside is not None:
            self._inside.handle_timer(now)
        self._collect()

    def _collect(self) -> None:
        """Take what the core and the inside produced and pass it on, once (module docstring):
        one pass suffices, since the inside answers packets as they arrive and the core's
        `send_packet` yields only datagrams."""
        core = self._core
        inside = self._inside
        lost = core.take_routes_lost()
        if lost and inside is not None:
            self._forget(lost)
        packets = core.take_packets()
        delay, self._queue_delay = self._queue_delay, None
        if packets and inside is not None:
            inside.receive_packets(packets, time.monotonic(), delay)
        if inside is not None:
            outbound = inside.take_packets()
            if outbound:
                self._encrypt(outbound)
        role = self._role
        if role is not None and role.forward is not None:
            for key, datagram, source in core.take_forwards():
                role.forward(role.owner(key), key, datagram, source)
        self._write()
        self._rearm()

    def _send_now(self, packets: list[bytes]) -> None:
        """The inside's `send_now`: these packets leave before the batch that is being worked
        on is done (with whatever datagrams the core had queued by then)."""
        if not self.closed:
            self._encrypt(packets)
            self._write()

    def _encrypt(self, packets: list[bytes]) -> None:
        """The inside's packets toward peers, to the core (routed, encrypted into datagrams)."""
        now, wall = time.monotonic(), time.time()
        send = self._core.send_packet
        for packet in packets:
            send(packet, now, wall)

    def _write(self) -> None:
        """The core's datagrams, to the socket (GSO runs; drops counted as a NIC's)."""
        datagrams = self._core.take_datagrams()
        if datagrams and self._sender is not None:
            self._send_drops += self._sender.send(datagrams)

    def _forget(self, lost: set[bytes]) -> None:
        """Peers were removed or lost addresses (the file, the API through it, `wg set`, a key
        change): the inside ends what it holds for the addresses they lost, at once and without
        a word toward the tunnel, since replies are routed by destination address and the next
        owner of an address must not receive the old owner's streams. Every configuration path
        ends in `_collect`, so this one place covers them all."""
        now = time.monotonic()
        route = self._core.route
        for key in lost:
            if not self._core.has_peer(key):
                self._inside.forget_peer(key, now)
            else:  # still a peer: keep the flows of addresses still routed to it
                self._inside.forget_peer(key, now, keep=lambda src, key=key: route(src) == key)

    def _rearm(self) -> None:
        deadline = self._core.next_timer()
        if self._inside is not None:
            inner = self._inside.next_timer()
            if inner is not None and (deadline is None or inner < deadline):
                deadline = inner
        if deadline == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = deadline
        if deadline is not None and not self.closed and self._loop is not None:
            # core deadlines are time.monotonic(); asyncio's loop.time() is the same clock
            self._timer = self._loop.call_at(deadline, self._on_timer)
