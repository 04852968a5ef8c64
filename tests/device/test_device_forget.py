"""Every way a peer loses addresses ends its exit flows at once (issue 9, item 3): the file
(reconciler → `Device.apply`), `wg set ... remove`, `replace_peers` and allowed-ips over UAPI
(the UAPI adapter → `Device.apply`), a prefix taken over by another peer, and a private key
change that removes the peer with our own key. The core reports who lost addresses
(`take_routes_lost`); the device tells the inside in one place (`_collect`)."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket

import pytest

from tether import keys
from tether.appliance.reconcile import reconcile
from tether.config import ConfigFile
from tether.device.change import DeviceChange
from tether.device.device import Device
from tether.device.exit import ExitShell
from tether.device.uapi.adapter import uapi_set
from tether.device.uapi.protocol import AllowedIPChange, PeerOp, SetRequest
from tether.netstack.wire import build_segment, build_udp_packet

from ..netstack.support import ip_packet
from .support import QuietInside, idle_device, remove_peer, set_peer

net = ipaddress.ip_network
PRIV = keys.decode("4HOYXaS0mtLH9ZChsPaDQ3W/L7Z/rrchr8CMDqZGgXg=")
A = keys.decode("10NguWHSLJ0tUOr4AkbTtOEYHoagq1KH/PJSIJ3SwFs=")
B = keys.decode("vi2iosrlXoDeZT08aXlq4AxXUNKO04NDuEeCw2Z7sD0=")
A4, A4b, B4 = bytes([10, 0, 0, 2]), bytes([10, 0, 0, 5]), bytes([10, 0, 0, 3])


class Recorder(QuietInside):
    """An inside that records what the device asks it to forget."""

    def __init__(self, context) -> None:
        super().__init__(context)
        self.forgotten: list[tuple[bytes, object]] = []

    def forget_peer(self, peer_key, now, keep=None):
        self.forgotten.append((peer_key, keep))

    def take(self) -> dict:
        out = dict(self.forgotten)
        self.forgotten.clear()
        return out


@pytest.fixture
def device():
    """A started device (on loopback, its loop never run) with a Recorder inside, A and B."""
    with idle_device("tforget", private_key=PRIV, inside_factory=Recorder) as dev:
        rec = dev.inside
        set_peer(dev, A, allowed_ips=[net("10.0.0.2/32"), net("10.0.0.5/32")])
        set_peer(dev, B, allowed_ips=[net("10.0.0.3/32")])
        assert rec.take() == {}
        yield dev, rec


def test_remove_peer(device):
    dev, rec = device
    remove_peer(dev, A)
    assert rec.take() == {A: None}  # None: every flow of A goes


def test_allowed_ips_changed_keeps_the_addresses_still_routed(device):
    dev, rec = device
    set_peer(dev, A, allowed_ips=[net("10.0.0.2/32")])
    keep = rec.take()[A]
    assert keep(A4) and not keep(A4b) and not keep(B4)
    set_peer(dev, A, allowed_ips=[net("10.0.0.2/32"), net("10.0.0.7/32")])  # only gains
    assert rec.take() == {}


def test_a_prefix_taken_over_by_another_peer(device):
    dev, rec = device
    set_peer(dev, B, allowed_ips=[net("10.0.0.3/32"), net("10.0.0.5/32")])
    keep = rec.take()[A]
    assert keep(A4) and not keep(A4b)
    set_peer(dev, B, allowed_ips=[net("10.0.0.0/24")])  # covers A's host routes: A keeps them
    assert A not in rec.take()


def test_uapi_remove_replace_peers_and_allowed_ips(device):
    dev, rec = device
    uapi_set(dev, SetRequest(peers=[PeerOp(A, remove=True)]))
    assert rec.take() == {A: None}
    uapi_set(
        dev,
        SetRequest(
            peers=[
                PeerOp(
                    B, replace_allowed_ips=True, allowed_ips=[AllowedIPChange(net("10.0.0.9/32"))]
                )
            ]
        ),
    )
    assert not rec.take()[B](B4)
    uapi_set(dev, SetRequest(replace_peers=True))
    assert rec.take() == {B: None}


def test_uapi_removal_of_one_allowed_ip(device):
    dev, rec = device
    uapi_set(
        dev, SetRequest(peers=[PeerOp(A, allowed_ips=[AllowedIPChange(net("10.0.0.5/32"), True)])])
    )
    keep = rec.take()[A]
    assert keep(A4) and not keep(A4b)


def test_the_file_path_through_the_reconciler(device):
    dev, rec = device
    key = keys.encode
    old = ConfigFile.parse(
        f"[Interface]\nPrivateKey = {key(PRIV)}\n\n[Peer]\nPublicKey = {key(A)}\n"
        f"AllowedIPs = 10.0.0.2/32, 10.0.0.5/32\n\n[Peer]\nPublicKey = {key(B)}\n"
        "AllowedIPs = 10.0.0.3/32\n"
    ).config
    # A is removed and B takes A's old address, in one edit.
    new = ConfigFile.parse(
        f"[Interface]\nPrivateKey = {key(PRIV)}\n\n[Peer]\nPublicKey = {key(B)}\n"
        "AllowedIPs = 10.0.0.3/32, 10.0.0.2/32\n"
    ).config
    reconcile(dev, old, new)
    assert rec.take() == {A: None}


def test_private_key_change_removes_the_peer_with_our_new_key(device):
    dev, rec = device
    a_priv = keys.generate_private()
    set_peer(dev, keys.public_from_private(a_priv), allowed_ips=[net("10.0.0.8/32")])
    dev.apply(DeviceChange(private_key=a_priv))
    assert rec.take() == {keys.public_from_private(a_priv): None}


def test_real_exit_sockets_are_closed_on_removal():
    """The exit shell on a device: the removed peer's host sockets close, the other's stay."""

    async def main():
        loop = asyncio.get_running_loop()
        server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        server.bind(("127.0.0.1", 0))
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port, tport = server.getsockname()[1], listener.getsockname()[1]
        dev = Device(
            "tforget1",
            private_key=PRIV,
            addresses=[ipaddress.ip_interface("10.0.0.1/24")],
            inside_factory=functools.partial(ExitShell, allow_local=True),
            bind_host4="127.0.0.1",
            bind_host6="::1",
        )
        dev.start(loop, 0)
        try:
            set_peer(dev, A, allowed_ips=[net("10.0.0.2/32")])
            set_peer(dev, B, allowed_ips=[net("10.0.0.3/32")])
            lo = bytes([127, 0, 0, 1])
            now = loop.time()
            for key, src in ((A, A4), (B, B4)):
                syn = build_segment(src, lo, 5000, tport, 1, 0, 0x02, 65535)
                dev.inside.receive_packets(
                    [
                        (key, build_udp_packet(src, lo, 4000, port, b"x")),
                        (key, ip_packet(src, lo, 6, syn)),
                    ],
                    now,
                )
            await asyncio.sleep(0.2)
            live = {f.peer.key for f in dev.inside._live}
            assert live == {A, B} and len(dev.inside._live) == 4
            remove_peer(dev, A)
            assert {f.peer.key for f in dev.inside._live} == {B}
            assert dev.inside.exit.counters()["flows_forgotten"] == 2
        finally:
            dev.close()
            server.close()
            listener.close()

    asyncio.run(asyncio.wait_for(main(), 30))
