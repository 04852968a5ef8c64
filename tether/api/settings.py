"""Everything the daemon needs to serve the API, built once from the command line.

`tetherctl run --api-listen ...` (and `default-builder --api_url`) parse their options into an
`ApiSettings` and hand it to the daemon as `Daemon(api=...)`; the daemon, once its devices are
up, calls `settings.start(hub)` and keeps the returned handle to `stop()` it on shutdown. Every
check (listen address, token file, public addresses, access options) happens here, before
anything starts, so a typo is a one-line error at startup rather than a failure later.

Without a token the API trusts every caller, so it may only listen on loopback: a non-loopback
listener, or one behind a trusted proxy (which exposes it just as much), without
`--api-token-file` uses `<config-dir>/api-token`, created (0600, 256 random bits) when missing.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

from tether.api.http import access
from tether.api.http.app import (
    DEFAULT_PEER_EXPIRY,
    DEFAULT_RATE_LIMIT,
    DEFAULT_SELF_SERVICE_MAX,
    SELF_SERVICE_MODES,
    make_app,
)
from tether.api.http.ratelimit import RateLimit, parse_rate_limit
from tether.api.http.server import ApiHandle, parse_listen, start_api
from tether.api.join import invites
from tether.api.peers import public as public_mod
from tether.api.peers.clientconf import PublicEndpoints
from tether.api.peers.janitor import Janitor, JanitorThread, interval_for
from tether.api.registry import DEFAULT_QUARANTINE
from tether.api.units import parse_count, parse_duration
from tether.config import store
from tether.device.hub import DeviceHub

log = logging.getLogger("tether.api")

TOKEN_FILE_NAME = "api-token"
MIN_QUARANTINE = 300.0  # DESIGN: a freed address waits at least five minutes


class UsageError(ValueError):
    """An option value the command line must refuse as a usage error (exit status 2)."""


@dataclass(frozen=True)
class ApiSettings:
    """The API's settings, checked once at startup (so that a typo is an error then, not later)
    and then handed to the daemon, which starts the API when its devices are up."""

    host: str
    port: int
    public: PublicEndpoints
    device: str | None = None
    token: str | None = field(default=None, repr=False)
    rate_limit: RateLimit | None = DEFAULT_RATE_LIMIT
    self_service: str = "open"
    trusted_proxies: tuple = ()
    self_service_max: int = DEFAULT_SELF_SERVICE_MAX
    peer_expiry: float = DEFAULT_PEER_EXPIRY
    quarantine: float = DEFAULT_QUARANTINE
    token_file: str | None = None
    public_url: str | None = None  # --api-public-url: where phones reach the API
    fleet: object = None  # tether.api.fleet.device.Fleet under --fleet-etcd (set by `run`)

    @classmethod
    def from_options(
        cls,
        listen: str,
        *,
        device: str | None = None,
        public_ipv4: str | None = None,
        public_ipv6: str | None = None,
        public_domain: str | None = None,
        token_file: str | None = None,
        config_dir: str | os.PathLike | None = None,
        self_service: str | None = None,
        rate_limit: str | None = None,
        trusted_proxy: str | None = None,
        self_service_max: str | int | None = None,
        peer_expiry: str | None = None,
        quarantine: str | None = None,
        public_url: str | None = None,
    ) -> ApiSettings:
        """Raises ValueError with a one-line message for any bad option (UsageError for an
        option value this version does not offer)."""
        host, port = parse_listen(listen)
        if device is not None:
            store.check_device_name(device)
        mode = parse_self_service(self_service)
        limit = DEFAULT_RATE_LIMIT if rate_limit is None else parse_rate_limit(rate_limit)
        proxies = access.parse_trusted_proxies(trusted_proxy)
        cap = parse_count(self_service_max, "--api-self-service-max", DEFAULT_SELF_SERVICE_MAX)
        expiry = parse_duration(peer_expiry, "--api-peer-expiry", DEFAULT_PEER_EXPIRY)
        hold = parse_duration(quarantine, "--api-address-quarantine", DEFAULT_QUARANTINE)
        if hold < MIN_QUARANTINE:
            raise ValueError(
                f"--api-address-quarantine: at least {MIN_QUARANTINE:g} s (a freed address "
                "must not reach a new peer while old traffic may still arrive)"
            )
        url = invites.parse_public_url(public_url)
        endpoints = public_mod.resolve(public_ipv4, public_ipv6, public_domain)
        if not token_file and (proxies or not access.is_loopback_host(host)):
            token_file = str(store.config_dir(config_dir) / TOKEN_FILE_NAME)
            ensure_token_file(token_file)
        token = read_token_file(token_file) if token_file else None
        return cls(
            host,
            port,
            endpoints,
            device,
            token,
            limit,
            mode,
            proxies,
            cap,
            expiry,
            hold,
            token_file,
            url,
        )

    def join_base(self, port: int | None = None) -> str | None:
        """Where the join URLs of new invites point: `--api-public-url`, else the public name
        or address with the API's port (`port`: the one really bound, for a listener on :0)."""
        return invites.base_url(
            self.public_url,
            domain=self.public.domain,
            ipv4=self.public.ipv4,
            ipv6=self.public.ipv6,
            listen_host=self.host,
            listen_port=port or self.port,
        )

    def make_app(self, hub: DeviceHub, links: invites.JoinLinks | None = None):
        """The Bottle app for a hub, configured from these settings."""
        return make_app(
            hub,
            public=self.public,
            api_device=self.device,
            token=self.token,
            rate_limit=self.rate_limit,
            self_service=self.self_service,
            trusted_proxies=self.trusted_proxies,
            self_service_max=self.self_service_max,
            peer_expiry=self.peer_expiry,
            quarantine=self.quarantine,
            links=links or invites.JoinLinks(self.join_base()),
            fleet=self.fleet,
        )

    def start(self, hub: DeviceHub) -> ApiHandle:
        """Serve the API for `hub` in background threads, with the janitor that expires unused
        self-service peers; OSError if the address is taken."""
        links = invites.JoinLinks(self.join_base())
        app = self.make_app(hub, links)
        handle = start_api(app, self.host, self.port, trusted_proxies=self.trusted_proxies)
        links.base = self.join_base(handle.port)
        if self.token_file:
            log.info("API admin token: %s", self.token_file)
        log.info("invite links: %s/join/<code>", links.base or "(no public address known)")
        if self.peer_expiry > 0:
            janitor = JanitorThread(Janitor(app.tether_service), interval_for(self.peer_expiry))
            handle.stop_with_server(janitor.start())
        return handle

    def __repr__(self) -> str:  # never show the token in a log line or traceback
        return (
            f"ApiSettings(host={self.host!r}, port={self.port}, public={self.public!r}, "
            f"device={self.device!r}, token={'set' if self.token else None}, "
            f"self_service={self.self_service!r})"
        )

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_self_service(text: str | None) -> str:
    """--api-self-service; a mode this version does not offer is a usage error (status 2)."""
    mode = (text or "open").strip().lower()
    if mode not in SELF_SERVICE_MODES:
        raise UsageError(f"--api-self-service: {text!r}: expected open, invite or off")
    return mode


def ensure_token_file(path: str) -> bool:
    """Create the admin token file (0600 from the start, 256 random bits) unless it exists;
    True when it was created. Only the path is logged, never the token."""
    p = Path(path)
    try:
        with store.locked(p):
            if p.exists():
                return False
            store.atomic_write(p, (secrets.token_urlsafe(32) + "\n").encode())
    except OSError as e:
        raise ValueError(f"cannot create the API token file {p}: {e.strerror or e}") from None
    log.warning("API admin token created in %s (needed for /metrics, /peers and removals)", p)
    return True


def read_token_file(path: str) -> str:
    """The bearer token: the file's first line. A token readable by others is refused, like
    ssh refuses a private key file others can read."""
    try:
        st = os.stat(path)
        with open(path, encoding="utf-8") as f:
            token = f.readline().strip()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(
            f"--api-token-file {path}: cannot read: {getattr(e, 'strerror', e)}"
        ) from None
    if st.st_mode & (stat.S_IRWXO):
        raise ValueError(f"--api-token-file {path}: readable by others (chmod 600 it)")
    if len(token) < 16:
        raise ValueError(f"--api-token-file {path}: the token must be at least 16 characters")
    return token
