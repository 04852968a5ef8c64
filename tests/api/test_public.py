"""Public endpoint detection from the kernel's tables (fake /proc files), and validation."""

from __future__ import annotations

import pytest

from tether.api.peers import public

ROUTE = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth9\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
eth9\t00000000\t010200C0\t0003\t0\t0\t200\t00000000\t0\t0\t0
lo\t00000000\t00000000\t0003\t0\t0\t100\t00000000\t0\t0\t0
"""
IPV6_ROUTE = (
    "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
    "fd000000000000000000000000000001 00000400 00000002 00000000 00000003     eth9\n"
    "00000000000000000000000000000000 00 00000000000000000000000000000000 00 "
    "00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n"
)
IF_INET6 = (
    "fe8000000000000000fc00fffe000001 04 40 20 80     eth9\n"
    "fd000000000000000000000000000002 04 40 00 80     eth9\n"
    "20010db8000000000000000000000099 04 40 00 01     eth9\n"  # temporary: skipped
    "20010db8000000000000000000000007 04 40 00 80     eth9\n"
    "00000000000000000000000000000001 01 80 10 80       lo\n"
)


@pytest.fixture
def proc(tmp_path):
    (tmp_path / "net").mkdir()
    (tmp_path / "net/route").write_text(ROUTE)
    (tmp_path / "net/ipv6_route").write_text(IPV6_ROUTE)
    (tmp_path / "net/if_inet6").write_text(IF_INET6)
    return tmp_path


def test_default_route_interfaces(proc):
    # the lowest-metric default route wins (lo, metric 100, in this fake table)
    assert public._default_v4_interface(str(proc)) == "lo"
    assert public._default_v6_interface(str(proc)) == "eth9"  # lo's reject route is skipped
    assert public._ipv6_of("eth9", str(proc)) == "2001:db8::7"  # global before ULA


def test_detect_uses_the_interface_address(proc):
    v4, v6 = public.detect(str(proc))
    assert v4 == "127.0.0.1"  # lo's address, read with an ioctl (nothing is sent)
    assert v6 == "2001:db8::7"


def test_no_default_route(tmp_path):
    assert public.detect(str(tmp_path)) == (None, None)


def test_resolve_prefers_what_the_operator_named(proc):
    got = public.resolve("203.0.113.9", None, "vpn.example.org.", proc=str(proc))
    assert (got.ipv4, got.ipv6, got.domain) == ("203.0.113.9", "2001:db8::7", "vpn.example.org")
    got = public.resolve(None, "2001:DB8:0::5", None, auto=False)
    assert (got.ipv4, got.ipv6) == (None, "2001:db8::5")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("2001:db8::1", None, None), "not an IPv4"),
        ((None, "192.0.2.1", None), "not an IPv6"),
        (("300.1.1.1", None, None), "does not appear"),
        ((None, None, "bad_name!"), "not a valid domain"),
        ((None, None, "1.2.3.4"), "not a valid domain"),
    ],
)
def test_resolve_validates(args, message):
    with pytest.raises(ValueError, match=message):
        public.resolve(*args, auto=False)
