"""The peer self-service HTTP API (DESIGN.md §5) as a Bottle app.

Routes (each also under `/devices/<name>/...`; the bare ones address `api_device`, or the only
device):

    POST   /peer/add/<endpoint_type>/<pubkey>      200 config | 400 | 409 exists | 503 no address
    POST   /peer/new/<endpoint_type>               200 config with a server-made private key
    DELETE /peer/remove/<pubkey>                   200 also when absent | 400
    GET    /peer/config/<endpoint_type>/<pubkey>   200 | 400 | 404
    GET    /peers                                  JSON list (only when a token is configured)
    GET    /healthz, GET /metrics

`<pubkey>` is standard base64 and may contain `/`, so it is routed as a path. Configs come as
text/plain, or with `?format=qr` as a PNG QR code and `?format=svg` as SVG. Every answer other
than a config, a QR code, JSON or metrics is one line of text.

The app is exposed to clients that cannot be trusted (phones on the Internet): before any
routing, request size and an optional bearer token are checked; peer-creating routes are rate
limited per client address (REMOTE_ADDR: forwarded-for headers are client-controlled and
ignored); no response or log line ever carries a private or preshared key. Responses are marked
`Cache-Control: no-store` because a config from `/peer/new` holds a private key.
"""

from __future__ import annotations

import functools
import hmac
import json
import logging

import bottle

from tether import keys
from tether.api import metrics
from tether.api.clientconf import PublicEndpoints, qr_png, qr_svg
from tether.api.hub import DeviceHub
from tether.api.peers import BadRequest, NotFound, PeerError, PeerService, parse_public_key
from tether.api.ratelimit import RateLimit, RateLimiter

log = logging.getLogger("tether.api")

DEFAULT_RATE_LIMIT = RateLimit()
MAX_BODY = 4096  # no route takes a body; anything bigger is refused unread
MAX_TARGET = 2048  # path + query: a key is 44 characters, a device name 15
TEXT = "text/plain; charset=utf-8"
FORMATS = {"text": None, "conf": None, "qr": "png", "png": "png", "svg": "svg"}


def _answer(status: int, message: str, **headers: str) -> bottle.HTTPResponse:
    headers.setdefault("Content-Type", TEXT)
    headers.setdefault("Cache-Control", "no-store")
    return bottle.HTTPResponse(message.rstrip("\n") + "\n", status, headers)


