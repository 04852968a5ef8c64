"""Peer operations shared by the HTTP API and the `peer` commands: edit the file, then go live.

Each device has one `_DeviceState`: a thread lock, the ParseCache of its file and the address
allocator built from that parse. Every operation takes the thread lock, then (for writes) the
directory lock through `store.edit`, so threads and processes are serialized the same way and an
allocation always sees the file as it is on disk, hand edits included:

- while the file's bytes are the ones we last wrote, the cached parse is reused and the
  allocator, updated in step with each add and remove, stays valid (an add is O(log n));
- when anyone else changed the file, the cache reparses it and the allocator is rebuilt from
  the new parse before it is used (identity of the parsed object is the version stamp).

After the file is written (and the locks released), the hub makes the running device match it;
if that fails, an add is rolled back so that a retry is possible and nothing half-done remains.

Expected outcomes (the peer exists, no address left) are returned from inside the edit rather
than raised, because an exception makes `store.edit` drop its cache, which would cost a full
reparse of a 10,000-peer file on the next request.
"""

from __future__ import annotations

import datetime
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

from tether import keys
from tether.api.allocator import Allocator, Exhausted
from tether.api.clientconf import (
    ENDPOINT_TYPES,
    EndpointUnavailable,
    PublicEndpoints,
    render_client_config,
)
from tether.api.hub import ApplyError, DeviceHub
from tether.config import store
from tether.config.editor import ConfigFile
from tether.config.errors import ConfigError
from tether.config.model import Peer

log = logging.getLogger("tether.api")


class PeerError(Exception):
    """A request that cannot be served; `status` is the HTTP status, the message one line that
    is safe to show to the client."""

    status = 500


class BadRequest(PeerError):
    status = 400


class NotFound(PeerError):
    status = 404


class Conflict(PeerError):
    status = 409


class Unavailable(PeerError):
    status = 503


@dataclass
class Added:
    peer: Peer
    config: str  # the client config text (private key filled in only for server-made keys)


def parse_public_key(text: str) -> bytes:
    try:
        return keys.decode(text)
    except keys.InvalidKey:
        raise BadRequest("invalid public key: expected 32 bytes in standard base64") from None


def check_endpoint_type(text: str) -> str:
    kind = text.lower()
    if kind not in ENDPOINT_TYPES:
        raise BadRequest(f"unknown endpoint type (expected one of {', '.join(ENDPOINT_TYPES)})")
    return kind


class _DeviceState:
    __slots__ = ("lock", "cache", "stamp", "alloc", "alloc_for")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.cache = store.ParseCache()
        self.stamp: tuple | None = None  # identity of the file at the last read
        self.alloc: Allocator | None = None
        self.alloc_for: ConfigFile | None = None  # the parse the allocator was built from

    def allocator(self, cfg: ConfigFile) -> Allocator:
        if self.alloc is None or self.alloc_for is not cfg:
            self.alloc = Allocator(
                cfg.config.interface.addresses, (p.allowed_ips for p in cfg.config.peers)
            )
            self.alloc_for = cfg
        return self.alloc


_EXISTS = object()
_OWN_KEY = object()


