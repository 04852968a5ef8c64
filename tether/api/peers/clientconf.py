"""The config a client's WireGuard app takes as it is (DESIGN.md §5, the original's layout).

Everything in it comes from the device's file (the peer's addresses, DNS, MTU, keepalive) and
from the public endpoint the operator configured; only the client's private key is missing,
unless the server made the key pair for the client (`POST /peer/new`), in which case it is filled
in and exists nowhere else.
"""

from __future__ import annotations

import io
import ipaddress
from dataclasses import dataclass

from tether import keys
from tether.config.model import DeviceConfig, Peer

DEFAULT_DNS = ["1.1.1.1", "8.8.8.8"]  # the original tool's answer when the device sets none
PLACEHOLDER = "__PLACEHOLDER__ # replace with your private key"
PSK_PLACEHOLDER = "__PLACEHOLDER__ # this peer has a preshared key: ask the operator"
ENDPOINT_TYPES = ("any", "ipv4", "ipv6", "domain")


class EndpointUnavailable(ValueError):
    """The operator has not configured a public address of the requested kind."""


@dataclass(frozen=True)
class PublicEndpoints:
    """The addresses clients are told to connect to, one per endpoint type, chosen once at
    startup."""

    ipv4: str | None = None
    ipv6: str | None = None
    domain: str | None = None

    def host_for(self, endpoint_type: str) -> str:
        """The host an endpoint type names (`any`: domain, else IPv4, else IPv6);
        EndpointUnavailable when the operator configured none of that kind, so a client never
        gets an Endpoint it cannot use."""
        kind = endpoint_type.lower()
        if kind not in ENDPOINT_TYPES:
            raise ValueError(f"unknown endpoint type {endpoint_type!r} (any, ipv4, ipv6, domain)")
        order = {"any": ("domain", "ipv4", "ipv6")}.get(kind, (kind,))
        for name in order:
            value = getattr(self, name)
            if value:
                return value
        raise EndpointUnavailable(
            f"no public {kind if kind != 'any' else 'address'} is configured for this device"
        )


def endpoint_text(host: str, port: int) -> str:
    """`host:port`, with an IPv6 address bracketed as wg-quick requires."""
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]:{port}"
    except ValueError:
        pass
    return f"{host}:{port}"


def render_client_config(
    device: DeviceConfig,
    peer: Peer,
    endpoint_host: str,
    listen_port: int,
    *,
    private_key: bytes | None = None,
    include_psk: bool = True,
) -> str:
    """`include_psk=False` (the API) leaves a peer's PresharedKey out: anyone who knows a public
    key may ask for its config, and a preshared key is a secret the operator handed out."""
    iface = device.interface
    dual = any(a.version == 6 for a in iface.addresses) and any(
        a.version == 4 for a in iface.addresses
    )
    v6_only = all(a.version == 6 for a in iface.addresses) and iface.addresses
    allowed = "::/0" if v6_only else ("0.0.0.0/0, ::/0" if dual else "0.0.0.0/0")
    lines = [f'# Config for public key "{peer.public_key_b64}"', "[Interface]"]
    lines.append("PrivateKey = " + (keys.encode(private_key) if private_key else PLACEHOLDER))
    lines.append("Address = " + ", ".join(str(n) for n in peer.allowed_ips))
    lines.append("DNS = " + ", ".join(iface.dns or DEFAULT_DNS))
    if iface.mtu is not None:
        lines.append(f"MTU = {iface.mtu}")
    lines += ["", "[Peer]", f"PublicKey = {keys.encode(iface.public_key)}"]
    if peer.preshared_key is not None:
        if include_psk:
            lines.append(f"PresharedKey = {keys.encode(peer.preshared_key)}")
        else:
            lines.append(f"PresharedKey = {PSK_PLACEHOLDER}")
    lines.append(f"AllowedIPs = {allowed}")
    lines.append(f"Endpoint = {endpoint_text(endpoint_host, listen_port)}")
    if peer.persistent_keepalive:
        lines.append(f"PersistentKeepalive = {peer.persistent_keepalive}")
    return "\n".join(lines) + "\n"


# -- QR codes ---------------------------------------------------------------------------------
# The WireGuard mobile apps import a tunnel by scanning a QR code of exactly the config text.
# Error correction M is what wg-quick's documentation (qrencode's default) uses; segno may raise
# it when that costs no extra size, which only makes scanning more robust.


def _qr(text: str):
    import segno

    return segno.make(text, error="m", micro=False)


def qr_png(text: str, scale: int = 4) -> bytes:
    """The config as a PNG QR code, for `?format=png` (a phone scans it off a screen)."""
    buf = io.BytesIO()
    _qr(text).save(buf, kind="png", scale=scale, border=4)
    return buf.getvalue()


def qr_svg(text: str, scale: int = 4) -> bytes:
    """The config as an SVG QR code, for `?format=svg` (scales on any page)."""
    buf = io.BytesIO()
    _qr(text).save(buf, kind="svg", scale=scale, border=4, xmldecl=True)
    return buf.getvalue()


def qr_terminal(text: str) -> str:
    """The code drawn with block characters, for `tetherctl peer add --qr` in a terminal."""
    buf = io.StringIO()
    _qr(text).terminal(out=buf, compact=True)
    return buf.getvalue()
