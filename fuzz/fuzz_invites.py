"""Fuzz target: invites and the join page (DESIGN.md §5a): `POST|GET /invites`,
`DELETE /invites/<code>`, `GET /join[/<code>]`, `POST /join/<code>/<pubkey>`, with and without
the admin token, in each self-service mode, with codes that are real, mutated, huge or odd; and
the option and code parsers (`--uses`, `--expires`, `--api-public-url`, ids and join URLs).

Invariants: a status the API uses (never a 500); errors as one line of text (the pages as HTML);
no invite is made, listed or revoked without the admin token; a code appears in no answer but
the one that made it (and the page of that code); an invite never admits more peers than its
uses, nor anyone while self-service is off or after it was revoked; the device and state files
still parse, and the state file holds no code. Requests go straight to the WSGI apps on a temp
device file (no network). Run: `make fuzz TARGET=invites SECONDS=300` (see fuzz/README.md).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from urllib.parse import quote

from wsgi_call import call

from tether import keys
from tether.api.http.app import make_app
from tether.api.http.ratelimit import RateLimit
from tether.api.hub import FileOnlyHub
from tether.api.join import invites
from tether.api.join.invites import InviteError, JoinLinks
from tether.api.peers.clientconf import PublicEndpoints
from tether.api.registry import state_path
from tether.api.state import parse as parse_state
from tether.api.units import parse_duration
from tether.config import store

PRIVATE = keys.genkey()
DEVICE = (
    f"# fuzz device\n[Interface]\nAddress = 10.78.0.1/16\nListenPort = 51820\n"
    f"PrivateKey = {PRIVATE}\n"
)
TOKEN = "fuzz-token-0123456789abcdef"
STATUSES = {200, 400, 401, 403, 404, 405, 409, 410, 413, 414, 429, 503}
MODES = ("open", "invite", "off")
PREFIXES = ["", "/devices/fi0", "/devices/nope", "/devices/.."]
OPS = ("create", "page", "redeem", "revoke", "list", "parse")

_dir = tempfile.mkdtemp(prefix="fuzz-invites-")
_path = store.device_path(_dir, "fi0")
_state = state_path(_dir, "fi0")
_calls = 0
_codes: dict[str, int] = {}  # code -> uses, for every invite made since the last reset
_admitted: dict[str, int] = {}  # code -> peers it admitted
_revoked: set[str] = set()
_apps = {
    mode: make_app(
        FileOnlyHub(_dir),
        public=PublicEndpoints("203.0.113.7", None, None),
        token=TOKEN,
        rate_limit=RateLimit(per_minute=6000, burst=500),
        self_service=mode,
        self_service_max=5000,
        links=JoinLinks("https://vpn.example.org"),
    )
    for mode in MODES
}


def _reset() -> None:
    with open(_path, "w") as f:
        f.write(DEVICE)
    os.chmod(_path, 0o600)
    _state.unlink(missing_ok=True)
    _codes.clear()
    _admitted.clear()
    _revoked.clear()


_reset()


def _call(app, method: str, path: str, query: str, body: bytes, admin: bool, form: bool):
    headers = {"CONTENT_TYPE": "application/x-www-form-urlencoded" if form else "text/plain"}
    if admin:
        headers["HTTP_AUTHORIZATION"] = f"Bearer {TOKEN}"
    return call(app, method, path, query, "198.51.100.7", body, headers)


def _code_from(data: bytes, pick: int) -> str:
    """A known code, a mutation of one, or the fuzzer's own text."""
    known = sorted(_codes)
    text = data.decode("latin-1")
    if pick % 4 == 0 and known:
        return known[pick // 4 % len(known)]
    if pick % 4 == 1 and known:
        code = known[pick // 4 % len(known)]
        return code[: len(text) % 33] + text
    if pick % 4 == 2:
        return text * (1 + pick // 4)
    return text


def _parsers(text: str) -> None:
    """The option and code parsers: a value or their own one-line error, nothing else."""
    for parse in (
        invites.parse_uses,
        lambda t: parse_duration(t, "--expires", 0.0),
        invites.parse_public_url,
    ):
        try:
            parse(text)
        except (InviteError, ValueError) as e:
            if "\n" in str(e):
                raise AssertionError(f"a parser's error is not one line: {e!r}") from None
    found = invites.find({invites.code_hash(c): None for c in _codes}, text)
    if found is not None and text not in _codes:
        raise AssertionError(f"{text!r} found an invite it is not the code of")
    invites.by_id({invites.code_hash(c): None for c in _codes}, text)


def TestOneInput(data: bytes) -> None:
    global _calls
    _calls += 1
    if _calls % 300 == 0:
        _reset()
    if len(data) < 4:
        return
    op = OPS[data[0] % len(OPS)]
    mode = MODES[data[1] % len(MODES)]
    prefix = PREFIXES[data[2] % len(PREFIXES)]
    flags = data[3]
    a, _, b = data[4:].partition(b"\x00")
    admin = bool(flags & 1)
    app = _apps[mode]
    text = a.decode("latin-1")
    if op == "parse":
        _parsers(text)
        return
    code = _code_from(a, flags >> 2)
    safe = quote(code, safe="/") if flags & 2 else code
    query, body, form = "", b"", False
    if op == "create":
        method, path = "POST", f"{prefix}/invites"
        if flags & 64:
            body, form = b, bool(flags & 128)
        else:
            query = b.decode("latin-1")
    elif op == "page":
        method, path = "GET", f"{prefix}/join" + (f"/{safe}" if flags & 64 else "")
    elif op == "redeem":
        key = keys.encode(keys.public_from_private(keys.generate_private()))
        if flags & 128:
            key = b.decode("latin-1")
        method, path = "POST", f"{prefix}/join/{safe}/{key}"
    elif op == "revoke":
        method, path = "DELETE", f"{prefix}/invites/{safe}"
    else:
        method, path = "GET", f"{prefix}/invites"

    status, headers, out = _call(app, method, path, query, body, admin, form)
    if status not in STATUSES:
        raise AssertionError(f"{method} {path!r}: status {status}")
    if PRIVATE.encode() in out:
        raise AssertionError("the device's private key leaked into an answer")
    ctype = headers.get("Content-Type", "")
    one_line = ctype.startswith("text/plain") and out.count(b"\n") == 1
    if status != 200 and not ctype.startswith("text/html") and not one_line:
        raise AssertionError(f"error answer is not one line of text: {status} {out!r}")
    if op in ("create", "revoke", "list") and status == 200 and not admin:
        raise AssertionError(f"{op} of invites answered without the admin token")

    made = None
    if op == "create" and status == 200:
        doc = json.loads(out)
        made = doc["code"]
        if not invites.is_code(made) or doc["url"] != f"https://vpn.example.org/join/{made}":
            raise AssertionError(f"a new invite's code or URL is malformed: {doc!r}")
        _codes[made] = doc["uses"]
    for known in _codes:
        if known != made and known != code and known.encode() in out:
            raise AssertionError("an invite code leaked into an answer")
    if op == "revoke" and status == 200 and code in _codes:
        _revoked.add(code)
    if op == "redeem" and status == 200:
        if mode == "off":
            raise AssertionError("an invite admitted a peer with self-service off")
        if code not in _codes or code in _revoked:
            raise AssertionError(f"{code!r} admitted a peer without being a live invite")
        _admitted[code] = _admitted.get(code, 0) + 1
        if _admitted[code] > _codes[code]:
            raise AssertionError(f"an invite admitted more than its {_codes[code]} uses")

    store.load(_path)  # still a valid device file
    if _state.exists():
        raw = _state.read_bytes()
        parse_state(raw, "state")  # and a valid state file
        for known in _codes:
            if known.encode() in raw:
                raise AssertionError("an invite code is stored in the state file")


def main() -> None:
    import atheris

    atheris.instrument_all()
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
