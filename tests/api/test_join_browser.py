"""The join page in a real browser (issue 11): Debian's headless Chromium, driven through
chromium-driver by tests/e2e/tools/join_browser.py, against the API served by waitress on
loopback (a secure context, so WebCrypto's X25519 is there unless the test deletes it).

Each test starts one browser (about two seconds); tests/e2e/test_join_e2e.py then uses the
config from the page for a real tunnel. Without Chromium these tests skip with the reason (fail
in CI, where scripts/install-system-deps installs it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from tether import keys
from tether.api.http.app import make_app
from tether.api.http.server import start_api
from tether.api.join.invites import JoinLinks
from tether.api.registry import state_path
from tether.config import store

from .conftest import PUBLIC
from .support import FakeHub, call

TOKEN = "admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def served(conf_dir, join_browser):
    """The API (with an admin token, so that removal really needs the owner secret) on a
    loopback port."""
    hub = FakeHub(conf_dir)
    handles = []

    def serve(**kw):
        app = make_app(hub, public=PUBLIC, token=TOKEN, rate_limit=None, links=JoinLinks(), **kw)
        handle = start_api(app, "127.0.0.1", 0)
        handles.append(handle)
        return app, handle.url

    yield serve
    for handle in handles:
        handle.stop()


def private_of(config: str) -> str:
    return config.split("PrivateKey = ")[1].split("\n")[0]


def check_config(result: dict, conf_dir) -> tuple[str, str]:
    """The page's config is complete and its private key belongs to the public key the server
    got; returns (private, public)."""
    config = result["config"]
    private = private_of(config)
    public = keys.pubkey(private)
    assert public == result["public_key"]
    assert config.startswith(f'# Config for public key "{public}"\n[Interface]\n')
    assert "__PLACEHOLDER__" not in config and "Endpoint = vpn.example.org:51820" in config
    assert result["qr"] == config  # zbarimg read the screenshot of #qr back to the text
    assert result["qr_size"]["width"] >= 300  # large enough to scan off a phone screen
    assert result["download_name"] == "bywg0.conf" and result["download"] == config
    assert result["elsewhere"] == []  # no request to any other origin
    assert result["console"] == []  # no CSP violation, no failed load
    return private, public


def test_an_invite_in_chromium_with_webcrypto(served, join_browser, conf_dir, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    app, url = served(self_service="invite")
    code = json.loads(call(app, "POST", "/invites", headers=ADMIN).text)["code"]
    result = join_browser(f"{url}/join/{code}", tmp_path, "--revisit")
    assert result["keygen"] == "webcrypto"
    private, public = check_config(result, conf_dir)
    device = store.load(conf_dir / "bywg0.conf").config
    assert keys.decode(public) in {p.public_key for p in device.peers}
    # the browser keeps the owner secret, never the private key
    secret = result["storage"].pop(f"tetherctl/bywg0/{public}")
    assert result["storage"] == {} and secret != private
    owner = json.loads(state_path(conf_dir, "bywg0").read_text())["owners"][public]
    assert owner["secret_sha256"] == hashlib.sha256(secret.encode()).hexdigest()
    # the private key is nowhere on the server: no file in the config directory, no log line
    for path in conf_dir.iterdir():
        assert private not in path.read_text(errors="replace"), path
    assert private not in caplog.text and code not in caplog.text
    # the single-use invite is used: a second visit shows why and offers no config
    revisit = result["revisit"]
    assert revisit["status"] == 410 and revisit["state"] == "closed"
    assert not revisit["create_visible"] and revisit["config"] == ""
    assert "used already" in revisit["message"]


def test_the_open_join_page_with_the_fallback_and_the_remove_button(
    served, join_browser, conf_dir, tmp_path
):
    app, url = served(self_service="open")
    result = join_browser(f"{url}/join", tmp_path, "--fallback", "--remove")
    assert result["keygen"] == "tweetnacl"  # WebCrypto's X25519 was deleted before the page ran
    _, public = check_config(result, conf_dir)
    # "Remove this device" used the owner secret from localStorage (the API has a token, so
    # nothing else could remove it), and the browser forgot the secret
    assert "peer removed" in result["removed_status"]
    assert result["storage_after_remove"] == [] and result["config_after_remove"] == ""
    device = store.load(conf_dir / "bywg0.conf").config
    assert keys.decode(public) not in {p.public_key for p in device.peers}


def test_without_javascript_the_page_says_why_it_needs_it(served, join_browser, tmp_path):
    app, url = served()
    result = join_browser(f"{url}/join", tmp_path, "--no-js")
    first = result["first"]
    assert "needs JavaScript" in first["body_text"] and not first["create_visible"]
    assert result["elsewhere"] == []


def test_a_request_to_another_origin_is_caught(served, join_browser, tmp_path):
    """The checker itself: a page that asks another origin for something (here, with the CSP
    lifted, a fetch to 127.0.0.2, where nothing listens) shows up in "elsewhere"."""
    app, url = served(self_service="open")
    leak = url.replace("127.0.0.1", "127.0.0.2") + "/leak"
    result = join_browser(f"{url}/join", tmp_path, "--leak", leak)
    assert result["elsewhere"] == [leak] and result["config"]


def test_the_readme_screenshot_is_deterministic(join_browser, tmp_path):
    """`make screenshot` (scripts/screenshot-join) draws the same page twice, byte for byte, and
    the QR code in it reads back as the config; it writes where it is told (here a temp dir:
    tests never rewrite the tracked docs/join-page.png)."""
    script = Path(__file__).resolve().parents[2] / "scripts" / "screenshot-join"
    shots = []
    for name in ("one.png", "two.png"):
        done = subprocess.run(
            [sys.executable, str(script), str(tmp_path / name)],
            capture_output=True,
            text=True,
            timeout=200,
        )
        assert done.returncode == 0, done.stderr
        shots.append((tmp_path / name).read_bytes())
    assert shots[0] == shots[1] and shots[0].startswith(b"\x89PNG")
    read = subprocess.run(
        ["zbarimg", "--raw", "-q", str(tmp_path / "one.png")], capture_output=True, text=True
    )
    assert read.returncode == 0 and "Endpoint = vpn.example.org:51820" in read.stdout
