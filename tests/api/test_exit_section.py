"""The device's `[Exit]` section stays the server's: client configs from the API never carry it,
and the API's file edits leave it byte for byte (DESIGN.md §3a)."""

from __future__ import annotations

from tether.api.http.app import make_app

from .conftest import PUBLIC
from .support import DEVICE_TEXT, PEER1, FakeHub, call, new_key, write_device

EXIT_BLOCK = (
    "# what the friends may reach\n"
    "[Exit]\n"
    "AllowDestinations = 192.168.7.0/24   # the printers\n"
    "DenyDestinations = 192.168.7.13\n"
    "PeerToPeer = yes\n"
    "MaxFlows = 4096\n"
    "MaxBufferPerPeer = 64M\n"
)
EXIT_WORDS = ("[Exit]", "AllowDestinations", "DenyDestinations", "PeerToPeer", "MaxFlows",
              "MaxBuffer", "192.168.7")  # fmt: skip


def test_client_configs_never_carry_exit_and_edits_keep_it(tmp_path):
    conf = tmp_path / "conf"
    conf.mkdir()
    # [Exit] between [Interface] and the first peer, the way an operator would write it
    text = DEVICE_TEXT.replace("# Alice's laptop", EXIT_BLOCK + "\n# Alice's laptop")
    path = write_device(conf, text=text)
    app = make_app(FakeHub(conf), public=PUBLIC, rate_limit=None)

    answers = [
        call(app, "GET", f"/peer/config/any/{PEER1}"),
        call(app, "POST", f"/peer/add/ipv4/{new_key()}"),
        call(app, "POST", "/peer/new/ipv6"),
    ]
    added = answers[1].text.split('"')[1]
    for r in answers:
        assert r.status == 200, r.text
        assert "[Interface]" in r.text and "[Peer]" in r.text
        assert not any(word in r.text for word in EXIT_WORDS), r.text
    assert call(app, "DELETE", f"/peer/remove/{PEER1}").status == 200
    assert call(app, "DELETE", f"/peer/remove/{added}").status == 200
    after = path.read_text()
    assert EXIT_BLOCK in after
    assert PEER1 not in after and added not in after
