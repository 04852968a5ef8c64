"""The `Egress` key (DESIGN.md §3a) in `[Exit]` and `[Peer]`: what it accepts, the errors (file,
line, and never the password), the password kept out of everything that shows a value, and the
lossless editor and render round trip keeping it."""

from __future__ import annotations

import pytest

from tether import keys
from tether.config import ConfigError, ConfigFile
from tether.config.egress import DIRECT, Egress, parse_egress
from tether.config.model import Peer, parse_text, render

KEY = "4HOYXaS0mtLH9ZChsPaDQ3W/L7Z/rrchr8CMDqZGgXg="
PEER = "10NguWHSLJ0tUOr4AkbTtOEYHoagq1KH/PJSIJ3SwFs="
OTHER = "vi2iosrlXoDeZT08aXlq4AxXUNKO04NDuEeCw2Z7sD0="
HEAD = f"[Interface]\nPrivateKey = {KEY}\nAddress = 10.9.0.1/24\n\n"  # [Exit] on line 5
SECRET = "hunter2-Zq9"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("direct", DIRECT),
        ("DIRECT", DIRECT),
        ("socks5://192.0.2.7:1080", Egress("192.0.2.7", 1080)),
        ("SOCKS5://proxy.example.net:9050", Egress("proxy.example.net", 9050)),
        ("socks5://[2001:db8::7]:1080", Egress("2001:db8::7", 1080)),
        ("socks5://alice:pw@192.0.2.7:1080", Egress("192.0.2.7", 1080, "alice", "pw")),
        # percent-encoding: '@', '#', ':', '%', a space, UTF-8
        ("socks5://a%40b:p%23%3A%25%20x@h:1", Egress("h", 1, "a@b", "p#:% x")),
        ("socks5://j%C3%B6rg:pa:ss@h:1", Egress("h", 1, "jörg", "pa:ss")),
        ("socks5://a-b.c_d~:!$&'()*+,;=@h:1", Egress("h", 1, "a-b.c_d~", "!$&'()*+,;=")),
        (f"socks5://{'u' * 255}:{'%41' * 255}@h:1", Egress("h", 1, "u" * 255, "A" * 255)),
    ],
)
def test_accepted_values_and_their_round_trip(text, expected):
    egress = parse_egress(text)
    assert egress == expected
    assert parse_egress(egress.to_text()) == egress


@pytest.mark.parametrize(
    "text, message",
    [
        ("socks4://h:1080", "unknown scheme 'socks4'"),
        ("http://h:3128", "unknown scheme 'http'"),
        ("proxy.example.net:1080", "not a proxy URL"),
        ("socks5:/h:1080", "not a proxy URL"),
        ("", "not a proxy URL"),
        ("socks5://", "the proxy's host and port are missing"),
        ("socks5://h", "the proxy's port is missing"),
        ("socks5://[2001:db8::7]", "the proxy's port is missing"),
        ("socks5://h:port", "the proxy's port is not a number"),
        ("socks5://h:0", "'h:0': 0 is not a port number (1-65535)"),
        ("socks5://h:65536", "'h:65536': 65536 is not a port number (1-65535)"),
        ("socks5://h:1080/", "no path, query or fragment"),
        ("socks5://h:1080?x=1", "no path, query or fragment"),
        ("socks5://2001:db8::7:1080", "put an IPv6 address in brackets"),
        ("socks5://[fe80::1%eth0]:1080", "a zone index is not allowed"),
        ("socks5://1.2.3:1080", "'1.2.3' is not an IPv4 address"),
        ("socks5://bad_host!:1080", "is not an IP address or host name"),
        ("socks5://alice@h:1080", "a user name needs a password as well"),
        ("socks5://:pw@h:1080", "the user name is empty"),
        ("socks5://alice:@h:1080", "the password is empty"),
        ("socks5://alice:p@ss@h:1080", "write '@' in a user name or password as %40"),
        ("socks5://alice:p%zzss@h:1080", "the password holds a character that must be"),
        ("socks5://alice:pa ss@h:1080", "the password holds a character that must be"),
        ("socks5://al%2ice:pw@h:1080", "the user name holds a character that must be"),
        ("socks5://al/ice:pw@h:1080", "the user name holds a character that must be"),
        ("socks5://alice:%ff%fe@h:1080", "the password is not UTF-8 once percent-decoded"),
        (f"socks5://alice:{'%41' * 256}@h:1", "the password is longer than 255 bytes"),
        (f"socks5://{'u' * 256}:pw@h:1", "the user name is longer than 255 bytes"),
    ],
)
def test_refused_values_say_why(text, message):
    with pytest.raises(ValueError) as info:
        parse_egress(text)
    assert message in str(info.value)


