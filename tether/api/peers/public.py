"""The public addresses client configs point at (`Endpoint = ...`).

The operator names them (`--public-ipv4/--public-ipv6/--public-domain`, env `TETHERCTL_...`).
What is not named is taken from the interface of the host's default route, read from the kernel's
tables without sending any packet and without asking any outside service:

- the IPv4 default route from `/proc/net/route`, the IPv6 one from `/proc/net/ipv6_route` (both
  always present on Linux, unlike `ip` from iproute2);
- that interface's IPv4 address with the SIOCGIFADDR ioctl (a socket is created for the ioctl
  but never connected or used to send), its IPv6 addresses from `/proc/net/if_inet6` (global
  scope, not temporary, deprecated, tentative or failed DAD).

The well-known alternative, `connect()` on a UDP socket to some Internet address and reading the
chosen source address, sends nothing either, but it names an outside address and makes the
answer depend on one; the kernel's tables give the same interface without that.

Behind NAT the detected address is a private one that phones cannot reach; then the operator must
name the public one, and we log a warning saying so.
"""

from __future__ import annotations

import fcntl
import ipaddress
import logging
import os
import re
import socket
import struct

from tether.api.peers.clientconf import PublicEndpoints

log = logging.getLogger("tether.api")

SIOCGIFADDR = 0x8915
RTF_UP = 0x0001
RTF_REJECT = 0x0200
_IFA_BAD = 0x01 | 0x08 | 0x20 | 0x40  # temporary, dadfailed, deprecated, tentative
_HOSTNAME = re.compile(r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+")


def _default_v4_interface(proc: str) -> str | None:
    best: tuple[int, str] | None = None
    try:
        with open(os.path.join(proc, "net/route")) as f:
            next(f, None)
            for line in f:
                cols = line.split()
                if len(cols) < 8:
                    continue
                iface, dest, flags, metric, mask = (
                    cols[0],
                    cols[1],
                    int(cols[3], 16),
                    cols[6],
                    cols[7],
                )
                if dest != "00000000" or mask != "00000000" or not flags & RTF_UP:
                    continue
                if flags & RTF_REJECT:
                    continue
                if best is None or int(metric) < best[0]:
                    best = (int(metric), iface)
    except OSError:
        return None
    return best[1] if best else None


def _default_v6_interface(proc: str) -> str | None:
    best: tuple[int, str] | None = None
    try:
        with open(os.path.join(proc, "net/ipv6_route")) as f:
            for line in f:
                cols = line.split()
                if len(cols) != 10:
                    continue
                dest, plen, metric, flags, iface = (
                    cols[0],
                    cols[1],
                    cols[5],
                    int(cols[8], 16),
                    cols[9],
                )
                if dest != "0" * 32 or plen != "00" or iface == "lo":
                    continue
                if not flags & RTF_UP or flags & RTF_REJECT:
                    continue
                if best is None or int(metric, 16) < best[0]:
                    best = (int(metric, 16), iface)
    except OSError:
        return None
    return best[1] if best else None


def _ipv4_of(iface: str) -> str | None:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            req = struct.pack("256s", iface.encode()[:15])
            res = fcntl.ioctl(s.fileno(), SIOCGIFADDR, req)
    except OSError:
        return None
    return socket.inet_ntoa(res[20:24])


def _ipv6_of(iface: str, proc: str) -> str | None:
    found: list[ipaddress.IPv6Address] = []
    try:
        with open(os.path.join(proc, "net/if_inet6")) as f:
            for line in f:
                cols = line.split()
                if len(cols) != 6 or cols[5] != iface:
                    continue
                scope, flags = int(cols[3], 16), int(cols[4], 16)
                if scope != 0 or flags & _IFA_BAD:
                    continue
                found.append(ipaddress.IPv6Address(bytes.fromhex(cols[0])))
    except (OSError, ValueError):
        return None
    if not found:
        return None
    found.sort(key=lambda a: (a.is_private, int(a)))  # a global address before a ULA
    return str(found[0])


def detect(proc: str = "/proc") -> tuple[str | None, str | None]:
    """(IPv4, IPv6) of the default-route interface(s); None where there is none."""
    v4 = v6 = None
    iface4 = _default_v4_interface(proc)
    if iface4:
        v4 = _ipv4_of(iface4)
    iface6 = _default_v6_interface(proc)
    if iface6:
        v6 = _ipv6_of(iface6, proc)
    return v4, v6


def check_domain(name: str) -> str:
    """A `--public-domain` that is a host name and not an address in disguise, so that an
    Endpoint built from it is one a client can resolve."""
    if not _HOSTNAME.fullmatch(name) or name.replace(".", "").isdigit():
        raise ValueError(f"{name!r} is not a valid domain name")
    return name.rstrip(".")


def resolve(
    ipv4: str | None = None,
    ipv6: str | None = None,
    domain: str | None = None,
    *,
    auto: bool = True,
    warn: bool = True,
    proc: str = "/proc",
) -> PublicEndpoints:
    """Validate what the operator named and detect what is missing (unless `auto` is off).
    `warn`: log when a detected address is private (the daemon, once at startup; not the CLI,
    whose every command would repeat it)."""
    if ipv4 and ipaddress.ip_address(ipv4).version != 4:
        raise ValueError(f"--public-ipv4: {ipv4!r} is not an IPv4 address")
    if ipv6:
        if ipaddress.ip_address(ipv6).version != 6:
            raise ValueError(f"--public-ipv6: {ipv6!r} is not an IPv6 address")
        ipv6 = str(ipaddress.IPv6Address(ipv6))
    if domain:
        domain = check_domain(domain)
    if auto and (not ipv4 or not ipv6):
        found4, found6 = detect(proc)
        for kind, found, given in (("ipv4", found4, ipv4), ("ipv6", found6, ipv6)):
            if given or not found or not warn:
                continue
            if ipaddress.ip_address(found).is_private:
                log.warning(
                    "public %s not given; using %s of the default-route interface, a private "
                    "address: set --public-%s if clients reach this host through NAT",
                    kind,
                    found,
                    kind,
                )
        ipv4 = ipv4 or found4
        ipv6 = ipv6 or found6
    return PublicEndpoints(ipv4=ipv4 or None, ipv6=ipv6 or None, domain=domain or None)