class PeerService:
    """`default_device` is the device of the bare routes (`--api-device`); None means "the only
    device". `include_psk` controls whether client configs carry a peer's PresharedKey (the CLI,
    run by the operator: yes; the API: no)."""

    def __init__(
        self,
        hub: DeviceHub,
        public: PublicEndpoints,
        *,
        default_device: str | None = None,
        include_psk: bool = False,
        source: str = "the API",
        clock: Callable[[], datetime.datetime] | None = None,
    ) -> None:
        self.hub = hub
        self.public = public
        self.default_device = default_device
        self.include_psk = include_psk
        self.source = source
        self._clock = clock or (lambda: datetime.datetime.now(datetime.UTC))
        self._states: dict[str, _DeviceState] = {}
        self._states_lock = threading.Lock()

    # -- devices -------------------------------------------------------------------------------

    def resolve_device(self, name: str | None) -> str:
        """The device a request addresses: a validated name that the hub serves."""
        if name is None:
            if self.default_device is not None:
                name = self.default_device
            else:
                names = self.hub.device_names()
                if len(names) != 1:
                    raise NotFound(
                        f"{len(names)} devices: address one as /devices/<name>/..."
                        if names
                        else "no device is configured"
                    )
                return names[0]
        try:
            store.check_device_name(name)
        except ValueError:
            raise BadRequest("invalid device name") from None
        if name not in self.hub.device_names():
            raise NotFound(f"unknown device {name}")
        return name

    def _state(self, name: str) -> _DeviceState:
        with self._states_lock:
            state = self._states.get(name)
            if state is None:
                state = self._states[name] = _DeviceState()
            return state

    def _path(self, name: str):
        return store.device_path(self.hub.config_dir, name)

    def _read(self, name: str, state: _DeviceState) -> ConfigFile:
        """The current parse (call with state.lock held).

        Reads compare the file's whole content with the cached parse's (ParseCache), which
        costs about a millisecond for a 10,000-peer file. When the file's identity (inode,
        size, mtime and ctime in nanoseconds) is what it was at the last read, it is the same
        file and the read is skipped: every write, ours (rename) or an editor's, changes ctime.
        """
        path = self._path(name)
        try:
            st = os.stat(path)
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        except OSError:
            stamp = None
        if stamp is not None and stamp == state.stamp and state.cache.cfg is not None:
            return state.cache.cfg
        try:
            cfg = state.cache.get(path, f"{name}.conf")[1]
        except ConfigError as e:
            state.stamp = None
            raise self._file_problem(name, e) from None
        state.stamp = stamp
        return cfg

    def _file_problem(self, name: str, error: ConfigError) -> PeerError:
        if not self._path(name).exists():
            return NotFound(f"unknown device {name}")
        log.error("%s: %s", name, error)
        return Unavailable(f"the file of device {name} is invalid; the operator must fix it")

    def _host(self, endpoint_type: str) -> str:
        try:
            return self.public.host_for(check_endpoint_type(endpoint_type))
        except EndpointUnavailable as e:
            raise BadRequest(str(e)) from None

    @staticmethod
    def _port(name: str, live_port: int | None, cfg: ConfigFile) -> int:
        """The port clients must use: the running device's, else the file's ListenPort."""
        port = live_port or cfg.config.interface.listen_port
        if not port:
            raise Unavailable(
                f"device {name} has no known listen port (not running, no ListenPort)"
            )
        return port

    # -- operations ----------------------------------------------------------------------------

    def add(
        self,
        name: str,
        public_key: bytes | None,
        endpoint_type: str,
        *,
        client: str | None = None,
        apply: bool = True,
    ) -> Added:
        """Add a peer with the next free addresses. `public_key=None`: make a key pair here and
        put the private key into the returned config only (it is never stored or logged)."""
        host = self._host(endpoint_type)
        live_port = self.hub.listen_port(name)  # asked before the lock: it may be a round trip
        private = None
        if public_key is None:
            private = keys.generate_private()
            public_key = keys.public_from_private(private)
        state = self._state(name)
        stamp = self._clock().strftime("%Y-%m-%d %H:%M UTC")
        comment = f"added by {self.source} {stamp}" + (f" for {client}" if client else "")

        def change(cfg: ConfigFile):
            if cfg.peer(public_key) is not None:
                return _EXISTS
            if cfg.config.interface.public_key == public_key:
                return _OWN_KEY
            try:
                port = self._port(name, live_port, cfg)
            except Unavailable as e:
                return e
            alloc = state.allocator(cfg)
            try:
                nets = alloc.allocate()
            except Exhausted as e:
                return e
            peer = Peer(public_key, allowed_ips=nets)
            cfg.add_peer(peer, comment=comment)
            text = render_client_config(
                cfg.config, peer, host, port, private_key=private, include_psk=self.include_psk
            )
            return Added(peer, text)

        result = self._edit(name, state, change)
        if result is _EXISTS:
            raise Conflict("a peer with this public key already exists")
        if result is _OWN_KEY:
            raise BadRequest("this is the device's own public key")
        if isinstance(result, Exhausted):
            raise Unavailable(f"no free address left on device {name}: {result}")
        if isinstance(result, Unavailable):
            raise result
        assert isinstance(result, Added)
        log.info(
            "%s: peer %s added with %s (%s)",
            name,
            keys.encode(public_key),
            ", ".join(map(str, result.peer.allowed_ips)),
            client or self.source,
        )
        if apply:
            try:
                self.hub.apply_now(name, (public_key,))
            except ApplyError as e:
                self._rollback(name, state, result.peer)
                log.error(
                    "%s: peer %s not applied, removed again: %s", name, keys.encode(public_key), e
                )
                raise Unavailable(f"the peer could not be applied: {e}") from None
        return result

    def _rollback(self, name: str, state: _DeviceState, peer: Peer) -> None:
        def change(cfg: ConfigFile):
            current = cfg.peer(peer.public_key)
            if current is not None and current.allowed_ips == peer.allowed_ips:
                cfg.remove_peer(peer.public_key)
                if state.alloc_for is cfg and state.alloc is not None:
                    state.alloc.remove_peer(current.allowed_ips)

        try:
            self._edit(name, state, change)
        except PeerError:
            pass

    def remove(
        self, name: str, public_key: bytes, *, client: str | None = None, apply: bool = True
    ) -> bool:
        """Remove the peer (and the comment block above it); False when it was not there."""
        state = self._state(name)

        def change(cfg: ConfigFile):
            peer = cfg.peer(public_key)
            if peer is None:
                return False
            allowed = list(peer.allowed_ips)
            cfg.remove_peer(public_key)
            if state.alloc_for is cfg and state.alloc is not None:
                state.alloc.remove_peer(allowed)
            return True

        removed = bool(self._edit(name, state, change))
        if removed:
            log.info(
                "%s: peer %s removed (%s)", name, keys.encode(public_key), client or self.source
            )
        if apply:
            try:
                self.hub.apply_now(name, (public_key,))
            except ApplyError as e:
                raise Unavailable(f"the removal could not be applied: {e}") from None
        return removed

    def config(self, name: str, public_key: bytes, endpoint_type: str) -> str:
        host = self._host(endpoint_type)
        live_port = self.hub.listen_port(name)
        state = self._state(name)
        with state.lock:
            cfg = self._read(name, state)
            peer = cfg.peer(public_key)
            if peer is None:
                raise NotFound("no peer with this public key")
            port = self._port(name, live_port, cfg)
            return render_client_config(cfg.config, peer, host, port, include_psk=self.include_psk)

    def peers(self, name: str) -> list[Peer]:
        state = self._state(name)
        with state.lock:
            return list(self._read(name, state).config.peers)

    def device_config(self, name: str) -> ConfigFile:
        """The current parse of the device's file (shared: do not edit it)."""
        state = self._state(name)
        with state.lock:
            return self._read(name, state)

    def _edit(self, name: str, state: _DeviceState, change: Callable[[ConfigFile], object]):
        with state.lock:
            try:
                return store.edit(self._path(name), change, cache=state.cache)
            except ConfigError as e:
                raise self._file_problem(name, e) from None