def make_app(
    hub: DeviceHub,
    *,
    public: PublicEndpoints,
    api_device: str | None = None,
    token: str | None = None,
    rate_limit: RateLimit | None = DEFAULT_RATE_LIMIT,
    max_body: int = MAX_BODY,
) -> bottle.Bottle:
    """A WSGI app serving `hub`'s devices. `token`: when set, every route needs
    `Authorization: Bearer <token>`. `rate_limit=None` disables the per-client limit."""
    service = PeerService(hub, public, default_device=api_device, include_psk=False)
    limiter = RateLimiter(rate_limit) if rate_limit is not None else None
    registry, collector = metrics.make_registry(hub)
    token_bytes = token.encode("utf-8") if token else None
    app = bottle.Bottle(catchall=True)
    app.config["json.enable"] = False

    def client() -> str:
        return bottle.request.environ.get("REMOTE_ADDR") or "unknown"

    @app.hook("before_request")
    def guard() -> None:
        env = bottle.request.environ
        if len(env.get("PATH_INFO", "")) + len(env.get("QUERY_STRING", "")) > MAX_TARGET:
            raise _answer(414, "request target too long")
        try:
            length = int(env.get("CONTENT_LENGTH") or 0)
        except ValueError:
            raise _answer(400, "bad Content-Length") from None
        if length > max_body or length < 0:
            raise _answer(413, f"request body too large (limit {max_body} bytes)")
        if token_bytes is not None:
            given = env.get("HTTP_AUTHORIZATION", "")
            scheme, _, value = given.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(
                value.strip().encode("utf-8", "surrogateescape"), token_bytes
            ):
                raise _answer(401, "missing or wrong API token", **{"WWW-Authenticate": "Bearer"})

    @app.hook("after_request")
    def count() -> None:
        bottle.response.set_header("Cache-Control", "no-store")
        collector.count_request(bottle.request.method, bottle.response.status_code)

    def default_error(err: bottle.HTTPError) -> str:
        bottle.response.content_type = TEXT
        if err.status_code >= 500:
            return "internal error\n"
        reason = err.status_line.partition(" ")[2] or "error"
        return reason.lower() + "\n"

    app.default_error_handler = default_error

    def output_format() -> str | None:
        raw = bottle.request.environ.get("QUERY_STRING", "")
        wanted = "text"
        for part in raw.split("&"):
            key, _, value = part.partition("=")
            if key == "format":
                wanted = value.lower()
        if wanted not in FORMATS:
            raise BadRequest("unknown format (expected text, qr or svg)")
        return FORMATS[wanted]

    def config_response(text: str, fmt: str | None):
        if fmt == "png":
            return bottle.HTTPResponse(qr_png(text), 200, {"Content-Type": "image/png"})
        if fmt == "svg":
            return bottle.HTTPResponse(qr_svg(text), 200, {"Content-Type": "image/svg+xml"})
        return bottle.HTTPResponse(text, 200, {"Content-Type": TEXT})

    def rate_limited() -> None:
        if limiter is None:
            return
        wait = limiter.take(client())
        if wait > 0:
            raise _answer(
                429,
                "too many peers added from this address; retry later",
                **{"Retry-After": str(max(1, round(wait)))},
            )

    def handle(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            try:
                return func(*args, **kwargs)
            except PeerError as e:
                return _answer(e.status, str(e))

        return wrapper

    # -- peer routes ---------------------------------------------------------------------------

    @handle
    def add(endpoint_type: str, pubkey: str, name: str | None = None):
        device = service.resolve_device(name)
        key = parse_public_key(pubkey)
        fmt = output_format()
        rate_limited()
        added = service.add(device, key, endpoint_type, client=client())
        return config_response(added.config, fmt)

    @handle
    def new(endpoint_type: str, name: str | None = None):
        device = service.resolve_device(name)
        fmt = output_format()
        rate_limited()
        added = service.add(device, None, endpoint_type, client=client())
        return config_response(added.config, fmt)

    @handle
    def remove(pubkey: str, name: str | None = None):
        device = service.resolve_device(name)
        key = parse_public_key(pubkey)
        removed = service.remove(device, key, client=client())
        return _answer(200, "peer removed" if removed else "no such peer (nothing to remove)")

    @handle
    def config(endpoint_type: str, pubkey: str, name: str | None = None):
        device = service.resolve_device(name)
        key = parse_public_key(pubkey)
        fmt = output_format()
        return config_response(service.config(device, key, endpoint_type), fmt)

    @handle
    def peers(name: str | None = None):
        if token_bytes is None:
            return _answer(403, "listing peers needs an API token (--api-token-file)")
        devices = [service.resolve_device(name)] if name is not None else hub.device_names()
        out = []
        for device in devices:
            try:
                file_peers = service.peers(device)
            except NotFound:
                continue
            live = {s.public_key: s for s in hub.peer_stats(device)}
            for p in file_peers:
                s = live.get(p.public_key)
                out.append(
                    {
                        "device": device,
                        "public_key": keys.encode(p.public_key),
                        "allowed_ips": [str(n) for n in p.allowed_ips],
                        "live": s is not None,
                        "rx_bytes": s.rx_bytes if s else 0,
                        "tx_bytes": s.tx_bytes if s else 0,
                        "last_handshake": s.last_handshake if s else None,
                    }
                )
        body = json.dumps({"peers": out}, indent=1) + "\n"
        return bottle.HTTPResponse(body, 200, {"Content-Type": "application/json"})

    for prefix in ("", "/devices/<name>"):
        app.route(f"{prefix}/peer/add/<endpoint_type>/<pubkey:path>", "POST", add)
        app.route(f"{prefix}/peer/new/<endpoint_type>", "POST", new)
        app.route(f"{prefix}/peer/remove/<pubkey:path>", "DELETE", remove)
        app.route(f"{prefix}/peer/config/<endpoint_type>/<pubkey:path>", "GET", config)
        app.route(f"{prefix}/peers", "GET", peers)

    @app.get("/healthz")
    def healthz():
        n = len(hub.device_names())
        return _answer(200, f"ok: {n} device{'s' if n != 1 else ''}")

    @app.get("/metrics")
    def metrics_route():
        return bottle.HTTPResponse(
            metrics.render(registry),
            200,
            {"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    app.tether_service = service  # for tests and the daemon's logs
    return app


__all__ = ["DEFAULT_RATE_LIMIT", "RateLimit", "make_app", "NotFound"]
