"""The SOCKS5 client state machine (tether.netstack.exit.socks) against exchanges recorded from
Debian's dante-server 1.4.2 (`socksmethod: username`, a `socks block` rule for 198.18.4.99), fed
whole, byte by byte and joined; the failures a proxy can produce; and the UDP ASSOCIATE datagram
header (RFC 1928 §7) by its layout."""

from __future__ import annotations

import errno

import pytest

from tether.netstack.exit.socks import (
    CONNECT,
    PROXY_DOWN,
    UDP_ASSOCIATE,
    SocksClient,
    SocksFailed,
    SocksReady,
    parse_udp_datagram,
    udp_header,
)

CREDS = (b"tproxy", b"s3cret")
HELLO = b"\x05\x02\x00\x02"  # version 5, two methods: none, user name/password
AUTH = b"\x01\x06tproxy\x06s3cret"
CONNECT_8080 = b"\x05\x01\x00\x01\xc6\x12\x04\x02\x1f\x90"  # CONNECT 198.18.4.2:8080

# (what we send, what dante answered), in order; recorded on the wire
RECORDED = {
    "connected": [
        (HELLO, b"\x05\x02"),
        (AUTH, b"\x01\x00"),
        (CONNECT_8080, b"\x05\x00\x00\x01\xc6\x12\x04\x01\xb7\xec"),  # bound 198.18.4.1:47084
    ],
    "refused": [
        (HELLO, b"\x05\x02"),
        (AUTH, b"\x01\x00"),
        (b"\x05\x01\x00\x01\xc6\x12\x04\x02\x00\x09", b"\x05\x05\x00\x01\xc6\x12\x04\x01\xb7\xf0"),
    ],
    "blocked": [
        (HELLO, b"\x05\x02"),
        (AUTH, b"\x01\x00"),
        (b"\x05\x01\x00\x01\xc6\x12\x04\x63\x00\x50", b"\x05\x02\x00\x01\xc6\x12\x04\x63\x00\x50"),
    ],
    "unreachable": [
        (HELLO, b"\x05\x02"),
        (AUTH, b"\x01\x00"),
        (b"\x05\x01\x00\x01\xcb\x00\x71\x09\x00\x50", b"\x05\x03\x00\x01\xc6\x12\x04\x01\xb7\xfa"),
    ],
    "wrong-password": [
        (HELLO, b"\x05\x02"),
        (b"\x01\x06tproxy\x04nope", b"\x01\x01"),
    ],
}
TARGETS = {
    "connected": ("198.18.4.2", 8080, CREDS),
    "refused": ("198.18.4.2", 9, CREDS),
    "blocked": ("198.18.4.99", 80, CREDS),
    "unreachable": ("203.0.113.9", 80, CREDS),
    "wrong-password": ("198.18.4.2", 8080, (b"tproxy", b"nope")),
}
OUTCOMES = {
    "connected": SocksReady(("198.18.4.1", 47084), b""),
    "refused": SocksFailed(errno.ECONNREFUSED, "the proxy answered 05: connection refused", False),
    "blocked": SocksFailed(errno.EACCES, "the proxy answered 02: connection not allowed by "
                           "ruleset", False),
    "unreachable": SocksFailed(errno.ENETUNREACH, "the proxy answered 03: network unreachable",
                               False),
    "wrong-password": SocksFailed(PROXY_DOWN, "the proxy refused our user name and password",
                                  True),
}  # fmt: skip


def replay(name: str, split: str) -> SocksClient:
    host, port, creds = TARGETS[name]
    client = SocksClient(CONNECT, host, port, creds, 0.0)
    for sent, answer in RECORDED[name]:
        assert client.result is None
        assert client.take_data() == sent
        assert client.take_data() == b""  # taken once
        if split == "bytes":
            for i in range(len(answer)):
                client.receive_data(answer[i : i + 1], 0.1)
        else:
            client.receive_data(answer, 0.1)
    assert client.take_data() == b""
    return client


@pytest.mark.parametrize("split", ["whole", "bytes"])
@pytest.mark.parametrize("name", sorted(RECORDED))
def test_recorded_exchanges(name, split):
    assert replay(name, split).result == OUTCOMES[name]


