"""Fuzz target: the HTTP API's route parameters, query strings and headers.

Any request must get a well-formed answer: one of the statuses the API uses (never a 500), a
one-line text body for every error, no private key of the device in any answer, and the device
file must still parse afterwards. Requests go straight to the WSGI app on a temp device file
(no network). Run: `make fuzz TARGET=api SECONDS=300` (see fuzz/README.md).
"""

from __future__ import annotations

import io
import os
import sys
import tempfile

from tether import keys
from tether.api.app import make_app
from tether.api.clientconf import PublicEndpoints
from tether.api.hub import FileOnlyHub
from tether.api.ratelimit import RateLimit
from tether.config import store

PRIVATE = keys.genkey()
PEER = keys.encode(keys.public_from_private(keys.generate_private()))
DEVICE = (
    f"# fuzz device\n[Interface]\nAddress = 10.77.0.1/16, fd77::1/64\nListenPort = 51820\n"
    f"PrivateKey = {PRIVATE}\n\n[Peer]\nPublicKey = {PEER}\nAllowedIPs = 10.77.0.2/32\n"
)
TOKEN = "fuzz-token-0123456789abcdef"
STATUSES = {200, 400, 401, 403, 404, 405, 409, 413, 414, 429, 503}
METHODS = ["GET", "POST", "DELETE", "PUT", "HEAD", "OPTIONS"]
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

_dir = tempfile.mkdtemp(prefix="fuzz-api-")
_path = store.device_path(_dir, "fz0")
_calls = 0
_apps = {
    token: make_app(
        FileOnlyHub(_dir),
        public=PublicEndpoints("203.0.113.7", "2001:db8::7", "vpn.example.org"),
        token=token,
        rate_limit=RateLimit(per_minute=600, burst=50),
    )
    for token in (None, TOKEN)
}


def _reset() -> None:
    with open(_path, "w") as f:
        f.write(DEVICE)
    os.chmod(_path, 0o600)


_reset()


def _take(data: bytes, pos: int, n: int) -> tuple[bytes, int]:
    return data[pos : pos + n], pos + n


def TestOneInput(data: bytes) -> None:
    global _calls
    _calls += 1
    if _calls % 200 == 0:
        _reset()
    if len(data) < 4:
        return
    method = METHODS[data[0] % len(METHODS)]
    prefix = PREFIXES[data[1] % len(PREFIXES)]
    route = ROUTES[data[2] % len(ROUTES)]
    flags = data[3]
    rest = data[4:]
    a, _, rest = rest.partition(b"\x00")
    b, _, query = rest.partition(b"\x00")
    etype = TYPES[a[0] % len(TYPES)] if flags & 1 and a else a.decode("latin-1")
    key = PEER if flags & 2 else b.decode("latin-1")
    if flags & 4:
        key = PEER[: len(b) % 44] + b.decode("latin-1")
    path = prefix + route.format(t=etype, k=key)
    token = TOKEN if flags & 8 else None
    env = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": query.decode("latin-1"),
        "SERVER_NAME": "fuzz",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": f"198.51.100.{flags}",
        "CONTENT_LENGTH": str(len(b)) if flags & 16 else "",
        "wsgi.input": io.BytesIO(b),
        "wsgi.errors": sys.stderr,
        "wsgi.url_scheme": "http",
        "wsgi.version": (1, 0),
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    if flags & 32:
        env["HTTP_AUTHORIZATION"] = "Bearer " + (TOKEN if flags & 64 else a.decode("latin-1"))
    got = {}

    def start_response(status, headers, exc_info=None):
        got["status"] = int(status.split()[0])
        got["headers"] = dict(headers)

    body = b"".join(_apps[token](env, start_response))
    status = got["status"]
    if status not in STATUSES:
        raise AssertionError(f"{method} {path!r}?{query!r}: status {status}")
    if PRIVATE.encode() in body:
        raise AssertionError("the device's private key leaked into an answer")
    ctype = got["headers"].get("Content-Type", "")
    one_line = ctype.startswith("text/plain") and body.count(b"\n") == 1
    if status != 200 and method != "HEAD" and not one_line:
        raise AssertionError(f"error answer is not one line of text: {status} {body!r}")
    store.load(_path)  # still a valid file


def main() -> None:
    import atheris

    atheris.instrument_all()
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
