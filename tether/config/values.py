"""Parsers for the values a configuration line can hold.

Each raises ValueError with the sentence the user will read after `file:line: Key: `; the model
adds the location. Rules follow what `wg setconf` and wg-quick accept, so a file that works there
works here.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from tether import keys

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface

_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_-]{1,63})*\.?$"
)


@dataclass(frozen=True)
class Endpoint:
    """A peer's UDP address as written: an IP literal or a hostname, resolved by the device."""

    host: str
    port: int

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        try:
            return ipaddress.ip_address(self.host.split("%", 1)[0])
        except ValueError:
            return None

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def split_list(value: str) -> list[str]:
    """Comma-separated lists as wg reads them: empty items are ignored, spaces trimmed."""
    return [item.strip() for item in value.split(",") if item.strip()]


def parse_key(value: str) -> bytes:
    try:
        return keys.decode(value)
    except keys.InvalidKey:
        raise ValueError(f"{_quote(value)} is not a 32-byte key in base64") from None


def parse_port(value: str, *, allow_zero: bool = True) -> int:
    if not value.isascii() or not value.isdigit():
        raise ValueError(f"{_quote(value)} is not a port number")
    port = int(value)
    low = 0 if allow_zero else 1
    if not low <= port <= 65535:
        raise ValueError(f"{port} is not a port number ({low}-65535)")
    return port


def parse_network(value: str) -> IPNetwork:
    """An allowed-IPs entry. Like wg, a bare address means a host route, and host bits are
    masked off (`10.0.0.7/24` is `10.0.0.0/24`)."""
    try:
        return ipaddress.ip_network(_plain(value), strict=False)
    except ValueError:
        raise ValueError(f"{_quote(value)} is not an IP network") from None


def parse_interface_address(value: str) -> IPInterface:
    """An Address entry keeps its host part: it is the device's own address in that subnet."""
    try:
        return ipaddress.ip_interface(_plain(value))
    except ValueError:
        raise ValueError(f"{_quote(value)} is not an IP address with a prefix length") from None


def parse_dns(value: str) -> str:
    """wg-quick takes IP addresses as resolvers and anything else as a search domain."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if _HOSTNAME.match(value):
        return value
    raise ValueError(f"{_quote(value)} is neither an IP address nor a search domain")


def parse_endpoint(value: str) -> Endpoint:
    if value.startswith("["):
        close = value.find("]")
        if close < 0 or value[close + 1 : close + 2] != ":":
            raise ValueError(f"{_quote(value)} is not host:port or [IPv6]:port")
        host, port_text = value[1:close], value[close + 2 :]
        try:
            ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            raise ValueError(f"{_quote(host)} in brackets is not an IPv6 address") from None
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep or not host:
            raise ValueError(f"{_quote(value)} is not host:port or [IPv6]:port")
        if ":" in host:
            raise ValueError(f"{_quote(value)}: put an IPv6 address in brackets, [addr]:port")
        if not is_ipv4(host) and not _HOSTNAME.match(host):
            raise ValueError(f"{_quote(host)} is not an IP address or host name")
    try:
        port = parse_port(port_text, allow_zero=False)
    except ValueError as e:
        raise ValueError(f"{_quote(value)}: {e}") from None
    return Endpoint(host, port)


def parse_keepalive(value: str) -> int:
    """Seconds between keepalives, `off` or 0 meaning none (wg's spelling)."""
    if value.lower() == "off":
        return 0
    if not value.isascii() or not value.isdigit() or int(value) > 65535:
        raise ValueError(f"{_quote(value)} is not a number of seconds (0-65535) or 'off'")
    return int(value)


def parse_mtu(value: str) -> int:
    if not value.isascii() or not value.isdigit():
        raise ValueError(f"{_quote(value)} is not a number")
    mtu = int(value)
    if not 576 <= mtu <= 65535:
        raise ValueError(f"{mtu} is outside 576-65535")
    return mtu


def parse_bool(value: str) -> bool:
    low = value.lower()
    if low == "true":
        return True
    if low == "false":
        return False
    raise ValueError(f"{_quote(value)} is neither true nor false")


def parse_yes_no(value: str) -> bool:
    """tetherctl's own switches (`PeerToPeer`) read `yes`/`no`; `true`/`false` are taken too,
    as SaveConfig spells them."""
    low = value.lower()
    if low in ("yes", "true"):
        return True
    if low in ("no", "false"):
        return False
    raise ValueError(f"{_quote(value)} is neither yes nor no")


def parse_count(value: str, high: int) -> int:
    """A positive whole number up to `high` (flow limits)."""
    if not value.isascii() or not value.isdigit():
        raise ValueError(f"{_quote(value)} is not a positive whole number")
    n = int(value)
    if not 1 <= n <= high:
        raise ValueError(f"{n} is outside 1-{high}")
    return n


_SIZE = re.compile(r"([0-9]{1,15})([KMGT]?)", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
SIZE_MAX = 1 << 40


def parse_size(value: str) -> int:
    """A size in bytes: a number, optionally with K, M, G or T (powers of 1024): `512M`, `1G`,
    `65536`. Positive and at most 1T."""
    m = _SIZE.fullmatch(value) if value.isascii() else None
    if m is None:
        raise ValueError(f"{_quote(value)} is not a size (bytes, or a number with K, M, G or T)")
    n = int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
    if not 1 <= n <= SIZE_MAX:
        raise ValueError(f"{_quote(value)} is outside 1 byte to 1T")
    return n


def format_size(n: int) -> str:
    """The shortest spelling `parse_size` reads back as `n`."""
    for unit in ("T", "G", "M", "K"):
        scale = _SIZE_UNITS[unit.lower()]
        if n % scale == 0:
            return f"{n // scale}{unit}"
    return str(n)


def parse_fwmark(value: str) -> int:
    """Accepted as wg does (number, 0x-hex or `off`) although a userspace device has no use
    for it: it marks kernel routing decisions we never make."""
    low = value.lower()
    if low == "off":
        return 0
    try:
        mark = int(low, 16) if low.startswith("0x") else int(low, 10)
    except ValueError:
        raise ValueError(f"{_quote(value)} is not a number or 'off'") from None
    if not 0 <= mark <= 0xFFFFFFFF:
        raise ValueError(f"{_quote(value)} is not a 32-bit mark")
    return mark


def parse_table(value: str) -> str:
    """wg-quick's routing table choice; kept for files shared with wg-quick, otherwise inert."""
    low = value.lower()
    if low in ("off", "auto", "main") or (value.isascii() and value.isdigit()):
        return value
    if re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", value):
        return value
    raise ValueError(f"{_quote(value)} is not a routing table name, number, 'auto' or 'off'")


def _plain(value: str) -> str:
    if not value.isascii() or value != value.strip():
        raise ValueError(value)
    return value


def is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def _quote(value: str, limit: int = 60) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")
