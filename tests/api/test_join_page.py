"""The join page as the server sends it (issue 11): its HTML, headers, states and static files,
without a browser (test_join_browser.py runs it in Chromium)."""

from __future__ import annotations

import hashlib
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tether.api.http.app import make_app
from tether.api.join import page
from tether.api.join.invites import JoinLinks

from .conftest import PUBLIC
from .support import call

REPO = Path(__file__).resolve().parents[2]
STATIC = REPO / "tether" / "api" / "join" / "static"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


class Tags(HTMLParser):
    """Every start tag with its attributes, and the text inside <script> and <style> tags."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.inline: list[str] = []
        self._open: str | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._open = tag

    def handle_endtag(self, tag):
        self._open = None

    def handle_data(self, data):
        if self._open in ("script", "style") and data.strip():
            self.inline.append(data)

    def ids(self) -> dict[str, tuple[str, dict]]:
        return {a["id"]: (t, a) for t, a in self.tags if "id" in a}


def make(hub, **kw):
    kw.setdefault("rate_limit", None)
    return make_app(hub, public=PUBLIC, links=JoinLinks(), **kw)


def invite(app, path="/invites") -> str:
    return json.loads(call(app, "POST", path).text)["code"]


def test_the_ready_page_has_what_a_phone_needs_and_nothing_inline(hub):
    app = make(hub)
    code = invite(app)
    r = call(app, "GET", f"/join/{code}")
    assert r.status == 200 and r.headers["content-type"] == "text/html; charset=utf-8"
    assert r.headers["content-security-policy"] == CSP
    assert r.headers["referrer-policy"] == "no-referrer"  # the URL holds the code
    assert r.headers["x-frame-options"] == "DENY" and r.headers["cache-control"] == "no-store"
    doc = Tags(r.text)
    ids = doc.ids()
    assert ids["config"][0] == "pre" and ids["qr"][0] == "img" and ids["download"][0] == "a"
    assert ids["download"][1]["download"] == "bywg0.conf"
    assert {"create", "remove", "status", "result", "join"} <= set(ids)
    metas = [a for t, a in doc.tags if t == "meta"]
    assert {"name": "viewport", "content": "width=device-width, initial-scale=1"} in metas
    assert "<noscript>" in r.text and "needs JavaScript" in r.text
    # no inline script, style or handler: the CSP forbids them, so there must be none
    assert doc.inline == []
    for tag, attrs in doc.tags:
        assert "style" not in attrs and not any(a.startswith("on") for a in attrs), (tag, attrs)
        if tag == "script":
            assert attrs["src"].startswith("../static/")
    # every URL is relative to this origin (no CDN, nothing elsewhere)
    urls = re.findall(r'(?:src|href|data-add|data-remove)="([^"]*)"', r.text)
    assert urls and all(u.startswith(("../", "./", "#", "data:")) for u in urls), urls
    main = ids["join"][1]
    assert main["data-add"] == f"../devices/bywg0/join/{code}"
    assert main["data-remove"] == "../devices/bywg0/peer/remove"
    assert code not in r.text.replace(main["data-add"], "")  # only where the script needs it


@pytest.mark.parametrize(
    ("path", "root"),
    [("/join", "./"), ("/join/x", "../"), ("/devices/bywg0/join/x", "../../../"), ("/", "./")],
)
def test_links_are_relative_so_a_proxy_may_serve_the_api_under_a_path(path, root):
    assert page.relative_root(path) == root


def test_a_device_prefixed_page_links_back_to_the_root(hub):
    app = make(hub)
    code = invite(app, "/devices/bywg0/invites")
    r = call(app, "GET", f"/devices/bywg0/join/{code}")
    assert r.status == 200
    assert '<script src="../../../static/join.js" defer>' in r.text
    assert f'data-add="../../../devices/bywg0/join/{code}"' in r.text


def test_closed_pages_say_why_and_offer_no_form(hub):
    app = make(hub)
    for path, status, text in (
        ("/join/" + "A" * 32, 404, "This invite link is not valid"),
        ("/join/short", 404, "This invite link is not valid"),
        ("/devices/nosuch/join/" + "A" * 32, 404, "unknown device nosuch"),
    ):
        r = call(app, "GET", path)
        assert r.status == status and text in r.text, (path, r.status)
        assert 'data-state="closed"' in r.text and 'id="create"' not in r.text
        assert r.headers["content-security-policy"] == CSP
        assert "nacl.min.js" not in r.text  # no key maker where no key can be made
    closed = make(hub, self_service="off")
    r = call(closed, "GET", "/join")
    assert r.status == 403 and "does not let visitors add devices" in r.text


def test_values_in_the_page_are_escaped():
    html = page.JoinPage().render(title="<b>", path="/join", message='<script>x</script>"')
    assert "<script>x</script>" not in html and "&lt;script&gt;" in html
    assert "<title>&lt;b&gt;</title>" in html


def test_head_requests_and_static_files(hub):
    app = make(hub)
    assert call(app, "HEAD", "/join").status == 200
    for name, kind in page.STATIC_TYPES.items():
        r = call(app, "GET", f"/static/{name}")
        assert r.status == 200 and r.headers["content-type"] == kind
        assert r.body == (STATIC / name).read_bytes()
        assert r.headers["x-content-type-options"] == "nosniff"
    for name in ("../app.py", "vendor/README.md", "vendor/LICENSE.tweetnacl", "nope.js", "", "."):
        assert call(app, "GET", f"/static/{name}").status == 404, name


def test_the_vendored_files_are_the_upstream_files_the_readme_names():
    readme = (STATIC / "vendor" / "README.md").read_text()
    for name in ("nacl.min.js", "qrcode.js"):
        digest = hashlib.sha256((STATIC / "vendor" / name).read_bytes()).hexdigest()
        assert f"| `{name}` |" in readme and f"`{digest}`" in readme, name
    assert (
        (STATIC / "vendor" / "LICENSE.tweetnacl")
        .read_text()
        .startswith("This is free and unencumbered software released into the public domain.")
    )
    assert (
        "Copyright (c) 2009 Kazuhiko Arase"
        in (STATIC / "vendor" / "LICENSE.qrcode-generator").read_text()
    )


def test_the_script_sends_only_the_public_key_and_stores_only_the_secret():
    """What the browser tests show, also as a property of the source: the private key is
    never an argument of fetch or of localStorage, and nothing names another origin."""
    js = (STATIC / "join.js").read_text()
    assert "http://" not in js and "https://" not in js
    assert js.count("fetch(") == 2
    assert 'fetch(addUrl + "/" + pub,' in js and 'fetch(removeUrl + "/" + pub,' in js
    assert "store.setItem(storePrefix + pub, secret)" in js and js.count("setItem(") == 1
    assert "crypto.subtle" in js and 'generateKey({ name: "X25519" }' in js
    assert "nacl.scalarMult.base" in js
