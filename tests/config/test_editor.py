"""Exact results of lossless edits on hand-written files."""

from __future__ import annotations

import ipaddress

from tether import keys
from tether.config import ConfigFile
from tether.config.model import Peer
from tether.config.values import parse_endpoint

A = "10NguWHSLJ0tUOr4AkbTtOEYHoagq1KH/PJSIJ3SwFs="
B = "vi2iosrlXoDeZT08aXlq4AxXUNKO04NDuEeCw2Z7sD0="
PRIV = "4HOYXaS0mtLH9ZChsPaDQ3W/L7Z/rrchr8CMDqZGgXg="

TEXT = f"""# server notes
[Interface]
PrivateKey = {PRIV}
listenport=51820   # chosen for the firewall

# alice's laptop
# (two lines)
[Peer]
PublicKey = {A}
AllowedIPs = 10.0.0.2/32

# bob
[Peer]
publickey = {B}
allowedips = 10.0.0.3/32
allowedips = 10.0.0.4/32
"""


def test_remove_peer_takes_its_comment_block_and_keeps_the_next_ones():
    cfg = ConfigFile.parse(TEXT)
    assert cfg.remove_peer(keys.decode(A))
    assert (
        cfg.text()
        == f"""# server notes
[Interface]
PrivateKey = {PRIV}
listenport=51820   # chosen for the firewall

# bob
[Peer]
publickey = {B}
allowedips = 10.0.0.3/32
allowedips = 10.0.0.4/32
"""
    )
    assert not cfg.remove_peer(keys.decode(A))


def test_remove_last_peer_leaves_file_ending_as_before():
    cfg = ConfigFile.parse(TEXT)
    cfg.remove_peer(keys.decode(B))
    assert cfg.text().endswith("AllowedIPs = 10.0.0.2/32\n")


def test_set_value_keeps_spelling_spacing_and_comment():
    cfg = ConfigFile.parse(TEXT)
    cfg.update_interface(listen_port=4500)
    assert "listenport=4500   # chosen for the firewall\n" in cfg.text()
    assert cfg.text().replace("4500", "51820") == TEXT


def test_repeated_key_lines_collapse_into_the_first():
    cfg = ConfigFile.parse(TEXT)
    cfg.update_peer(keys.decode(B), allowed_ips=[ipaddress.ip_network("10.0.0.9/32")])
    assert cfg.text().endswith(f"publickey = {B}\nallowedips = 10.0.0.9/32\n")


def test_new_key_goes_after_the_sections_last_pair():
    cfg = ConfigFile.parse(TEXT)
    cfg.update_peer(
        keys.decode(A), endpoint=parse_endpoint("[2001:db8::1]:51820"), persistent_keepalive=25
    )
    assert (
        "AllowedIPs = 10.0.0.2/32\nEndpoint = [2001:db8::1]:51820\n"
        "PersistentKeepalive = 25\n\n# bob\n"
    ) in cfg.text()
    cfg.update_peer(keys.decode(A), endpoint=None, persistent_keepalive=0)
    assert cfg.text() == TEXT


def test_crlf_bom_and_missing_final_newline_are_respected():
    text = "\ufeff" + TEXT.replace("\n", "\r\n").rstrip("\r\n")
    cfg = ConfigFile.parse(text)
    assert cfg.text() == text
    cfg.add_peer(
        Peer(
            keys.decode(keys.pubkey(keys.genkey())),
            allowed_ips=[ipaddress.ip_network("10.0.0.5/32")],
        ),
        comment="carol",
    )
    out = cfg.text()
    assert out.startswith(text + "\r\n\r\n# carol\r\n[Peer]\r\nPublicKey = ")
    assert "\n" not in out.replace("\r\n", "")


def test_add_to_empty_interface_only_file():
    cfg = ConfigFile.parse(f"[Interface]\nPrivateKey = {PRIV}")
    cfg.add_peer(Peer(keys.decode(A)))
    assert cfg.text() == f"[Interface]\nPrivateKey = {PRIV}\n\n[Peer]\nPublicKey = {A}\n"


def test_hooks_keep_order_and_text():
    cfg = ConfigFile.parse(
        f"[Interface]\nPrivateKey = {PRIV}\nPostUp = echo a %i; echo b\n"
        "PostUp = iptables -A FORWARD -i %i -j ACCEPT # comment\n"
    )
    assert cfg.config.interface.post_up == [
        "echo a %i; echo b",
        "iptables -A FORWARD -i %i -j ACCEPT",
    ]
