"""`tetherctl invite create|list|revoke DEVICE`: invites for the join page, from the shell.

Invites live in the device's state file (`<config-dir>/<device>.state.json`), which is the
truth with or without a running daemon: these commands change it under the same lock, through
the same atomic writer, as the daemon's API, and the API sees the change on its next request.
On a fleet host (TETHERCTL_FLEET_ETCD in the environment or `<device>.env`) they live in etcd,
and the commands use it as every host's API does (`fleetenv.py`), so a link made here joins
through any host and an invite made through the API can be listed and revoked here.

`create` prints the join URL on stdout (one line, for scripts; `--qr` adds a QR code of it for a
phone's camera) and what the invite allows on stderr. The URL is built from `--api-public-url`,
else from the public name or address and the API's port (`--api-listen`); each option also comes
from its TETHERCTL_ variable or the device's `<device>.env`, where the daemon reads it too. The
code appears only here: the state file holds its hash, and `list` shows the invite's id.
"""

from __future__ import annotations

import datetime
import sys

from tether.api.errors import PeerError
from tether.api.http import access
from tether.api.http.server import parse_listen
from tether.api.join import invites
from tether.api.join.invites import Invite, InviteError, JoinLinks
from tether.api.join.onboarding import Onboarding
from tether.api.peers.clientconf import ENDPOINT_TYPES, qr_terminal
from tether.api.units import parse_duration
from tether.cli import devenv, fleetenv
from tether.cli.parser import add_family, fail
from tether.cli.peer import add_dir_options, add_public_options, make_service, resolve_device
from tether.config import store


def register(sub) -> None:
    """Add `tetherctl invite create|list|revoke` to the top-level parser."""
    isub = add_family(
        sub,
        "invite",
        help="make, list or revoke invite links for the join page",
        description=__doc__.splitlines()[0],
    )

    c = isub.add_parser("create", help="make an invite; prints its join URL")
    c.add_argument("device", metavar="DEVICE")
    c.add_argument(
        "--uses",
        metavar="N",
        default=str(invites.DEFAULT_USES),
        help=f"peers it admits (default {invites.DEFAULT_USES}, at most {invites.MAX_USES})",
    )
    c.add_argument(
        "--expires",
        metavar="DURATION",
        default="1d",
        help="how long it admits: 90s, 15m, 1h, 2d; 0 = never (default 1d)",
    )
    c.add_argument("--endpoint-type", default="any", type=str.lower, choices=ENDPOINT_TYPES)
    c.add_argument("--qr", action="store_true", help="also print the URL as a QR code")
    c.add_env_option(
        "--api-public-url", metavar="URL", help="where phones reach the API (behind a proxy)"
    )
    c.add_env_option("--api-listen", metavar="HOST:PORT", help="the API's listener (its port)")
    add_dir_options(c)
    add_public_options(c)
    c.set_defaults(func=cmd_create)

    lst = isub.add_parser("list", help="list invites: id, uses, status, expiry, endpoint type")
    lst.add_argument("device", metavar="DEVICE")
    add_dir_options(lst)
    lst.set_defaults(func=cmd_list)

    r = isub.add_parser("revoke", help="revoke an invite (peers it admitted stay)")
    r.add_argument("device", metavar="DEVICE")
    r.add_argument("invite", metavar="ID|CODE|URL", help="as `invite list` shows it, or its link")
    add_dir_options(r)
    r.set_defaults(func=cmd_revoke)


def _time(value: int | None, never: str = "never") -> str:
    if value is None:
        return never
    return f"{datetime.datetime.fromtimestamp(value, datetime.UTC):%Y-%m-%d %H:%M} UTC"


def _onboarding(args, *, need_public: bool) -> tuple[Onboarding, str]:
    public = (
        dict(ipv4=args.public_ipv4, ipv6=args.public_ipv6, domain=args.public_domain)
        if need_public
        else {}
    )
    config_dir = store.config_dir(args.config_dir)
    fleet = fleetenv.device_fleet(config_dir, args.device)
    registry = fleetenv.registry(fleet) if fleet is not None else None
    _, service = make_service(
        config_dir, args.run_dir, args.device, need_public=need_public, registry=registry, **public
    )
    return Onboarding(service), resolve_device(service, args.device)


