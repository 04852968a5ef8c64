"""The API inside a real daemon: expiry of unused self-service peers, quarantine of addresses
freed by a hand edit, both surviving a restart."""

from __future__ import annotations

import http.client
import json
import os
import socket

from tether import keys

from .daemon_harness import wait_for
from .test_daemon import peer, server_conf, write

TOKEN = "daemon-admin-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port, method, path, headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request(method, path, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.getheader("Tether-Peer-Secret"), r.read().decode()
    finally:
        conn.close()


def address(text: str) -> str:
    return text.split("Address = ")[1].split("\n")[0]


def start(daemon, tmp_path, dev, port):
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    os.chmod(token, 0o600)
    daemon.args = (
        "--api-listen",
        f"127.0.0.1:{port}",
        "--api-token-file",
        str(token),
        "--api-peer-expiry",
        "3s",
        "--public-ipv4",
        "203.0.113.7",
    )
    runs = daemon.log.read_text().count("peer API listening") if daemon.log.exists() else 0
    daemon.start(dev)
    daemon.wait_up(dev)
    wait_for(lambda: daemon.log.read_text().count("peer API listening") > runs, 10, "API up")


def test_expiry_and_quarantine_in_the_daemon(daemon, tmp_path):
    dev = daemon.name("api")
    path = daemon.dir / f"{dev}.conf"
    hand = keys.pubkey(keys.genkey())
    write(path, server_conf(keys.genkey(), 0, peer(hand, 2)))
    port = free_port()
    start(daemon, tmp_path, dev, port)

    status, secret, text = request(port, "POST", "/peer/new/ipv4")  # anyone: self-service
    assert status == 200 and secret
    unused = text.split('"')[1]
    admin = f"Bearer {TOKEN}"
    status, _, text = request(port, "POST", "/peer/new/ipv4", {"Authorization": admin})
    assert status == 200
    kept = text.split('"')[1]
    assert {hand, unused, kept} <= set(daemon.peers(dev))

    # the unused self-service peer goes, from the file and the device; the others stay
    wait_for(lambda: unused not in daemon.peers(dev), 15, "expired peer removed")
    assert unused not in path.read_text()
    assert {hand, kept} <= set(daemon.peers(dev))
    assert daemon.logged("no handshake within its expiry")

    # a hand edit frees 10.44.0.2: the daemon quarantines it, so the next add gets another
    text = path.read_text()
    write(path, text[: text.index("# peer 2")] + text[text.index("# added by") :])
    wait_for(lambda: hand not in daemon.peers(dev), 5, "hand removal applied")
    state = daemon.dir / f"{dev}.state.json"
    wait_for(lambda: "10.44.0.2/32" in json.loads(state.read_text())["released"], 5, "recorded")
    status, _, text = request(port, "POST", "/peer/new/ipv4", {"Authorization": admin})
    assert status == 200 and address(text) not in ("10.44.0.2/32", "10.44.0.3/32")

    # after a restart: still quarantined, and the owner secret of a live peer still works
    assert daemon.stop() == 0
    start(daemon, tmp_path, dev, port)
    status, _, text = request(port, "POST", "/peer/new/ipv4", {"Authorization": admin})
    assert status == 200 and address(text) != "10.44.0.2/32"
    status, secret, text = request(port, "POST", "/peer/new/ipv4")
    mine = text.split('"')[1]
    status, _, _ = request(port, "DELETE", f"/peer/remove/{mine}", {"Authorization": "Bearer x"})
    assert status == 403
    status, _, _ = request(
        port, "DELETE", f"/peer/remove/{mine}", {"Authorization": f"Bearer {secret}"}
    )
    assert status == 200 and mine not in daemon.peers(dev)
    assert daemon.stop() == 0