def test_the_destinations_first_bytes_arriving_with_the_reply_are_kept():
    client = SocksClient(CONNECT, "198.18.4.2", 8080, None, 0.0)
    assert client.take_data() == b"\x05\x01\x00"  # "no authentication" only
    client.receive_data(b"\x05\x00", 0.0)
    assert client.take_data() == CONNECT_8080
    client.receive_data(b"\x05\x00\x00\x01\xc6\x12\x04\x01\xb7\xec220 smtp ready\r\n", 0.0)
    assert client.result == SocksReady(("198.18.4.1", 47084), b"220 smtp ready\r\n")
    client.receive_data(b"more", 0.0)  # after the result, nothing changes
    assert client.result.leftover == b"220 smtp ready\r\n"


def test_udp_associate_recorded_and_ipv6_and_domain_replies():
    client = SocksClient(UDP_ASSOCIATE, "198.18.3.1", 45000, CREDS, 0.0)
    client.receive_data(b"\x05\x02\x01\x00", 0.0)  # method reply and auth reply joined
    assert client.take_data() == HELLO + AUTH + b"\x05\x03\x00\x01\xc6\x12\x03\x01\xaf\xc8"
    client.receive_data(b"\x05\x00\x00\x01\xc6\x12\x03\x02\xc0\xb8", 0.0)  # recorded
    assert client.result == SocksReady(("198.18.3.2", 49336), b"")
    v6 = SocksClient(CONNECT, "2001:db8::7", 443, None, 0.0)
    assert v6.take_data() == b"\x05\x01\x00"
    v6.receive_data(b"\x05\x00", 0.0)
    assert v6.take_data() == b"\x05\x01\x00\x04" + bytes.fromhex("20010db8" + "0" * 22 + "07") + (
        b"\x01\xbb"
    )
    v6.receive_data(b"\x05\x00\x00\x04" + bytes(15) + b"\x01\x04\x38", 0.0)
    assert v6.result == SocksReady(("::1", 1080), b"")
    named = SocksClient(CONNECT, "192.0.2.1", 80, None, 0.0)
    named.receive_data(b"\x05\x00\x05\x00\x00\x03\x05relay\x04\x38", 0.0)
    assert named.result == SocksReady(("relay", 1080), b"")


@pytest.mark.parametrize(
    "answers, reason",
    [
        ([b""], "closed the connection during the SOCKS negotiation"),
        ([b"\x05\x00", b""], "closed the connection during the SOCKS negotiation"),
        ([b"\x04\x00"], "not SOCKS5 (version 4 in the method selection)"),
        ([b"HTTP/1.1 400 Bad Request\r\n"], "not SOCKS5"),
        ([b"\x05\xff"], "accepts none of our authentication methods"),
        ([b"\x05\x01"], "not SOCKS5 (it chose method 1, which we did not offer)"),
        ([b"\x05\x07"], "not SOCKS5"),
        ([b"\x05\x00\x05\x00\x00\x09\x00\x00"], "not SOCKS5 (address type 9 in the reply)"),
        ([b"\x05\x00\x04\x00\x00\x01\x00\x00\x00\x00\x00\x00"], "not SOCKS5 (version 4 in"),
        ([b"\x05\x00\x05\x09\x00\x01\x00\x00\x00\x00\x00\x00"], "not SOCKS5 (reply code 9)"),
    ],
)
def test_proxy_faults_fail_closed(answers, reason):
    client = SocksClient(CONNECT, "198.18.4.2", 80, CREDS, 0.0)
    for data in answers:
        client.receive_data(data, 0.0)
    result = client.result
    assert isinstance(result, SocksFailed) and result.proxy_fault and result.err == PROXY_DOWN
    assert reason in result.reason


def test_user_name_method_without_credentials_and_a_lenient_auth_version():
    client = SocksClient(CONNECT, "198.18.4.2", 80, None, 0.0)
    client.receive_data(b"\x05\x02", 0.0)  # we offered only "none"
    assert client.result.proxy_fault
    client = SocksClient(CONNECT, "198.18.4.2", 80, CREDS, 0.0)
    client.receive_data(b"\x05\x02\x05\x00", 0.0)  # auth status 0 under version 5: accepted
    assert client.result is None
    client = SocksClient(CONNECT, "198.18.4.2", 80, None, 0.0)
    client.receive_data(b"\x05\xff", 0.0)
    assert "does it need a user name and password?" in client.result.reason


