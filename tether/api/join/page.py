"""The join page's HTML and the files it loads, as package data (no framework, no CDN).

- The page is a Bottle SimpleTemplate (`templates/join.tpl`), rendered on the server with every
  value escaped; it holds no inline script or style, so the Content-Security-Policy below can
  forbid both. Its state (the device, where to send the public key, where a removal goes) is in
  data attributes of `<main id="join">`, read by `static/join.js`.
- The static files are read once, when the app is made, into a fixed table: `/static/<name>`
  serves only those names, so no request can reach any other file, and a missing package file
  is an error at startup rather than a broken page.
- Every URL in the page is relative to where the page is (`relative_root`), so it works
  unchanged behind a reverse proxy that serves the API under a path (`--api-public-url
  https://example.org/vpn`).

The policy: nothing but this origin's own scripts, styles and connections, images also from
data: and blob: URLs (the QR code is drawn in the browser), no forms to elsewhere, no <base>, no
framing. Referrer-Policy: no-referrer, because the page's URL holds the invite code.
"""

from __future__ import annotations

from importlib import resources

import bottle

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
STATIC_TYPES = {
    "join.js": "text/javascript; charset=utf-8",
    "join.css": "text/css; charset=utf-8",
    "vendor/nacl.min.js": "text/javascript; charset=utf-8",
    "vendor/qrcode.js": "text/javascript; charset=utf-8",
}
HTML = "text/html; charset=utf-8"


def relative_root(path: str) -> str:
    """The relative URL of the API's root seen from a page at `path`: `./` for `/join`,
    `../` for `/join/<code>`, `../../../` for `/devices/<name>/join/<code>`."""
    depth = max(0, path.count("/") - 1)
    return "../" * depth if depth else "./"


class JoinPage:
    """The template and the static files, loaded from the package once."""

    def __init__(self) -> None:
        base = resources.files("tether.api.join")
        source = (base / "templates" / "join.tpl").read_text(encoding="utf-8")
        self._template = bottle.SimpleTemplate(source, noescape=False)
        self._static = {name: (base / "static" / name).read_bytes() for name in STATIC_TYPES}

    def render(
        self,
        *,
        title: str,
        path: str,
        device: str = "",
        add: str = "",
        message: str = "",
    ) -> str:
        """The page at `path`: with `add` (the URL the public key is POSTed to, relative to
        the root) it offers to make a config for `device`; without, it shows `message`."""
        root = relative_root(path)
        return self._template.render(
            title=title,
            root=root,
            ready=bool(add),
            state="ready" if add else "closed",
            device=device,
            add=root + add if add else "",
            remove=f"{root}devices/{device}/peer/remove" if device else "",
            message=message,
        )

    def response(self, status: int, html: str) -> bottle.HTTPResponse:
        """An HTML answer with the page's security headers."""
        return bottle.HTTPResponse(html, status, {"Content-Type": HTML, **HEADERS})

    def static(self, name: str) -> bottle.HTTPResponse | None:
        """A static file's answer, or None for any name not in the table."""
        data = self._static.get(name)
        if data is None:
            return None
        return bottle.HTTPResponse(data, 200, {"Content-Type": STATIC_TYPES[name], **HEADERS})
