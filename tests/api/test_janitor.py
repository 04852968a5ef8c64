"""Self-service peers that never complete a handshake expire; nothing else ever does."""

from __future__ import annotations

import json

from tether import keys
from tether.api.http.app import make_app
from tether.api.peers.janitor import Janitor, interval_for

from .conftest import PUBLIC
from .support import PEER1, call, new_key

TOKEN = "admin-token-0123456789abcdef"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
T0 = 1_700_000_000.0


def setup(hub, expiry=3600.0):
    now = [T0]
    app = make_app(
        hub, public=PUBLIC, token=TOKEN, rate_limit=None, peer_expiry=expiry, clock=lambda: now[0]
    )
    return app, Janitor(app.tether_service), now


def live(hub, *pairs):
    """The running device has these peers: (base64 key, last handshake or None)."""
    hub.stats = {"bywg0": {keys.decode(k): (0, 0, hs) for k, hs in pairs}}


def owners(conf_dir) -> dict:
    return json.loads((conf_dir / "bywg0.state.json").read_text())["owners"]


def test_unused_self_service_peers_expire_and_nothing_else_does(hub, conf_dir):
    app, janitor, now = setup(hub)
    unused = call(app, "POST", f"/peer/add/ipv4/{new_key()}").text.split('"')[1]
    used = call(app, "POST", f"/peer/add/ipv4/{new_key()}").text.split('"')[1]
    admin = call(app, "POST", f"/peer/add/ipv4/{new_key()}", headers=ADMIN).text.split('"')[1]
    live(hub, (PEER1, None), (unused, None), (used, None), (admin, None))
    now[0] += 3599
    assert janitor.sweep(now[0]) == []  # not yet
    live(hub, (PEER1, None), (unused, None), (used, T0 + 60), (admin, None))
    assert janitor.sweep(now[0]) == []
    assert owners(conf_dir)[used]["expires"] is None  # a handshake keeps it for good
    now[0] += 2
    live(hub, (PEER1, None), (unused, None), (used, None), (admin, None))  # e.g. a restart
    assert janitor.sweep(now[0]) == [("bywg0", unused)]
    text = (conf_dir / "bywg0.conf").read_text()
    assert unused not in text
    assert used in text and admin in text and PEER1 in text  # hand-written and admin peers stay
    assert unused not in owners(conf_dir)
    assert hub.applied[-1] == ("bywg0", (keys.decode(unused),))  # removed through the hub
    now[0] += 10 * 86400
    assert janitor.sweep(now[0]) == []


def test_a_peer_that_is_not_live_is_left_alone(hub, conf_dir):
    app, janitor, now = setup(hub)
    key = call(app, "POST", f"/peer/add/ipv4/{new_key()}").text.split('"')[1]
    live(hub)  # the device is not running: nobody could have completed a handshake
    now[0] += 7200
    assert janitor.sweep(now[0]) == []
    assert key in (conf_dir / "bywg0.conf").read_text()


def test_a_replaced_peer_is_not_removed(hub, conf_dir):
    app, janitor, now = setup(hub)
    key = call(app, "POST", f"/peer/add/ipv4/{new_key()}").text.split('"')[1]
    path = conf_dir / "bywg0.conf"
    path.write_text(path.read_text().replace("10.8.0.3/32, fd08::3/128", "10.8.0.77/32"))
    live(hub, (key, None))
    now[0] += 7200
    assert janitor.sweep(now[0]) == []
    assert key in path.read_text()


def test_expiry_zero_means_never(hub, conf_dir):
    app, janitor, now = setup(hub, expiry=0)
    key = call(app, "POST", f"/peer/add/ipv4/{new_key()}").text.split('"')[1]
    assert owners(conf_dir)[key]["expires"] is None
    live(hub, (key, None))
    assert janitor.sweep(now[0] + 10**7) == []


def test_a_broken_state_file_is_reported_once(hub, conf_dir, caplog):
    app, janitor, now = setup(hub)
    (conf_dir / "bywg0.state.json").write_text("{")
    janitor.sweep(now[0])
    janitor.sweep(now[0])
    assert caplog.text.count("expiring self-service peers") == 1


def test_interval():
    assert interval_for(3600) == 60 and interval_for(2) == 0.5 and interval_for(100) == 10
