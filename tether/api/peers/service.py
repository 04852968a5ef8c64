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

The device's registry (owners, quarantined addresses; `registry.py`) is changed inside the same
locked edit as the file: an add records its owner and skips quarantined addresses, a remove
forgets the owner and quarantines the addresses, and both see the other's effects at once.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from tether import keys
from tether.api.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    PeerError,
    Unavailable,
)
from tether.api.peers.allocator import Allocator, Exhausted
from tether.api.peers.clientconf import (
    ENDPOINT_TYPES,
    EndpointUnavailable,
    PublicEndpoints,
    render_client_config,
)
from tether.api.peers.ownership import (
    SELF_SERVICE_GRANT,
    Added,
    Claim,
    owner_matches,
)
from tether.api.registry import (
    DEFAULT_QUARANTINE,
    FileRegistry,
    Registry,
    forget_missing,
    state_path,
)
from tether.api.state import DeviceState, Owner, StateError, secret_hash
from tether.config import store
from tether.config.editor import ConfigFile
from tether.config.errors import ConfigError
from tether.config.model import Peer
from tether.device.hub import ApplyError, DeviceHub

log = logging.getLogger("tether.api")


def parse_public_key(text: str) -> bytes:
    """A public key from a URL; a BadRequest naming the expected form rather than a decoding
    error."""
    try:
        return keys.decode(text)
    except keys.InvalidKey:
        raise BadRequest("invalid public key: expected 32 bytes in standard base64") from None


def check_endpoint_type(text: str) -> str:
    """An endpoint type from a URL, case-insensitive as the original accepted it."""
    kind = text.lower()
    if kind not in ENDPOINT_TYPES:
        raise BadRequest(f"unknown endpoint type (expected one of {', '.join(ENDPOINT_TYPES)})")
    return kind


class _DeviceState:
    __slots__ = (
        "lock",
        "cache",
        "stamp",
        "alloc",
        "alloc_for",
        "registry",
        "checked_for",
        "held",
        "written",
    )

    def __init__(self, registry: Registry) -> None:
        self.lock = threading.Lock()
        self.cache = store.ParseCache()
        self.stamp: tuple | None = None  # identity of the file at the last read
        self.alloc: Allocator | None = None
        self.alloc_for: ConfigFile | None = None  # the parse the allocator was built from
        self.registry = registry
        self.checked_for: ConfigFile | None = None  # the parse owners were last checked against
        self.held: dict[str, object] = {}  # the quarantined networks the allocator holds
        self.written: store.Written | None = None  # the file as our last edit left it

    def allocator(self, cfg: ConfigFile) -> Allocator:
        if self.alloc is None or self.alloc_for is not cfg:
            self.alloc = Allocator(
                cfg.config.interface.addresses, (p.allowed_ips for p in cfg.config.peers)
            )
            self.alloc_for = cfg
            self.held = {}
        return self.alloc

    def hold(self, quarantined: set[str]) -> None:
        """Keep the allocator's holds equal to the quarantine (parsing only what changed)."""
        if quarantined != set(self.held):
            held = {t: self.held.get(t) or ipaddress.ip_network(t) for t in quarantined}
            self.alloc.hold(held.values())
            self.held = held


_EXISTS = object()
_OWN_KEY = object()
_FORBIDDEN = object()
_POOL_FULL = object()


@dataclass
class Admission:
    """One add's decision, made inside the update that allocates (the file's locked edit, or
    the fleet's etcd transaction): the invite and the self-service cap are checked, addresses
    allocated, the invite use taken and the owner recorded, all on the same state."""

    public_key: bytes
    grant: str | None
    claim: Claim | None
    secret: str | None
    self_service: bool
    comment: str
    cap: int
    expiry: float

    def admit(
        self, rs: DeviceState, now: float, alloc: Allocator, hold: Callable[[set[str]], None]
    ):
        """The allocated networks, or a refusal (a PeerError, _POOL_FULL, Exhausted).
        `hold(quarantined)` keeps the quarantined addresses out of `alloc`."""
        if self.claim is not None:
            refused = self.claim.check(rs, now)
            if refused is not None:
                return refused
        if self.self_service and self.cap and rs.self_service_count(now) >= self.cap:
            return _POOL_FULL
        hold(rs.quarantined(now))
        try:
            nets = alloc.allocate()
        except Exhausted as e:
            return e
        if self.claim is not None:
            self.claim.take(rs, now)
        if self.grant:
            rs.set_owner(
                keys.encode(self.public_key),
                Owner(
                    secret_hash(self.secret),
                    int(now),
                    self.self_service,
                    int(now + self.expiry) if self.expiry > 0 else None,
                    tuple(str(n) for n in nets),
                ),
            )
        return nets