@pytest.mark.parametrize(
    "code, err",
    [(1, errno.EHOSTUNREACH), (2, errno.EACCES), (3, errno.ENETUNREACH), (4, errno.EHOSTUNREACH),
     (5, errno.ECONNREFUSED), (6, errno.ETIMEDOUT), (7, errno.ENETUNREACH),
     (8, errno.ENETUNREACH)],
)  # fmt: skip
def test_every_reply_code_maps_to_what_a_direct_connect_would_give(code, err):
    client = SocksClient(CONNECT, "198.18.4.2", 80, None, 0.0)
    client.receive_data(b"\x05\x00\x05" + bytes([code]) + b"\x00\x01" + bytes(6), 0.0)
    assert client.result.err == err and not client.result.proxy_fault


def test_a_probe_only_authenticates():
    probe = SocksClient(None, "", 0, CREDS, 0.0)
    assert probe.take_data() == HELLO
    probe.receive_data(b"\x05\x02", 0.0)
    assert probe.take_data() == AUTH
    probe.receive_data(b"\x01\x00", 0.0)
    assert probe.result == SocksReady(("", 0), b"") and probe.take_data() == b""
    probe = SocksClient(None, "", 0, None, 0.0)
    probe.receive_data(b"\x05\x00", 0.0)
    assert probe.result == SocksReady(("", 0), b"") and probe.take_data() == b"\x05\x01\x00"


def test_the_deadline():
    client = SocksClient(CONNECT, "198.18.4.2", 80, None, 100.0, timeout=10.0)
    assert client.next_timer() == 110.0
    client.handle_timer(109.9)
    assert client.result is None
    client.handle_timer(110.0)
    assert client.result == SocksFailed(PROXY_DOWN, "the proxy did not answer in time", True)
    assert client.next_timer() is None


def test_credentials_never_show_in_a_failure():
    client = SocksClient(CONNECT, "198.18.4.2", 80, (b"user", b"Secret-xyz"), 0.0)
    client.receive_data(b"\x05\x02\x01\x01", 0.0)
    assert b"Secret-xyz" in client.take_data()  # on the wire to the proxy, of course
    assert "Secret-xyz" not in repr(client.result)


# -- UDP ASSOCIATE datagrams (RFC 1928 §7: RSV(2) FRAG(1) ATYP(1) DST.ADDR DST.PORT DATA) -------


def test_udp_header_known_answers():
    assert udp_header(bytes([198, 18, 4, 2]), 7007) == bytes.fromhex("00000001c61204021b5f")
    v6 = bytes.fromhex("fd180002" + "0" * 22 + "02")
    assert udp_header(v6, 53) == bytes.fromhex("00000004") + v6 + b"\x00\x35"


def test_parse_udp_datagram_recorded_reply():
    data = b"\x00\x00\x00\x01\xc6\x12\x04\x02\x1b_hello from 198.18.4.1"  # recorded from dante
    d = parse_udp_datagram(data)
    assert (d.frag, d.atyp, d.addr, d.port) == (0, 1, bytes([198, 18, 4, 2]), 7007)
    assert data[d.offset :] == b"hello from 198.18.4.1"
    d = parse_udp_datagram(b"\x00\x00\x02\x03\x07example\x00\x35x")
    assert (d.frag, d.atyp, d.addr, d.port, d.offset) == (2, 3, b"example", 53, 14)
    v6 = parse_udp_datagram(b"\x00\x00\x00\x04" + bytes(16) + b"\x00\x01")
    assert (v6.addr, v6.port, v6.offset) == (bytes(16), 1, 22)


@pytest.mark.parametrize(
    "data",
    [b"", b"\x00\x00\x00", b"\x00\x00\x00\x01\x01\x02\x03\x04\x00", b"\x00\x00\x00\x02abcdef",
     b"\x00\x00\x00\x03", b"\x00\x00\x00\x03\x05abc", b"\x00\x00\x00\x04" + bytes(17)],
)  # fmt: skip
def test_parse_udp_datagram_refuses_malformed(data):
    with pytest.raises(ValueError):
        parse_udp_datagram(data)