def join_links(args, onboarding: Onboarding) -> tuple[JoinLinks, str | None]:
    """The links of `create`, and a warning when phones will not reach them."""
    env = devenv.read(store.config_dir(args.config_dir), args.device)
    url = invites.parse_public_url(devenv.lookup("api_public_url", args.api_public_url, env))
    listen = devenv.lookup("api_listen", args.api_listen, env)
    host = port = None
    if listen and listen.strip().lower() != "off":
        host, port = parse_listen(listen)
    public = onboarding.service.public
    base = invites.base_url(
        url,
        domain=public.domain,
        ipv4=public.ipv4,
        ipv6=public.ipv6,
        listen_host=host,
        listen_port=port,
    )
    warning = None
    if base is None:
        warning = (
            "no API address is known: this is the path only; set --api-public-url (or "
            "--api-listen and a public address) to print the whole URL"
        )
    elif url is None and host is not None and access.is_loopback_host(host):
        warning = (
            f"the API listens on loopback ({listen}): phones reach this URL only through a "
            "reverse proxy; then set --api-public-url"
        )
    elif not base.lower().startswith("https://"):
        # Over plain HTTP anyone on the path reads the code (and can redeem it first), and
        # anyone who can alter traffic can swap the page's script and take the private key
        # the browser makes: the promise that the key never leaves the phone needs TLS.
        warning = (
            "this link is plain HTTP: anyone on the network path can read the invite and, by "
            "changing the page, the private key the phone makes; serve the API behind HTTPS "
            "(a reverse proxy) and set --api-public-url https://..."
        )
    return JoinLinks(base), warning


def cmd_create(args) -> int:
    """`invite create DEVICE`: the URL on stdout, what it allows on stderr."""
    try:
        uses = invites.parse_uses(args.uses)
        expires_in = parse_duration(args.expires, "--expires", invites.DEFAULT_EXPIRY)
        onboarding, name = _onboarding(args, need_public=True)
        onboarding.links, warning = join_links(args, onboarding)
        made = onboarding.create(
            name, uses=uses, expires_in=expires_in, endpoint_type=args.endpoint_type
        )
    except (PeerError, InviteError, ValueError) as e:
        return fail(str(e))
    print(made.url)
    if args.qr:
        sys.stdout.write(qr_terminal(made.url))
    inv = made.invite
    print(
        f"tetherctl: invite {made.id}: {inv.uses} use{'s' if inv.uses != 1 else ''}, "
        f"expires {_time(inv.expires)}, endpoint {inv.endpoint_type} "
        "(the link is shown only now)",
        file=sys.stderr,
    )
    if warning:
        print(f"tetherctl: warning: {warning}", file=sys.stderr)
    return 0


def invite_rows(items: list[tuple[str, Invite]], now: float) -> list[list[str]]:
    """`invite list`'s table: a header, then one row per invite."""
    rows = [["ID", "USED", "STATUS", "EXPIRES", "TYPE", "CREATED"]]
    for invite_id, inv in items:
        rows.append(
            [
                invite_id,
                f"{inv.used}/{inv.uses}",
                inv.status(now),
                _time(inv.expires),
                inv.endpoint_type,
                _time(inv.created),
            ]
        )
    return rows


def cmd_list(args) -> int:
    """`invite list DEVICE`: every invite the device remembers (ids, never codes)."""
    try:
        onboarding, name = _onboarding(args, need_public=False)
        items = onboarding.list(name)
    except (PeerError, ValueError) as e:
        return fail(str(e))
    if not items:
        return 0
    rows = invite_rows(items, onboarding.clock())
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_revoke(args) -> int:
    """`invite revoke DEVICE ID|CODE|URL`: an unknown invite is an error (a typo is likely)."""
    try:
        onboarding, name = _onboarding(args, need_public=False)
        revoked = onboarding.revoke(name, args.invite)
    except (PeerError, ValueError) as e:
        return fail(str(e))
    if revoked is None:
        # not repeated: what was given may be a whole code, and stderr ends up in logs
        return fail(f"no invite of {name} matches what was given (see `invite list`)")
    print(f"invite {revoked} revoked")
    return 0
