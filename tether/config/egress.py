"""The `Egress` key (DESIGN.md §3a): how a device's exit flows, or one peer's, leave the host.

    Egress = direct                                  # the host's own sockets (the default)
    Egress = socks5://proxy.example.net:1080         # through an upstream SOCKS5 proxy
    Egress = socks5://alice:s%40cret@10.0.0.7:1080   # with RFC 1929 user name and password

It may stand in `[Exit]` (the device's default) and in a `[Peer]` (that peer's override). Like
the rest of `[Exit]` it is tetherctl's own: nothing that describes the device to WireGuard
(`showconf`, the UAPI, client configs) carries it.

The password is a secret the operator wrote into a mode-0600 file, so it must not leak from
there: `repr`, `str` and `label` (what logs and metrics show) leave it out, and parse errors
never quote the value (only the part they are about, when that part is not secret). User name
and password are percent-encoded as in a URL's userinfo (RFC 3986 §3.2.1): `#` would otherwise
start a comment, and `@`, `:` or `/` would make the value ambiguous. Their bytes are what RFC
1929 sends, 1 to 255 of each.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass, field

from tether.config.values import is_ipv4, parse_endpoint

__all__ = ["DIRECT", "Egress", "parse_egress"]

SCHEME = "socks5"
_FORM = "expected direct or socks5://[user:pass@]host:port"
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,31}")
# what a URL's userinfo may hold unencoded (RFC 3986: unreserved and sub-delims; the password
# may also hold ':'); anything else, '%' itself included, is written as %XX
_UNRESERVED = "\\-A-Za-z0-9._~!$&'()*+,;="
_USER = re.compile(rf"(?:[{_UNRESERVED}]|%[0-9A-Fa-f]{{2}})+")
_PASSWORD = re.compile(rf"(?:[{_UNRESERVED}:]|%[0-9A-Fa-f]{{2}})+")
_NUMERIC = re.compile(r"[0-9.]+")  # getaddrinfo would read `1.2.3` as 1.2.0.3: refuse it
_SAFE = "!$&'()*+,;="  # kept as they are when a value is written back (quote keeps unreserved)


@dataclass(frozen=True)
class Egress:
    """`direct` (no host) or an upstream SOCKS5 proxy at `host:port`, with an optional user name
    and password. Values compare (and hash) with the password, so a changed password is a
    change; everything that shows a value leaves the password out."""

    host: str = ""
    port: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @property
    def is_direct(self) -> bool:
        return not self.host

    @property
    def label(self) -> str:
        """What logs, errors and metrics call this egress: `direct`, or the proxy's URL with
        the user name but never the password (`socks5://alice@10.0.0.7:1080`)."""
        if self.is_direct:
            return "direct"
        user = f"{_quote(self.username)}@" if self.username is not None else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{SCHEME}://{user}{host}:{self.port}"

    @property
    def credentials(self) -> tuple[bytes, bytes] | None:
        """(user name, password) as RFC 1929 sends them, or None for no authentication."""
        if self.username is None or self.password is None:
            return None
        return self.username.encode(), self.password.encode()

    def to_text(self) -> str:
        """The value as written into a device file: the one place the password is spelled out
        (percent-encoded), for the file's own lines."""
        if self.is_direct or self.password is None:
            return self.label
        user = f"{_quote(self.username)}:{_quote(self.password)}@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{SCHEME}://{user}{host}:{self.port}"

    def __str__(self) -> str:
        return self.label

    def __repr__(self) -> str:
        secret = ":***" if self.password is not None else ""
        if self.is_direct:
            return "Egress('direct')"
        user = f"{_quote(self.username)}{secret}@" if self.username is not None else ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"Egress('{SCHEME}://{user}{host}:{self.port}')"


DIRECT = Egress()


def _quote(text: str | None) -> str:
    return urllib.parse.quote(text or "", safe=_SAFE)


def parse_egress(value: str) -> Egress:
    """`direct` or `socks5://[user:pass@]host:port` (scheme and `direct` case-insensitive; host
    an IPv4 address, a bracketed IPv6 address or a host name, resolved when used). ValueError
    with a sentence that never repeats the user name or password."""
    if value.lower() == "direct":
        return DIRECT
    scheme, sep, rest = value.partition("://")
    if not sep or not _SCHEME.fullmatch(scheme):
        raise ValueError(f"not a proxy URL ({_FORM})")
    if scheme.lower() != SCHEME:
        raise ValueError(f"unknown scheme {scheme!r} ({_FORM})")
    userinfo, at, hostport = rest.rpartition("@")
    username = password = None
    if at:
        username, password = _userinfo(userinfo)
    if any(c in hostport for c in "/?#"):
        raise ValueError(f"a proxy URL has no path, query or fragment ({_FORM})")
    if not hostport:
        raise ValueError(f"the proxy's host and port are missing ({_FORM})")
    host, colon, port = hostport.rpartition(":")
    if not colon or host.endswith("[") or "]" in port:
        raise ValueError(f"the proxy's port is missing ({_FORM})")
    if not port.isascii() or not port.isdigit():
        # not quoted: a password cut short by a '#' (a comment) would land here
        raise ValueError(f"the proxy's port is not a number (a '#' starts a comment: {_FORM})")
    endpoint = parse_endpoint(hostport)
    if "%" in endpoint.host:
        raise ValueError(f"{host[:60]!r}: a zone index is not allowed in a proxy address")
    if _NUMERIC.fullmatch(endpoint.host) and not is_ipv4(endpoint.host):
        raise ValueError(f"{host[:60]!r} is not an IPv4 address")
    return Egress(endpoint.host, endpoint.port, username, password)


def _userinfo(userinfo: str) -> tuple[str, str]:
    """User name and password, percent-decoded; the errors name which one is wrong, not what
    it holds."""
    user, colon, password = userinfo.partition(":")
    if not colon:
        raise ValueError("a user name needs a password as well (user:pass@host:port)")
    if "@" in userinfo:
        raise ValueError("write '@' in a user name or password as %40")
    out = []
    for what, text, pattern in (("user name", user, _USER), ("password", password, _PASSWORD)):
        if not text:
            raise ValueError(f"the {what} is empty (RFC 1929 needs 1 to 255 bytes)")
        if not pattern.fullmatch(text):
            raise ValueError(
                f"the {what} holds a character that must be percent-encoded, or a '%' not "
                "followed by two hex digits (write '#' as %23, '%' as %25, a space as %20)"
            )
        raw = urllib.parse.unquote_to_bytes(text)
        if len(raw) > 255:
            raise ValueError(f"the {what} is longer than 255 bytes (RFC 1929)")
        try:
            out.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise ValueError(f"the {what} is not UTF-8 once percent-decoded") from None
    return out[0], out[1]
