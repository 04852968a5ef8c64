"""Who is calling (DESIGN.md §5a): the admin token, a peer's owner secret or anyone, and from where.

Pure functions of the WSGI environ and the operator's settings, so that every rule is testable
without a server:

- `Caller` says what a request proved: the admin token (compared in constant time), some other
  bearer value (a candidate owner secret, checked against the owner entry of the peer the route
  names), or nothing. Without a configured token every caller is trusted with everything, the
  original tool's model, which is why such an API only listens on loopback.
- `client_address` names the client for rate limits: REMOTE_ADDR, or, only when REMOTE_ADDR is
  one of the operator's trusted proxies, the rightmost X-Forwarded-For address that is not itself
  a trusted proxy (everything left of it was written by the client and proves nothing). Forwarded
  headers from anyone else are removed from the environ so no later code can trust them.
  waitress' own `trusted_proxy` is not used: it takes one address rather than a list of
  networks and trusts a fixed number of hops instead of skipping known proxies.
- `client_key` buckets an address the way an attacker's reach is bounded: one IPv4 address, or
  one IPv6 /64 (a single subscriber usually controls a whole /64).
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Headers a client may use to claim another address; removed unless a trusted proxy sent them.
FORWARDED_HEADERS = (
    "HTTP_X_FORWARDED_FOR",
    "HTTP_FORWARDED",
    "HTTP_X_REAL_IP",
    "HTTP_X_FORWARDED_HOST",
    "HTTP_X_FORWARDED_PROTO",
    "HTTP_X_FORWARDED_PORT",
    "HTTP_X_FORWARDED_BY",
    "HTTP_CLIENT_IP",
    "HTTP_TRUE_CLIENT_IP",
)
MAX_FORWARDED_HOPS = 32  # X-Forwarded-For entries looked at, from the right

ADMIN = "admin"  # the admin token, or no token configured (every caller trusted)
BEARER = "bearer"  # a bearer value that is not the admin token: maybe an owner secret
ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class Caller:
    """What a request proved about its sender, decided once per request so that every route
    applies the same rules (§5a)."""

    role: str
    secret: str | None = None  # the bearer value (BEARER only)
    trusted_without_token: bool = False  # ADMIN because no token is configured


def parse_trusted_proxies(text: str | None) -> tuple[Network, ...]:
    """`CIDR[,CIDR...]` (a bare address is a /32 or /128); ValueError with a one-line message."""
    if not text or not text.strip():
        return ()
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(ipaddress.ip_network(part))
        except ValueError as e:
            raise ValueError(f"--api-trusted-proxy: {part!r}: {e}") from None
    return tuple(out)


def is_loopback_host(host: str) -> bool:
    """For a listen address: only loopback keeps strangers out ("*" is every interface)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_address(text: str) -> Address | None:
    """An address as proxies write it: `1.2.3.4`, `1.2.3.4:5678`, `2001:db8::1`,
    `[2001:db8::1]:443`, possibly quoted; None for anything else (`unknown`, `_hidden`)."""
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _trusted(addr: Address | None, proxies: tuple[Network, ...]) -> bool:
    return addr is not None and any(addr in net for net in proxies)


def client_address(environ: dict, proxies: tuple[Network, ...]) -> Address | None:
    """The client's address (see the module docstring); None when REMOTE_ADDR is unusable."""
    remote = parse_address(environ.get("REMOTE_ADDR") or "")
    if not _trusted(remote, proxies):
        for name in FORWARDED_HEADERS:
            environ.pop(name, None)
        return remote
    hops = (environ.get("HTTP_X_FORWARDED_FOR") or "").split(",")[-MAX_FORWARDED_HOPS:]
    client = remote
    for entry in reversed(hops):
        addr = parse_address(entry)
        if addr is None:
            break  # written by someone we do not trust: the last trusted hop is the client
        client = addr
        if not _trusted(addr, proxies):
            break
    return client


def client_key(addr: Address | None) -> str:
    """The rate limiter's and connection cap's bucket: an IPv4 address or an IPv6 /64, what one
    subscriber controls."""
    if addr is None:
        return "unknown"
    if addr.version == 6:
        return str(ipaddress.IPv6Network((int(addr) >> 64 << 64, 64)))
    return str(addr)


def bearer_value(environ: dict) -> str | None:
    """The credential of `Authorization: Bearer <value>`; None without one (another scheme
    proves nothing here either)."""
    scheme, _, value = (environ.get("HTTP_AUTHORIZATION") or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def identify(environ: dict, token: bytes | None) -> Caller:
    """Who the caller is: the admin (by token, compared in constant time, or everyone when no
    token is configured), a bearer that may be a peer's owner, or anonymous."""
    if token is None:
        return Caller(ADMIN, trusted_without_token=True)
    value = bearer_value(environ)
    if value is None:
        return Caller(ANONYMOUS)
    if hmac.compare_digest(value.encode("utf-8", "surrogateescape"), token):
        return Caller(ADMIN)
    return Caller(BEARER, secret=value)


def forwarded_without_token(environ: dict) -> bool:
    """A request carrying proxy headers reached an API without a token: most likely a reverse
    proxy in front of a loopback-only API, which would make every Internet client the admin."""
    return any(environ.get(name) for name in FORWARDED_HEADERS)
