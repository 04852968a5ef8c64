"""Everything the daemon needs to serve the API, built once from the command line.

`tetherctl run --api-listen ...` (and `default-builder --api_url`) parse their options into an
`ApiSettings` and hand it to the daemon as `Daemon(api=...)`; the daemon, once its devices are
up, calls `settings.start(hub)` and keeps the returned handle to `stop()` it on shutdown. Every
check (listen address, token file, public addresses) happens here, before anything starts, so a
typo is a one-line error at startup rather than a failure later.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from tether.api import public as public_mod
from tether.api.app import DEFAULT_RATE_LIMIT, make_app
from tether.api.clientconf import PublicEndpoints
from tether.api.hub import DeviceHub
from tether.api.ratelimit import RateLimit
from tether.api.server import ApiHandle, parse_listen, start_api
from tether.config import store


@dataclass(frozen=True)
class ApiSettings:
    host: str
    port: int
    public: PublicEndpoints
    device: str | None = None
    token: str | None = None
    rate_limit: RateLimit | None = DEFAULT_RATE_LIMIT

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
    ) -> ApiSettings:
        """Raises ValueError with a one-line message for any bad option."""
        host, port = parse_listen(listen)
        if device is not None:
            store.check_device_name(device)
        endpoints = public_mod.resolve(public_ipv4, public_ipv6, public_domain)
        token = read_token_file(token_file) if token_file else None
        return cls(host, port, endpoints, device, token)

    def make_app(self, hub: DeviceHub):
        return make_app(
            hub,
            public=self.public,
            api_device=self.device,
            token=self.token,
            rate_limit=self.rate_limit,
        )

    def start(self, hub: DeviceHub) -> ApiHandle:
        """Serve the API for `hub` in background threads; OSError if the address is taken."""
        return start_api(self.make_app(hub), self.host, self.port)

    def __repr__(self) -> str:  # never show the token in a log line or traceback
        return (
            f"ApiSettings(host={self.host!r}, port={self.port}, public={self.public!r}, "
            f"device={self.device!r}, token={'set' if self.token else None})"
        )


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