def key_pair(public_key: bytes | None) -> tuple[bytes, bytes | None]:
    """(public key, private key or None): the caller's key, or a pair made here when it gave
    none (the private key then goes into the returned config only, never stored or logged)."""
    if public_key is not None:
        return public_key, None
    private = keys.generate_private()
    return keys.public_from_private(private), private


class PeerService:
    """`default_device` is the device of the bare routes (`--api-device`); None means "the only
    device". `include_psk` controls whether client configs carry a peer's PresharedKey (the CLI,
    run by the operator: yes; the API: no)."""

    shared = False  # whether other hosts share the peers and the state (a fleet)

    def __init__(
        self,
        hub: DeviceHub,
        public: PublicEndpoints,
        *,
        default_device: str | None = None,
        include_psk: bool = False,
        source: str = "the API",
        clock: Callable[[], float] = time.time,
        quarantine: float = DEFAULT_QUARANTINE,
        self_service_max: int = 0,
        self_service_expiry: float = 0.0,
        registry: Callable[[str], Registry] | None = None,
    ) -> None:
        """`clock` gives Unix time. `quarantine`: seconds a freed address is not handed out.
        `self_service_max`: self-service peers a device may hold (0: no cap).
        `self_service_expiry`: seconds after which a self-service peer that never completed a
        handshake is removed by the janitor (0: never). `registry`: device name -> Registry
        (default: the state file beside the device file)."""
        self.hub = hub
        self.public = public
        self.default_device = default_device
        self.include_psk = include_psk
        self.source = source
        self.clock = clock
        self.quarantine = quarantine
        self.self_service_max = self_service_max
        self.self_service_expiry = self_service_expiry
        self._registry = registry or (
            lambda name: FileRegistry(state_path(self.hub.config_dir, name))
        )
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

    def devices(self, name: str | None) -> list[str]:
        """The devices a listing addresses: the named one (validated), or every one (None)."""
        return [self.resolve_device(name)] if name is not None else self.hub.device_names()

    def _state(self, name: str) -> _DeviceState:
        with self._states_lock:
            state = self._states.get(name)
            if state is None:
                state = self._states[name] = _DeviceState(self._registry(name))
            return state

    def registry(self, name: str) -> Registry:
        """The device's API state (owners, quarantine), for the janitor and the daemon."""
        return self._state(name).registry

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

    def _registry_step(self, name: str, state: _DeviceState, cfg: ConfigFile, step):
        """Run `step(registry_state, now)` as a registry update under the lock the device
        edit holds, first dropping owners whose peer left the file since the last look."""
        now = self.clock()
        fresh = state.checked_for is not cfg

        def change(rs: DeviceState):
            if fresh:
                stale = forget_missing(rs, cfg.config, now, self.quarantine)
                if stale:
                    log.info(
                        "%s: %d owner entries dropped (peer no longer in the file)",
                        name,
                        len(stale),
                    )
            rs.prune(now)
            return step(rs, now)

        result = state.registry.update(change, locked=True)
        state.checked_for = cfg
        return result

    def add(
        self,
        name: str,
        public_key: bytes | None,
        endpoint_type: str,
        *,
        client: str | None = None,
        apply: bool = True,
        grant: str | None = None,
        claim: Claim | None = None,
        note: str = "",
    ) -> Added:
        """Add a peer with the next free addresses. `public_key=None`: make a key pair here and
        put the private key into the returned config only (it is never stored or logged).
        `grant` (ADMIN_GRANT, SELF_SERVICE_GRANT): record an owner and return its secret.
        `claim` (an invite being redeemed) is checked and taken in the same locked update that
        allocates, and given back if the add is undone. `note` ends the peer's comment."""
        host = self._host(endpoint_type)
        live_port = self.hub.listen_port(name)  # asked before the lock: it may be a round trip
        public_key, private = key_pair(public_key)
        state = self._state(name)
        admission = self._admission(public_key, client, grant, claim, note)
        comment, secret = admission.comment, admission.secret

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
            nets = self._registry_step(
                name, state, cfg, lambda rs, now: admission.admit(rs, now, alloc, state.hold)
            )
            if not isinstance(nets, list):
                return nets
            peer = Peer(public_key, allowed_ips=nets)
            made.append(peer)
            cfg.add_peer(peer, comment=comment)
            text = render_client_config(
                cfg.config, peer, host, port, private_key=private, include_psk=self.include_psk
            )
            return Added(peer, text, secret)

        made: list[Peer] = []
        try:
            result = self._edit(name, state, change)
        except OSError:
            if made and grant:  # the state was written, the device file was not: undo
                self._rollback(name, state, made[0], claim)
            raise
        self._refuse(name, result)
        assert isinstance(result, Added)
        log.info(
            "%s: peer %s added with %s (%s%s)",
            name,
            keys.encode(public_key),
            ", ".join(map(str, result.peer.allowed_ips)),
            client or self.source,
            f", {grant}" if grant else "",
        )
        if apply:
            try:
                self.hub.apply_now(name, (public_key,), written=state.written)
            except ApplyError as e:
                self._rollback(name, state, result.peer, claim)
                log.error(
                    "%s: peer %s not applied, removed again: %s", name, keys.encode(public_key), e
                )
                raise Unavailable(f"the peer could not be applied: {e}") from None
        return result

    def _admission(
        self,
        public_key: bytes,
        client: str | None,
        grant: str | None,
        claim: Claim | None,
        note: str,
    ) -> Admission:
        """What an add will record (its comment, its owner secret) and check under its lock."""
        when = datetime.datetime.fromtimestamp(self.clock(), datetime.UTC)
        comment = (
            f"added by {self.source} {when:%Y-%m-%d %H:%M} UTC"
            + (f" for {client}" if client else "")
            + (f" ({note})" if note else "")
        )
        self_service = grant == SELF_SERVICE_GRANT
        return Admission(
            public_key,
            grant,
            claim,
            secrets.token_urlsafe(32) if grant else None,
            self_service,
            comment,
            self.self_service_max,
            self.self_service_expiry if self_service else 0.0,
        )

    def _refuse(self, name: str, result: object) -> None:
        """Raise the error an add's refusal (`Admission.admit`, the edit) stands for."""
        if result is _EXISTS:
            raise Conflict("a peer with this public key already exists")
        if result is _OWN_KEY:
            raise BadRequest("this is the device's own public key")
        if result is _POOL_FULL:
            raise Unavailable(
                f"device {name} holds its maximum of {self.self_service_max} self-service "
                "peers; ask its operator"
            )
        if isinstance(result, Exhausted):
            raise Unavailable(f"no free address left on device {name}: {result}")
        if isinstance(result, PeerError):
            raise result

    def _rollback(
        self, name: str, state: _DeviceState, peer: Peer, claim: Claim | None = None
    ) -> None:
        """Undo an add that never went live: no quarantine (no traffic can have used it), and
        an invite it used gets that use back. Also after a failed write of the device file, when
        the state already holds the owner and the taken use."""
        key = keys.encode(peer.public_key)
        ours = tuple(str(n) for n in peer.allowed_ips)

        def undo(rs: DeviceState, now: float) -> None:
            owner = rs.owners.get(key)
            if owner is not None and owner.addresses == ours:
                rs.forget(key)
            if claim is not None:
                claim.give_back(rs)

        def change(cfg: ConfigFile):
            current = cfg.peer(peer.public_key)
            if current is not None:
                if current.allowed_ips != peer.allowed_ips:
                    return  # not ours any more
                cfg.remove_peer(peer.public_key)
                if state.alloc_for is cfg and state.alloc is not None:
                    state.alloc.remove_peer(current.allowed_ips)
            self._registry_step(name, state, cfg, undo)

        try:
            self._edit(name, state, change)
        except (PeerError, OSError):
            pass  # nothing more can be done; forget_missing drops the owner on the next look

    def remove(
        self,
        name: str,
        public_key: bytes,
        *,
        client: str | None = None,
        apply: bool = True,
        authorize: Callable[[Peer, Owner | None], bool] | None = None,
    ) -> bool:
        """Remove the peer (and the comment block above it); False when it was not there.
        `authorize(peer, owner)` decides, under the lock, whether this caller may remove the
        peer (Forbidden otherwise); None allows it."""
        state = self._state(name)
        key = keys.encode(public_key)

        def change(cfg: ConfigFile):
            peer = cfg.peer(public_key)
            if peer is None:
                return False
            if authorize is not None:
                owner = state.registry.read().owners.get(key)
                if not authorize(peer, owner):
                    return _FORBIDDEN
            allowed = list(peer.allowed_ips)
            cfg.remove_peer(public_key)
            if state.alloc_for is cfg and state.alloc is not None:
                state.alloc.remove_peer(allowed)

            def forget(rs: DeviceState, now: float) -> None:
                owner = rs.forget(key)
                rs.release(allowed, now, self.quarantine, bool(owner and owner.self_service))

            self._registry_step(name, state, cfg, forget)
            return True

        result = self._edit(name, state, change)
        if result is _FORBIDDEN:
            raise Forbidden("this token does not own that peer")
        removed = bool(result)
        if removed:
            log.info("%s: peer %s removed (%s)", name, key, client or self.source)
        if apply:
            try:
                self.hub.apply_now(name, (public_key,), written=state.written)
            except ApplyError as e:
                raise Unavailable(f"the removal could not be applied: {e}") from None
        return removed

    def owner_state(self, name: str, public_key: bytes, secret: str) -> bool | None:
        """Whether `secret` is the owner secret of the peer as it is now; None: no such peer."""
        state = self._state(name)
        with state.lock:
            peer = self._read(name, state).peer(public_key)
            if peer is None:
                return None
            try:
                owner = state.registry.read().owners.get(keys.encode(public_key))
            except StateError as e:
                raise self._state_problem(name, e) from None
            return owner_matches(owner, peer, secret_hash(secret))

    def state(self, name: str) -> DeviceState:
        """The device's API state now (shared: do not change it); Unavailable when its file is
        invalid."""
        try:
            return self._state(name).registry.read()
        except StateError as e:
            raise self._state_problem(name, e) from None

    def update_state(self, name: str, change: Callable[[DeviceState], object]) -> object:
        """Change the device's API state under the directory lock (for invites, which touch no
        peer); Unavailable when its file is invalid."""
        try:
            return self._state(name).registry.update(change)
        except StateError as e:
            raise self._state_problem(name, e) from None

    def owners(self, name: str) -> dict[str, Owner]:
        """The device's owner entries by base64 key (shared: do not change)."""
        return self.state(name).owners

    def config(self, name: str, public_key: bytes, endpoint_type: str) -> str:
        """A peer's client config as the file says now; the live port wins over the file's, so a
        config for a device on port 0 names the port it really uses."""
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
        """The file's peers now (a snapshot the caller may keep)."""
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
                result = store.edit(self._path(name), change, cache=state.cache)
                state.written = state.cache.written()
                return result
            except ConfigError as e:
                raise self._file_problem(name, e) from None
            except StateError as e:
                raise self._state_problem(name, e) from None

    @staticmethod
    def _state_problem(name: str, error: StateError) -> PeerError:
        log.error("%s (fix or remove that file; it is never overwritten while invalid)", error)
        return Unavailable(f"the API state of device {name} is invalid; the operator must fix it")
