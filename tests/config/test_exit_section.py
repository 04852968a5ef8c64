"""The `[Exit]` section of a device file (DESIGN.md §3a): parsing, errors with their lines,
rendering, and the lossless editor leaving it alone."""

from __future__ import annotations

import ipaddress

import pytest

from tether import keys
from tether.config import ConfigError, ConfigFile
from tether.config.exit_settings import ExitSettings
from tether.config.model import Peer, parse_text, render
from tether.config.values import format_size, parse_size

KEY = "4HOYXaS0mtLH9ZChsPaDQ3W/L7Z/rrchr8CMDqZGgXg="
PEER = "10NguWHSLJ0tUOr4AkbTtOEYHoagq1KH/PJSIJ3SwFs="
HEAD = f"[Interface]\nPrivateKey = {KEY}\nAddress = 10.9.0.1/24\n\n"  # 4 lines: [Exit] on 5


def parse(exit_lines: str):
    return parse_text(HEAD + "[Exit]\n" + exit_lines, "d.conf")[1]


def error(exit_lines: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse(exit_lines)
    return str(info.value)


def test_absent_section_is_the_defaults():
    cfg = parse_text(HEAD, "d.conf")[1]
    assert cfg.exit == ExitSettings() and cfg.exit.is_default
    assert cfg.exit.peer_to_peer is False and cfg.exit.max_flows is None


def test_every_key_case_insensitive_lists_repeatable():
    cfg = parse(
        "allowDESTINATIONS = 192.168.7.0/24, fd00:7::/64\n"
        "AllowDestinations = 10.20.0.5\n"
        "denydestinations = 192.168.7.13/32\n"
        "PEERTOPEER = Yes\n"
        "MaxFlows = 4096\nMaxFlowsPerPeer = 512\nMaxBuffer = 512M\nMaxBufferPerPeer = 65536\n"
    )
    ex = cfg.exit
    assert ex.allow_destinations == tuple(
        ipaddress.ip_network(n) for n in ("192.168.7.0/24", "fd00:7::/64", "10.20.0.5/32")
    )
    assert ex.deny_destinations == (ipaddress.ip_network("192.168.7.13/32"),)
    assert ex.peer_to_peer is True
    assert (ex.max_flows, ex.max_flows_per_peer) == (4096, 512)
    assert (ex.max_buffer, ex.max_buffer_per_peer) == (512 << 20, 65536)


@pytest.mark.parametrize(
    "word, value", [("yes", True), ("NO", False), ("true", True), ("False", False)]
)
def test_peer_to_peer_spellings(word, value):
    assert parse(f"PeerToPeer = {word}\n").exit.peer_to_peer is value


@pytest.mark.parametrize(
    "text, size",
    [("1", 1), ("65536", 65536), ("64k", 64 << 10), ("512M", 512 << 20), ("1G", 1 << 30),
     ("1t", 1 << 40)],
)  # fmt: skip
def test_sizes(text, size):
    assert parse_size(text) == size
    assert parse_size(format_size(size)) == size


@pytest.mark.parametrize(
    "lines, message",
    [
        ("AllowDestinations = 10.0.0.0/8\nAllowDestinations = 300.1.2.3/32\n",
         "d.conf:7: AllowDestinations: '300.1.2.3/32' is not an IP network"),
        ("DenyDestinations = 10.0.0.0/8, example.com\n",
         "d.conf:6: DenyDestinations: 'example.com' is not an IP network"),
        ("PeerToPeer = maybe\n", "d.conf:6: PeerToPeer: 'maybe' is neither yes nor no"),
        ("PeerToPeer = yes\nPeerToPeer = no\n",
         "d.conf:7: PeerToPeer is given twice (first on line 6)"),
        ("MaxFlows = 0\n", "d.conf:6: MaxFlows: 0 is outside 1-1048576"),
        ("MaxFlows = -5\n", "d.conf:6: MaxFlows: '-5' is not a positive whole number"),
        ("MaxFlows = 2000000\n", "d.conf:6: MaxFlows: 2000000 is outside 1-1048576"),
        ("MaxFlowsPerPeer = lots\n",
         "d.conf:6: MaxFlowsPerPeer: 'lots' is not a positive whole number"),
        ("MaxBuffer = 1.5G\n",
         "d.conf:6: MaxBuffer: '1.5G' is not a size (bytes, or a number with K, M, G or T)"),
        ("MaxBuffer = 0\n", "d.conf:6: MaxBuffer: '0' is outside 1 byte to 1T"),
        ("MaxBuffer = 2T\n", "d.conf:6: MaxBuffer: '2T' is outside 1 byte to 1T"),
        ("MaxBufferPerPeer = 12 M\n",
         "d.conf:6: MaxBufferPerPeer: '12 M' is not a size (bytes, or a number with K, M, G or T)"),
        ("MaxFlows = 100\nPeerToPeer = no\nMaxFlowsPerPeer = 101\n",
         "d.conf:8: MaxFlowsPerPeer: 101 is more than MaxFlows = 100 (line 6)"),
        ("MaxFlowsPerPeer = 20000\n",
         "d.conf:6: MaxFlowsPerPeer: 20000 is more than MaxFlows = 16384 (its default)"),
        ("MaxBufferPerPeer = 1G\nMaxBuffer = 512M\n",
         "d.conf:6: MaxBufferPerPeer: 1G is more than MaxBuffer = 512M (line 7)"),
        ("Egress = socks5://proxy:1080\nEgress = direct\n",
         "d.conf:7: Egress is given twice (first on line 6)"),
        ("PrivateKey = x\n", "d.conf:6: unknown key 'PrivateKey' in [Exit]"),
    ],
)  # fmt: skip
def test_errors_name_the_line_of_the_offending_key(lines, message):
    assert error(lines) == message


def test_per_peer_equal_to_total_is_fine():
    ex = parse(
        "MaxFlows = 10\nMaxFlowsPerPeer = 10\nMaxBuffer = 1M\nMaxBufferPerPeer = 1024K\n"
    ).exit
    assert ex.max_flows_per_peer == 10 and ex.max_buffer_per_peer == 1 << 20


def test_a_second_exit_section_names_both_lines():
    text = HEAD + "[Exit]\nPeerToPeer = yes\n\n[Peer]\nPublicKey = " + PEER + "\n\n[exit]\n"
    with pytest.raises(ConfigError) as info:
        parse_text(text, "d.conf")
    assert str(info.value) == "d.conf:11: a second [Exit] section (the first is on line 5)"


def test_exit_anywhere_and_peers_keep_their_lines():
    text = f"[Exit]\nPeerToPeer = yes\n[Peer]\nPublicKey = {PEER}\n" + HEAD
    cfg = parse_text(text, "d.conf")[1]
    assert cfg.exit.peer_to_peer and cfg.peers[0].line == 3


def test_render_puts_exit_after_interface_and_only_non_defaults():
    cfg = parse("PeerToPeer = no\nAllowDestinations = 192.168.7.0/24\nMaxBuffer = 1073741824\n")
    cfg.peers.append(Peer(keys.decode(PEER)))
    text = render(cfg)
    assert text.index("[Interface]") < text.index("[Exit]") < text.index("[Peer]")
    assert "AllowDestinations = 192.168.7.0/24\nMaxBuffer = 1G\n" in text
    assert "PeerToPeer" not in text
    assert parse_text(text)[1] == cfg
    assert "[Exit]" not in render(parse_text(HEAD)[1])


def test_editor_keeps_the_section_byte_for_byte():
    exit_block = (
        "# shared with the office\n[EXIT]   # ours\n  allowdestinations=192.168.7.0/24 # printers\n"
        "PeerToPeer   =   YES\r\nMaxBuffer = 64m\n"
    )
    text = HEAD + exit_block + f"\n[Peer]\nPublicKey = {PEER}\nAllowedIPs = 10.9.0.2/32\n"
    cfg = ConfigFile.parse(text, "d.conf")
    cfg.update_interface(listen_port=51999)
    cfg.add_peer(Peer(bytes(range(1, 33)), allowed_ips=[ipaddress.ip_network("10.9.0.3/32")]))
    cfg.remove_peer(keys.decode(PEER))
    out = cfg.text()
    assert exit_block in out
    assert ConfigFile.parse(out).config.exit == cfg.config.exit
    assert cfg.config.exit.peer_to_peer and cfg.config.exit.max_buffer == 64 << 20
