"""The UAPI adapter: every `wg set` form becomes one DeviceChange for the device's single entry
point (`Device.apply`), with wg's meaning; a `get` is read from the device's snapshot.

Requests are written as wireguard-tools writes them and parsed by our codec, so each test covers
codec → adapter → device. The effects are checked on a real device (bound on loopback, on a loop
that is never run: nothing here needs it)."""

from __future__ import annotations

import ipaddress

import pytest

from tether import keys
from tether.config.values import Endpoint
from tether.device import udp
from tether.device.change import ZERO_KEY, DeviceChange, PeerChange
from tether.device.state import PeerState, RunningState
from tether.device.uapi.adapter import change_from_request, snapshot_for_get, uapi_get, uapi_set
from tether.device.uapi.protocol import EADDRINUSE, UapiError, parse_request
from tether.device.uapi.protocol import Endpoint as UapiEndpoint

from .support import idle_device

net = ipaddress.ip_network
PRIV = keys.generate_private()
K1 = keys.public_from_private(keys.generate_private())
K2 = keys.public_from_private(keys.generate_private())
PSK = bytes(range(1, 33))


def request(*lines: str):
    return parse_request("set=1\n" + "".join(f"{line}\n" for line in lines) + "\n")


def peer_lines(key: bytes, *lines: str) -> list[str]:
    return [f"public_key={key.hex()}", *lines]


# --- the mapping, form by form ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        pytest.param(peer_lines(K1, "remove=true"), PeerChange(K1, remove=True), id="remove"),
        pytest.param(
            peer_lines(K1, "update_only=true", "persistent_keepalive_interval=25"),
            PeerChange(K1, update_only=True, persistent_keepalive=25),
            id="update_only",
        ),
        pytest.param(
            peer_lines(K1, "allowed_ip=10.0.0.0/8", "allowed_ip=fd00::/64"),
            PeerChange(K1, allowed_ips=(net("10.0.0.0/8"), net("fd00::/64"))),
            id="allowed-ip add",
        ),
        pytest.param(
            peer_lines(K1, "allowed_ip=-10.0.0.0/8", "allowed_ip=10.9.0.0/16"),
            PeerChange(
                K1, allowed_ips=(net("10.9.0.0/16"),), remove_allowed_ips=(net("10.0.0.0/8"),)
            ),
            id="allowed-ip remove",
        ),
        pytest.param(
            peer_lines(K1, "replace_allowed_ips=true", "allowed_ip=10.0.0.2/32"),
            PeerChange(K1, replace_allowed_ips=True, allowed_ips=(net("10.0.0.2/32"),)),
            id="allowed-ips replace",
        ),
        pytest.param(
            peer_lines(K1, "replace_allowed_ips=true"),
            PeerChange(K1, replace_allowed_ips=True),
            id="allowed-ips emptied",
        ),
        pytest.param(
            peer_lines(K1, "endpoint=192.0.2.7:51820"),
            PeerChange(K1, endpoint=Endpoint("192.0.2.7", 51820)),
            id="endpoint v4",
        ),
        pytest.param(
            peer_lines(K1, "endpoint=[fd00::7]:4500"),
            PeerChange(K1, endpoint=Endpoint("fd00::7", 4500)),
            id="endpoint v6",
        ),
        pytest.param(
            peer_lines(K1, "persistent_keepalive_interval=0"),
            PeerChange(K1, persistent_keepalive=0),
            id="keepalive off",
        ),
        pytest.param(
            peer_lines(K1, f"preshared_key={PSK.hex()}"),
            PeerChange(K1, preshared_key=PSK),
            id="psk",
        ),
        pytest.param(
            peer_lines(K1, f"preshared_key={'00' * 32}"),
            PeerChange(K1, preshared_key=ZERO_KEY),
            id="psk zeroed",
        ),
    ],
)
def test_each_peer_form_maps_to_one_peer_change(lines, expected):
    assert change_from_request(request(*lines)) == DeviceChange(peers=(expected,))


def test_device_fields_and_replace_peers():
    change = change_from_request(
        request(
            f"private_key={'00' * 32}",
            "listen_port=4000",
            "fwmark=16",
            "replace_peers=true",
            *peer_lines(K1, "allowed_ip=10.0.0.2/32"),
        )  # fmt: skip
    )
    # fwmark has no effect on a userspace device, so it is not part of the change
    assert change == DeviceChange(
        private_key=ZERO_KEY,
        listen_port=4000,
        replace_peers=True,
        peers=(PeerChange(K1, allowed_ips=(net("10.0.0.2/32"),)),),
    )
    assert not change_from_request(request("fwmark=0"))  # nothing to do


# --- the effect on a real device ------------------------------------------------------------------


@pytest.fixture
def device():
    with idle_device("tadapt", private_key=PRIV) as dev:
        yield dev


def wg_set(device, *lines: str) -> None:
    uapi_set(device, request(*lines))


