"""The onboarding routes of the API (DESIGN.md §5a, invites and the join page):

    GET    /join                        the join page for anyone (self-service open)
    GET    /join/<code>                 the join page of an invite
    POST   /join/<code>/<pubkey>        redeem: add the public key with the invite; the config and
                                        Tether-Peer-Secret as /peer/add answers (404 unknown
                                        invite, 410 used up or expired, 409, 429, 503 as an add)
    POST   /invites                     make an invite (admin); options `uses`, `expires`,
                                        `endpoint_type` as a query string or a urlencoded form;
                                        JSON with its id, code and URL
    GET    /invites                     the invites (admin; JSON, ids only, never codes)
    DELETE /invites/<code>              revoke by code or id (admin): 200 | 404
    GET    /static/<name>               the page's script, style and vendored libraries

Each but /static also under `/devices/<name>/...`; a bare invite route looks in every device.
The join page and a redemption are anyone's (rate-limited like an add, and refused with
self-service off); `/join` without a code only while self-service is open. The pages answer in
HTML with the status of what they say (403, 404, 410), the rest in one line of text.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl

import bottle

from tether.api.errors import BadRequest, NotFound, PeerError
from tether.api.http import access
from tether.api.join import invites
from tether.api.join.invites import Invite, InviteError
from tether.api.join.onboarding import NO_INVITE, Onboarding, refusal
from tether.api.join.page import JoinPage
from tether.api.peers.service import PeerService, parse_public_key
from tether.api.units import parse_duration

OPTIONS = ("uses", "expires", "endpoint_type")
MAX_FIELDS = 16
PAGE_TITLE = "Join the VPN"
CLOSED = "This server does not let visitors add devices; its operator adds them."
INVITE_ONLY = (
    "This server adds devices by invitation only: open the invite link (or scan the invite QR "
    "code) that its operator gave you."
)


@dataclass(frozen=True)
class RouteKit:
    """What the onboarding routes share with the app's other routes (`app.make_app`)."""

    service: PeerService
    onboarding: Onboarding
    self_service: str
    caller: Callable[[], access.Caller]
    client: Callable[[], str]
    limited: Callable[[access.Caller], None]
    need_admin: Callable[[access.Caller, str], None]
    handle: Callable  # decorator: PeerError -> one-line text answer
    answer: Callable[..., bottle.HTTPResponse]  # (status, message) -> one-line text answer
    added_response: Callable  # (Added) -> the config answer with Tether-Peer-Secret


def invite_json(device: str, invite_id: str, invite: Invite, now: float) -> dict:
    """An invite as `GET /invites` and `POST /invites` describe it (never with its code)."""
    return {
        "device": device,
        "id": invite_id,
        "uses": invite.uses,
        "used": invite.used,
        "left": invite.left(),
        "status": invite.status(now),
        "created": invite.created,
        "expires": invite.expires,
        "last_used": invite.last_used,
        "endpoint_type": invite.endpoint_type,
    }


def _json(doc) -> bottle.HTTPResponse:
    return bottle.HTTPResponse(
        json.dumps(doc, indent=1) + "\n", 200, {"Content-Type": "application/json"}
    )


def request_options() -> dict[str, str]:
    """The options of `POST /invites`: query string and urlencoded body (anything else in a
    body is refused), each name at most once and known."""
    env = bottle.request.environ
    try:
        pairs = parse_qsl(
            env.get("QUERY_STRING", ""), keep_blank_values=True, max_num_fields=MAX_FIELDS
        )
        length = int(env.get("CONTENT_LENGTH") or 0)
        kind = (env.get("CONTENT_TYPE") or "").partition(";")[0].strip().lower()
        if length and kind == "application/x-www-form-urlencoded":
            body = env["wsgi.input"].read(length).decode("utf-8")
            pairs += parse_qsl(body, keep_blank_values=True, max_num_fields=MAX_FIELDS)
        elif length:
            raise BadRequest(
                "send the options as a query string or an application/x-www-form-urlencoded form"
            )
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("cannot read the options (too many, or not UTF-8)") from None
    out: dict[str, str] = {}
    for name, value in pairs:
        if name not in OPTIONS:
            raise BadRequest(f"unknown option (expected {', '.join(OPTIONS)})")
        if name in out:
            raise BadRequest(f"{name} is given twice")
        out[name] = value
    return out


