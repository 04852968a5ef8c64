"""Fuzz target: the HTTP API's routes, query strings, methods and headers.

Any request must get a well-formed answer: one of the statuses the API uses (never a 500), a
one-line text body for every error, no private key of the device in any answer, an owner secret
only in the `Tether-Peer-Secret` header of a successful add, and the device and state files must
still parse afterwards. On top of that, the access rules (DESIGN.md §5a) are checked as
invariants: without the admin token or the owner's secret, no request removes a peer or reads
/metrics and /peers while a token is configured; a client's X-Forwarded-For counts only from the
trusted proxy. Requests go straight to the WSGI apps on a temp device file (no network).
Run: `make fuzz TARGET=api SECONDS=300` (see fuzz/README.md).
"""

from __future__ import annotations

import ipaddress
import os
import sys
import tempfile

from wsgi_call import call

from tether import keys
from tether.api.http.app import make_app
from tether.api.http.ratelimit import RateLimit
from tether.api.hub import FileOnlyHub
from tether.api.peers.clientconf import PublicEndpoints
from tether.api.registry import state_path
from tether.api.state import parse as parse_state
from tether.config import store

PRIVATE = keys.genkey()
PEER = keys.encode(keys.public_from_private(keys.generate_private()))
DEVICE = (
    f"# fuzz device\n[Interface]\nAddress = 10.77.0.1/16, fd77::1/64\nListenPort = 51820\n"
    f"PrivateKey = {PRIVATE}\n\n[Peer]\nPublicKey = {PEER}\nAllowedIPs = 10.77.0.2/32\n"
)
TOKEN = "fuzz-token-0123456789abcdef"
PROXY = "10.99.0.1"
STATUSES = {200, 400, 401, 403, 404, 405, 409, 413, 414, 429, 503}
METHODS = ["GET", "POST", "DELETE", "PUT", "HEAD", "OPTIONS", "BREW", "get", "X-1"]
PREFIXES = ["", "/devices/fz0", "/devices/", "/devices/..", "/devices/fz0/.."]
ROUTES = [
    "/peer/add/{t}/{k}",
    "/peer/new/{t}",
    "/peer/remove/{k}",
    "/peer/config/{t}/{k}",
    "/peers",
    "/healthz",
    "/metrics",
    "/{t}",
]
TYPES = ["any", "ipv4", "IPv6", "domain", "DOMAIN"]
REMOTES = ["198.51.100.{n}", "2001:db8:{n}::1", PROXY, "::ffff:198.51.100.{n}", "garbage", ""]

_dir = tempfile.mkdtemp(prefix="fuzz-api-")
_path = store.device_path(_dir, "fz0")
_state = state_path(_dir, "fz0")
_calls = 0
_secrets: list[str] = []  # owner secrets handed out by successful adds
_apps = {
    (token, mode): make_app(
        FileOnlyHub(_dir),
        public=PublicEndpoints("203.0.113.7", "2001:db8::7", "vpn.example.org"),
        token=token,
        rate_limit=RateLimit(per_minute=600, burst=50),
        self_service=mode,
        trusted_proxies=(ipaddress.ip_network(PROXY),) if token else (),
        self_service_max=500,
    )
    for token in (None, TOKEN)
    for mode in ("open", "off")
}


def _reset() -> None:
    with open(_path, "w") as f:
        f.write(DEVICE)
    os.chmod(_path, 0o600)
    _state.unlink(missing_ok=True)
    _secrets.clear()


_reset()


def TestOneInput(data: bytes) -> None:
    global _calls
    _calls += 1
    if _calls % 200 == 0:
        _reset()
    if len(data) < 6:
        return
    method = METHODS[data[0] % len(METHODS)]
    prefix = PREFIXES[data[1] % len(PREFIXES)]
    route = ROUTES[data[2] % len(ROUTES)]
    flags, more = data[3], data[4]
    remote = REMOTES[data[5] % len(REMOTES)].format(n=data[5])
    rest = data[6:]
    a, _, rest = rest.partition(b"\x00")
    b, _, rest = rest.partition(b"\x00")
    query, _, xff = rest.partition(b"\x00")
    etype = TYPES[a[0] % len(TYPES)] if flags & 1 and a else a.decode("latin-1")
    key = PEER if flags & 2 else b.decode("latin-1")
    if flags & 4:
        key = PEER[: len(b) % 44] + b.decode("latin-1")
    path = prefix + route.format(t=etype, k=key)
    token = TOKEN if flags & 8 else None
    app = _apps[(token, "off" if more & 1 else "open")]
    headers = {}
    admin = False
    if flags & 32:
        kind = more >> 1 & 3
        if kind == 0 or token is None:
            value = a.decode("latin-1")
        elif kind == 1:
            value, admin = TOKEN, True
        else:
            value = _secrets[len(b) % len(_secrets)] if _secrets else "no-secret-yet"
        scheme = "Bearer " if not flags & 64 else "bearer\t"
        headers["HTTP_AUTHORIZATION"] = scheme + value
    if more & 8:
        headers["HTTP_X_FORWARDED_FOR"] = xff.decode("latin-1")
    if more & 16:
        headers["HTTP_FORWARDED"] = "for=" + xff.decode("latin-1")
    body = b if flags & 16 else b""
    before = _path.read_bytes()
    status, answer_headers, out = call(
        app, method, path, query.decode("latin-1"), remote, body, headers
    )
    if status not in STATUSES:
        raise AssertionError(f"{method} {path!r}?{query!r}: status {status}")
    if PRIVATE.encode() in out:
        raise AssertionError("the device's private key leaked into an answer")
    secret = answer_headers.get("Tether-Peer-Secret")
    if secret:
        if status != 200 or secret.encode() in out:
            raise AssertionError("an owner secret outside a successful add's header")
        _secrets.append(secret)
    for known in _secrets:
        if known.encode() in out:
            raise AssertionError("an owner secret leaked into an answer")
    ctype = answer_headers.get("Content-Type", "")
    one_line = ctype.startswith("text/plain") and out.count(b"\n") == 1
    if status != 200 and method != "HEAD" and not one_line:
        raise AssertionError(f"error answer is not one line of text: {status} {out!r}")
    after = _path.read_bytes()
    if token is not None and status == 200 and not admin:
        if route in ("/peers", "/metrics") and method in ("GET", "HEAD"):
            raise AssertionError(f"{route} answered without the admin token")
        shrunk = "remove" in route and method == "DELETE" and len(after) < len(before)
        if shrunk and not (flags & 32 and _secrets):
            raise AssertionError("a peer was removed without the admin token or a secret")
    store.load(_path)  # still a valid device file
    if _state.exists():
        parse_state(_state.read_bytes(), "state")  # and a valid state file


def main() -> None:
    import atheris

    atheris.instrument_all()
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