def test_peer_settings_and_their_zeroing(device):
    wg_set(
        device,
        *peer_lines(
            K1, f"preshared_key={PSK.hex()}", "endpoint=[fd00::7]:4500",
            "persistent_keepalive_interval=25", "replace_allowed_ips=true",
            "allowed_ip=10.0.0.2/32", "allowed_ip=10.1.0.0/16",
        ),
    )  # fmt: skip
    peer = device.snapshot().peers[K1]
    assert peer.preshared_key == PSK and peer.endpoint == ("fd00::7", 4500)
    assert peer.persistent_keepalive == 25
    assert list(peer.allowed_ips) == [net("10.0.0.2/32"), net("10.1.0.0/16")]
    wg_set(
        device,
        *peer_lines(
            K1, f"preshared_key={'00' * 32}", "persistent_keepalive_interval=0",
            "allowed_ip=-10.1.0.0/16", "allowed_ip=10.2.0.0/16",
        ),
    )  # fmt: skip
    peer = device.snapshot().peers[K1]
    assert peer.preshared_key is None and peer.persistent_keepalive == 0
    assert list(peer.allowed_ips) == [net("10.0.0.2/32"), net("10.2.0.0/16")]
    assert peer.endpoint == ("fd00::7", 4500)  # not named: unchanged
    wg_set(device, *peer_lines(K1, "replace_allowed_ips=true", "allowed_ip=10.3.0.0/16"))
    assert list(device.snapshot().peers[K1].allowed_ips) == [net("10.3.0.0/16")]


def test_update_only_remove_and_replace_peers(device):
    wg_set(device, *peer_lines(K1, "update_only=true", "allowed_ip=10.0.0.2/32"))
    assert device.snapshot().peers == {}  # update_only: no such peer, nothing made
    wg_set(device, *peer_lines(K1, "allowed_ip=10.0.0.2/32"))
    wg_set(device, *peer_lines(K1, "update_only=true", "persistent_keepalive_interval=7"))
    assert device.snapshot().peers[K1].persistent_keepalive == 7
    wg_set(device, *peer_lines(K2, "allowed_ip=10.0.0.3/32"))
    wg_set(device, *peer_lines(K1, "remove=true"))
    assert list(device.snapshot().peers) == [K2]
    wg_set(device, "replace_peers=true", *peer_lines(K1, "allowed_ip=10.0.0.4/32"))
    assert list(device.snapshot().peers) == [K1]
    wg_set(device, "replace_peers=true")
    assert device.snapshot().peers == {}


def test_own_key_is_ignored_and_private_key_zeroing(device):
    own = keys.public_from_private(PRIV)
    wg_set(device, *peer_lines(own, "allowed_ip=10.0.0.9/32"), *peer_lines(K1))
    assert list(device.snapshot().peers) == [K1]
    assert device.snapshot().private_key == PRIV and device.public_key == own
    wg_set(device, f"private_key={'00' * 32}")
    assert device.snapshot().private_key is None and device.public_key is None
    assert list(device.snapshot().peers) == [K1]  # peers stay; only their sessions go
    wg_set(device, f"private_key={PRIV.hex()}")
    assert device.snapshot().private_key == PRIV


def test_listen_port_in_use_refuses_the_whole_request(device):
    busy = udp.bind(0, "127.0.0.1", "::1")  # where the device would bind it
    try:
        port = busy.getsockname()[1]
        wg_set(device, *peer_lines(K1, "allowed_ip=10.0.0.2/32"))
        before = device.snapshot()
        with pytest.raises(UapiError) as caught:
            wg_set(
                device, f"listen_port={port}", f"private_key={'00' * 32}", "replace_peers=true",
                *peer_lines(K2, "allowed_ip=10.0.0.3/32"),
            )  # fmt: skip
        assert caught.value.errno == EADDRINUSE
        assert device.snapshot() == before  # nothing changed, the old socket still serves
        assert device.listen_port == before.listen_port != port
    finally:
        busy.close()
    wg_set(device, f"listen_port={port}")  # free now
    assert device.listen_port == port


# --- get -----------------------------------------------------------------------------------------


def test_get_is_read_from_the_snapshot(device):
    wg_set(
        device,
        *peer_lines(K1, f"preshared_key={PSK.hex()}", "endpoint=192.0.2.7:51820",
                    "allowed_ip=10.0.0.2/32"),
        *peer_lines(K2, "persistent_keepalive_interval=25"),
    )  # fmt: skip
    got = uapi_get(device)
    assert got.private_key == PRIV and got.listen_port == device.listen_port
    p1, p2 = got.peers
    assert (p1.public_key, p1.preshared_key, p1.allowed_ips) == (K1, PSK, [net("10.0.0.2/32")])
    assert p1.endpoint == UapiEndpoint(ipaddress.ip_address("192.0.2.7"), 51820)
    assert (p2.public_key, p2.endpoint, p2.persistent_keepalive_interval) == (K2, None, 25)
    assert p1.last_handshake_time_sec == p1.last_handshake_time_nsec == 0  # never


def test_get_handshake_time_and_zoned_endpoint():
    state = RunningState(
        PRIV,
        51820,
        1420,
        (),
        {K1: PeerState(None, 0, (), ("fe80::1%lo", 7), 10, 20, 1_700_000_000.25)},
    )
    (peer,) = snapshot_for_get(state).peers
    assert (peer.last_handshake_time_sec, peer.last_handshake_time_nsec) == (
        1_700_000_000,
        250_000_000,
    )
    assert peer.endpoint == UapiEndpoint(ipaddress.ip_address("fe80::1"), 7)
    assert (peer.rx_bytes, peer.tx_bytes) == (10, 20)