@pytest.mark.parametrize(
    "value",
    [
        f"socks5://alice:{SECRET}@h:99999",
        f"socks5://alice:{SECRET}@h",
        f"socks5://alice:{SECRET}x y@h:1",
        f"socks5://alice:{SECRET}%zz@h:1",
        f"socks5://alice:{SECRET}@@h:1",
        f"socks5://alice:{SECRET}@h:1/path",
        f"socks5://alice:{SECRET}@bad_host!:1",
        f"socks5://alice:{SECRET}",  # cut short by a '#': the password stands where a port would
        f"socks4://alice:{SECRET}@h:1",
    ],
)
def test_an_error_never_repeats_the_password(value):
    with pytest.raises(ConfigError) as info:
        parse_text(HEAD + f"[Exit]\nEgress = {value}\n", "d.conf")
    text = str(info.value)
    assert text.startswith("d.conf:6: Egress: ") and SECRET not in text, text
    assert SECRET not in repr(info.value) and SECRET not in str(info.value.args)


def test_the_password_shows_nowhere_but_in_the_file():
    text = HEAD + f"[Exit]\nEgress = socks5://alice:{SECRET}@192.0.2.7:1080\n"
    cfg = parse_text(text, "d.conf")[1]
    egress = cfg.exit.egress
    assert egress.credentials == (b"alice", SECRET.encode())
    assert egress.label == str(egress) == "socks5://alice@192.0.2.7:1080"
    for shown in (repr(egress), str(egress), repr(cfg.exit), repr(cfg), f"{egress}"):
        assert SECRET not in shown, shown
    assert repr(egress) == "Egress('socks5://alice:***@192.0.2.7:1080')"
    assert f"alice:{SECRET}@" in render(cfg)  # the file is where it lives


def test_peer_override_and_device_default():
    text = (
        HEAD
        + "[Exit]\nEgress = socks5://192.0.2.7:1080\n\n"
        + f"[Peer]\nPublicKey = {PEER}\nAllowedIPs = 10.9.0.2/32\negress = Direct\n\n"
        + f"[Peer]\nPublicKey = {OTHER}\nAllowedIPs = 10.9.0.3/32\n"
    )
    cfg = parse_text(text, "d.conf")[1]
    assert cfg.exit.egress == Egress("192.0.2.7", 1080)
    assert [p.egress for p in cfg.peers] == [DIRECT, None]
    _, again = parse_text(render(cfg))
    assert again == cfg


def test_peer_errors_name_the_line():
    text = HEAD + f"[Peer]\nPublicKey = {PEER}\nEgress = socks5://h:1\nEgress = direct\n"
    with pytest.raises(ConfigError) as info:
        parse_text(text, "d.conf")
    assert str(info.value) == "d.conf:8: Egress is given twice (first on line 7)"
    text = HEAD + f"[Peer]\nPublicKey = {PEER}\nEgress = tor\n"
    with pytest.raises(ConfigError) as info:
        parse_text(text, "d.conf")
    assert str(info.value) == (
        "d.conf:7: Egress: not a proxy URL (expected direct or socks5://[user:pass@]host:port)"
    )


def test_the_editor_leaves_egress_lines_alone():
    text = (
        HEAD
        + "[Exit]\nEGRESS = SOCKS5://alice:p%23w@192.0.2.7:1080  # upstream\n\n"
        + f"[Peer]\nPublicKey = {PEER}\nAllowedIPs = 10.9.0.2/32\nEgress = direct # office\n"
    )
    cfg = ConfigFile.parse_bytes(text.encode(), "d.conf")
    cfg.update_peer(keys.decode(PEER), persistent_keepalive=25)
    cfg.add_peer(Peer(keys.decode(OTHER), egress=Egress("192.0.2.8", 1080, "bob", "x y")))
    out = cfg.text()
    assert "EGRESS = SOCKS5://alice:p%23w@192.0.2.7:1080  # upstream\n" in out
    assert "Egress = direct # office\nPersistentKeepalive = 25\n" in out
    assert out.endswith("Egress = socks5://bob:x%20y@192.0.2.8:1080\n")
    cfg.update_peer(keys.decode(PEER), egress=None)
    assert "# office" not in cfg.text()
    _, model = parse_text(cfg.text())
    assert model == cfg.config