def register(app: bottle.Bottle, kit: RouteKit, page: JoinPage | None = None) -> None:
    """Add the onboarding routes to `app`."""
    page = page or JoinPage()
    service, onboarding = kit.service, kit.onboarding

    def path() -> str:
        return bottle.request.environ.get("PATH_INFO", "/")

    def closed(status: int, message: str, device: str = "") -> bottle.HTTPResponse:
        html = page.render(title=PAGE_TITLE, path=path(), device=device, message=message)
        return page.response(status, html)

    def ready(device: str, add: str) -> bottle.HTTPResponse:
        html = page.render(title=PAGE_TITLE, path=path(), device=device, add=add)
        return page.response(200, html)

    def join_page(name: str | None = None, code: str | None = None):
        kit.limited(kit.caller())
        if kit.self_service == "off":
            return closed(403, CLOSED)
        if code is None and kit.self_service != "open":
            return closed(403, INVITE_ONLY)
        try:
            device = service.resolve_device(name) if name is not None or code is None else None
            if code is None:
                return ready(device, f"devices/{device}/peer/add/any")
            found = onboarding.find(device, code)
        except PeerError as e:
            return closed(e.status, str(e))
        if found is None:
            return closed(404, f"This invite link is not valid: {NO_INVITE}.")
        refused = refusal(found.status, found.invite)
        if refused is not None:
            message = str(refused)
            return closed(refused.status, message[0].upper() + message[1:] + ".", found.device)
        return ready(found.device, f"devices/{found.device}/join/{code}")

    @kit.handle
    def redeem(code: str, pubkey: str, name: str | None = None):
        kit.limited(kit.caller())
        if kit.self_service == "off":
            return kit.answer(403, "self-service is off here: invites are not accepted")
        device = service.resolve_device(name) if name is not None else None
        key = parse_public_key(pubkey)
        added = onboarding.redeem(device, code, key, client=kit.client())
        return kit.added_response(added)

    @kit.handle
    def create(name: str | None = None):
        kit.need_admin(kit.caller(), "making invites")
        device = service.resolve_device(name)
        options = request_options()
        try:
            uses = invites.parse_uses(options.get("uses"))
            expires_in = parse_duration(options.get("expires"), "expires", invites.DEFAULT_EXPIRY)
        except (InviteError, ValueError) as e:
            raise BadRequest(str(e).removeprefix("--")) from None
        made = onboarding.create(
            device,
            uses=uses,
            expires_in=expires_in,
            endpoint_type=options.get("endpoint_type") or "any",
        )
        doc = invite_json(device, made.id, made.invite, onboarding.clock())
        return _json({**doc, "code": made.code, "url": made.url})

    @kit.handle
    def listing(name: str | None = None):
        kit.need_admin(kit.caller(), "listing invites")
        devices = service.devices(name)
        now = onboarding.clock()
        out = []
        for device in devices:
            out += [invite_json(device, i, inv, now) for i, inv in onboarding.list(device)]
        return _json({"invites": out})

    @kit.handle
    def revoke(code: str, name: str | None = None):
        kit.need_admin(kit.caller(), "revoking invites")
        devices = service.devices(name)
        for device in devices:
            revoked = onboarding.revoke(device, code)
            if revoked:
                return kit.answer(200, f"invite {revoked} revoked")
        raise NotFound("no such invite")

    def static(filename: str):
        found = page.static(filename)
        return found if found is not None else kit.answer(404, "not found")

    for prefix in ("", "/devices/<name>"):
        app.route(f"{prefix}/join", "GET", join_page)
        app.route(f"{prefix}/join/<code>", "GET", join_page)
        app.route(f"{prefix}/join/<code>/<pubkey:path>", "POST", redeem)
        app.route(f"{prefix}/invites", "POST", create)
        app.route(f"{prefix}/invites", "GET", listing)
        app.route(f"{prefix}/invites/<code>", "DELETE", revoke)
    app.route("/static/<filename:path>", "GET", static)
