"""The peer self-service HTTP API (DESIGN.md §5 and §5a) as a Bottle app.

Routes (each also under `/devices/<name>/...`; the bare ones address `api_device`, or the only
device):

    POST   /peer/add/<endpoint_type>/<pubkey>      200 config | 400 | 401/403 | 409 | 429 | 503
    POST   /peer/new/<endpoint_type>               200 config with a server-made private key
    DELETE /peer/remove/<pubkey>                   200 also when absent | 400 | 401 | 403 | 429
    GET    /peer/config/<endpoint_type>/<pubkey>   200 | 400 | 403 | 404 | 429
    GET    /peers                                  JSON list (admin)
    GET    /healthz, GET /metrics (admin)

and the onboarding routes (invites, the join page and its files; `join/routes.py`).

Who may do what (with a token configured; without one every caller is trusted, see access.py):

| route | anyone | owner of the peer | other bearer | admin |
| add, new | 200 if self-service is open (else 401; invite: through /join only) | - | 403 | 200 |
| remove | 401 | 200 | 403 (200 if absent) | 200 |
| config | 200 | 200 | 403 (404 if absent) | 200 |
| /peers, /metrics | 401 | - | 403 | 200 |

Every successful add/new carries the new peer's owner secret, once, in `Tether-Peer-Secret`.
Every request on a peer route that is not the admin's takes a token from its client's rate-limit
bucket first (429 with Retry-After when empty); the admin is never limited.

`<pubkey>` is standard base64 and may contain `/`, so it is routed as a path. Configs come as
text/plain, or with `?format=png` (or `qr`) as a PNG QR code and `?format=svg` as SVG. Every
answer other than a config, a QR code, JSON, metrics or the join page is one line of text. No
response or log line ever carries a private or preshared key or a secret other than the one just
made; responses are marked `Cache-Control: no-store` because a config from `/peer/new` holds a
private key.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import time
from collections.abc import Callable

import bottle

from tether import keys
from tether.api.errors import BadRequest, NotFound, PeerError
from tether.api.http import access, metrics
from tether.api.http.ratelimit import RateLimit, RateLimiter
from tether.api.join import page as join_page
from tether.api.join import routes as join_routes
from tether.api.join.invites import JoinLinks
from tether.api.join.onboarding import Onboarding
from tether.api.peers.clientconf import PublicEndpoints, qr_png, qr_svg
from tether.api.peers.ownership import ADMIN_GRANT, SELF_SERVICE_GRANT, owner_applies, owner_matches
from tether.api.peers.service import PeerService, parse_public_key
from tether.api.registry import DEFAULT_QUARANTINE
from tether.api.state import secret_hash
from tether.device.hub import DeviceHub

log = logging.getLogger("tether.api")

DEFAULT_RATE_LIMIT = RateLimit()
DEFAULT_SELF_SERVICE_MAX = 1000
DEFAULT_PEER_EXPIRY = 3600.0
SELF_SERVICE_MODES = ("open", "invite", "off")
SECRET_HEADER = "Tether-Peer-Secret"
MAX_BODY = 4096  # no route takes a body; anything bigger is refused unread
MAX_TARGET = 2048  # path + query: a key is 44 characters, a device name 15
TEXT = "text/plain; charset=utf-8"
FORMATS = {"text": None, "conf": None, "qr": "png", "png": "png", "svg": "svg"}


_JOIN_PATH = re.compile(r"(/devices/[^/]*)?/(join|static)(/|$)")


def _answer(status: int, message: str, **headers: str) -> bottle.HTTPResponse:
    headers.setdefault("Content-Type", TEXT)
    headers.setdefault("Cache-Control", "no-store")
    return bottle.HTTPResponse(message.rstrip("\n") + "\n", status, headers)


def _unauthorized(message: str) -> bottle.HTTPResponse:
    return _answer(401, message, **{"WWW-Authenticate": "Bearer"})


def make_app(
    hub: DeviceHub,
    *,
    public: PublicEndpoints,
    api_device: str | None = None,
    token: str | None = None,
    rate_limit: RateLimit | None = DEFAULT_RATE_LIMIT,
    max_body: int = MAX_BODY,
    self_service: str = "open",
    trusted_proxies: tuple = (),
    self_service_max: int = DEFAULT_SELF_SERVICE_MAX,
    peer_expiry: float = DEFAULT_PEER_EXPIRY,
    quarantine: float = DEFAULT_QUARANTINE,
    clock: Callable[[], float] = time.time,
    links: JoinLinks | None = None,
    fleet=None,
) -> bottle.Bottle:
    """A WSGI app serving `hub`'s devices (options as in ApiSettings). `token=None`: every
    caller is trusted. `rate_limit=None` disables the per-client limit. `links` builds the join
    URLs of new invites. `fleet` (a `tether.api.fleet.device.Fleet`): peers, allocations, owners
    and invites live in etcd (DESIGN.md §7) instead of this host's files."""
    if self_service not in SELF_SERVICE_MODES:
        raise ValueError(f"self_service must be one of {', '.join(SELF_SERVICE_MODES)}")
    if trusted_proxies and not token:
        raise ValueError("a trusted proxy exposes the API: it needs a token")
    kind, extra = PeerService, {}
    if fleet is not None:
        from tether.api.fleet.service import FleetPeerService  # the etcd client: fleets only

        kind, extra = FleetPeerService, {"fleet": fleet}
    service = kind(
        hub,
        public,
        default_device=api_device,
        include_psk=False,
        clock=clock,
        quarantine=quarantine,
        self_service_max=self_service_max,
        self_service_expiry=peer_expiry,
        **extra,
    )
    limiter = RateLimiter(rate_limit) if rate_limit is not None else None
    registry, collector = metrics.make_registry(hub)
    token_bytes = token.encode("utf-8") if token else None
    app = bottle.Bottle(catchall=True)
    app.config["json.enable"] = False

    def caller() -> access.Caller:
        return bottle.request.environ["tether.caller"]

    def client() -> str:
        return bottle.request.environ["tether.client"]

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
        if token_bytes is None and access.forwarded_without_token(env):
            raise _answer(
                403,
                "this API has no token and trusts every caller, but the request came through "
                "a proxy: set --api-trusted-proxy (which also turns the token on)",
            )
        env["tether.client"] = access.client_key(access.client_address(env, trusted_proxies))
        env["tether.caller"] = access.identify(env, token_bytes)

    @app.hook("after_request")
    def count() -> None:
        bottle.response.set_header("Cache-Control", "no-store")
        if _JOIN_PATH.match(bottle.request.environ.get("PATH_INFO", "")):
            # Every answer under the join page's URLs, not only the page: a rate-limit line, a
            # refused redemption or a 404 carries the same CSP, nosniff and no-referrer.
            for name, value in join_page.HEADERS.items():
                bottle.response.set_header(name, value)
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

    def config_response(text: str, fmt: str | None, **headers: str):
        if fmt == "png":
            return bottle.HTTPResponse(qr_png(text), 200, {"Content-Type": "image/png", **headers})
        if fmt == "svg":
            return bottle.HTTPResponse(
                qr_svg(text), 200, {"Content-Type": "image/svg+xml", **headers}
            )
        return bottle.HTTPResponse(text, 200, {"Content-Type": TEXT, **headers})

    def limited(who: access.Caller) -> None:
        """Every request on a peer route that is not the admin's costs one token."""
        if limiter is None or who.role == access.ADMIN:
            return
        wait = limiter.take(client())
        if wait > 0:
            raise _answer(
                429,
                "too many requests from this address; retry later",
                **{"Retry-After": str(max(1, round(wait)))},
            )

    def need_admin(who: access.Caller, what: str) -> None:
        if who.role == access.ANONYMOUS:
            raise _unauthorized(f"{what} needs the admin token (Authorization: Bearer <token>)")
        if who.role == access.BEARER:
            raise _answer(403, f"{what} needs the admin token; this is not it")

    def handle(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            try:
                return func(*args, **kwargs)
            except PeerError as e:
                return _answer(e.status, str(e))

        return wrapper

    # -- peer routes ---------------------------------------------------------------------------

    def adding(who: access.Caller) -> str:
        """The grant of an add by `who` (after the rate limit), or an error answer."""
        limited(who)
        if who.role == access.ADMIN:
            return ADMIN_GRANT
        if who.role == access.BEARER:
            raise _answer(
                403,
                "this bearer token is not the admin token (send no Authorization header to add "
                "a peer as anyone)",
            )
        if self_service == "off":
            raise _unauthorized("only the admin adds peers here (self-service is off)")
        if self_service == "invite":
            raise _unauthorized(
                "adding a peer here needs an invite (self-service is by invitation): open the "
                "invite link the operator gave you"
            )
        return SELF_SERVICE_GRANT

    def added_response(added, fmt):
        return config_response(added.config, fmt, **{SECRET_HEADER: added.secret or ""})

    @handle
    def add(endpoint_type: str, pubkey: str, name: str | None = None):
        grant = adding(caller())
        device = service.resolve_device(name)
        key = parse_public_key(pubkey)
        fmt = output_format()
        added = service.add(device, key, endpoint_type, client=client(), grant=grant)
        return added_response(added, fmt)

    @handle
    def new(endpoint_type: str, name: str | None = None):
        grant = adding(caller())
        device = service.resolve_device(name)
        fmt = output_format()
        added = service.add(device, None, endpoint_type, client=client(), grant=grant)
        return added_response(added, fmt)

    @handle
    def remove(pubkey: str, name: str | None = None):
        who = caller()
        limited(who)
        device = service.resolve_device(name)
        key = parse_public_key(pubkey)
        if who.role == access.ANONYMOUS:
            raise _unauthorized(
                "removing a peer needs its owner secret or the admin token "
                "(Authorization: Bearer <secret>)"
            )
        authorize = None
        if who.role == access.BEARER:
            digest = secret_hash(who.secret)

            def authorize(peer, owner):
                return owner_matches(owner, peer, digest)

        removed = service.remove(device, key, client=client(), authorize=authorize)
        return _answer(200, "peer removed" if removed else "no such peer (nothing to remove)")

    @handle
    def config(endpoint_type: str, pubkey: str, name: str | None = None):
        who = caller()
        limited(who)
        device = service.resolve_device(name)
        key = parse_public_key(pubkey)
        fmt = output_format()
        if who.role == access.BEARER and service.owner_state(device, key, who.secret) is False:
            raise _answer(403, "this token does not own that peer")
        return config_response(service.config(device, key, endpoint_type), fmt)

    @handle
    def peers(name: str | None = None):
        need_admin(caller(), "listing peers")
        devices = service.devices(name)
        out = []
        for device in devices:
            try:
                file_peers = service.peers(device)
            except NotFound:
                continue
            live = {s.public_key: s for s in hub.peer_stats(device)}
            owners = service.owners(device)
            for p in file_peers:
                s = live.get(p.public_key)
                key = keys.encode(p.public_key)
                owner = owners.get(key)
                if not owner_applies(owner, p):
                    owner = None  # none, or a leftover entry: this peer has no owner
                out.append(
                    {
                        "device": device,
                        "public_key": key,
                        "allowed_ips": [str(n) for n in p.allowed_ips],
                        "live": s is not None,
                        "rx_bytes": s.rx_bytes if s else 0,
                        "tx_bytes": s.tx_bytes if s else 0,
                        "last_handshake": s.last_handshake if s else None,
                        "added_by": None
                        if owner is None
                        else ("anyone" if owner.self_service else "admin"),
                        "expires": owner.expires if owner is not None else None,
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
        need_admin(caller(), "metrics")
        return bottle.HTTPResponse(
            metrics.render(registry),
            200,
            {"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    onboarding = Onboarding(service, links, clock)
    join_routes.register(
        app,
        join_routes.RouteKit(
            service=service,
            onboarding=onboarding,
            self_service=self_service,
            caller=caller,
            client=client,
            limited=limited,
            need_admin=need_admin,
            handle=handle,
            answer=_answer,
            added_response=lambda added: added_response(added, None),
        ),
    )

    app.tether_service = service  # for the janitor, tests and the daemon's logs
    app.tether_onboarding = onboarding
    return app


__all__ = ["DEFAULT_RATE_LIMIT", "RateLimit", "make_app", "NotFound"]
