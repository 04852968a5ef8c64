"""One edit of a 10,000-peer file costs what the edit touched (issue 15, fleet latency): the
reconciler's change path must not read every peer of the device. Counted, not timed: calls
into the allowed-IPs table (`entries_for_peer`, once per peer a snapshot reports) and peer
status values built, for one added peer; then the same plan as the full comparison, and the
full comparison again once someone else (`wg set`) changed the device."""

from __future__ import annotations

import hashlib
import ipaddress

import pytest

from tether.appliance.reconcile import plan, reconcile, touched_peers
from tether.config.model import DeviceConfig, Interface, Peer
from tether.device.change import DeviceChange, PeerChange
from tether.wireguard import peer as peer_module
from tether.wireguard.allowedips import AllowedIPs

from .test_reconcile import PRIV, device, key

N = 10_000


def fake_key(i: int) -> bytes:
    return hashlib.sha256(f"scale-{i}".encode()).digest()


def a_peer(i: int) -> Peer:
    n = i + 2
    return Peer(
        public_key=fake_key(i), allowed_ips=[ipaddress.ip_network(f"10.9.{n // 256}.{n % 256}/32")]
    )


@pytest.fixture(scope="module")
def big():
    """A device running a 10,000-peer configuration, and that configuration."""
    iface = Interface(
        private_key=key(PRIV), addresses=[ipaddress.ip_interface("10.9.0.1/16")], listen_port=0
    )
    config = DeviceConfig(iface, [a_peer(i) for i in range(N)])
    with device() as dev:
        reconcile(dev, None, config)
        yield dev, config


class Counted:
    """Counts calls of a method (the real one still runs)."""

    def __init__(self, monkeypatch, owner, name):
        self.calls = 0
        real = getattr(owner, name)

        def counted(*args, **kwargs):
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)


def test_one_added_peer_reads_one_peer_of_the_device(big, monkeypatch):
    dev, last = big
    since = dev.generation
    new = last.frozen()
    new.peers.append(a_peer(N))
    entries = Counted(monkeypatch, AllowedIPs, "entries_for_peer")
    status = Counted(monkeypatch, peer_module.Peer, "status")
    change = reconcile(dev, last, new, since=since)
    assert [p.public_key for p in change.peers] == [fake_key(N)]
    assert entries.calls <= 2 and status.calls <= 1  # O(change), not 10,000
    assert fake_key(N) in dev.snapshot(peers=[fake_key(N)]).peers
    # undo, by the same short path (a removal touches one peer too)
    since = dev.generation
    change = reconcile(dev, new, last, since=since)
    assert change.peers == (PeerChange(fake_key(N), remove=True),)
    assert entries.calls <= 4 and status.calls <= 2


def test_short_plan_equals_the_full_plan(big):
    dev, last = big
    new = last.frozen()
    new.peers[5] = Peer(public_key=fake_key(5), allowed_ips=[ipaddress.ip_network("10.9.200.1/32")])
    del new.peers[7]
    new.peers.append(a_peer(N + 1))
    touched = touched_peers(last, new)
    assert touched == {fake_key(5), fake_key(7), fake_key(N + 1)}
    short = plan(dev.snapshot(peers=touched), last, new, touched)
    full = plan(dev.snapshot(), last, new)
    assert sorted(short.peers, key=lambda p: p.public_key) == sorted(
        full.peers, key=lambda p: p.public_key
    )
    assert short.peer_egress == full.peer_egress is None


def test_a_wg_set_since_the_last_apply_means_the_whole_device_is_compared(big):
    dev, last = big
    since = dev.generation
    other = ipaddress.ip_network("10.9.250.1/32")
    dev.apply(DeviceChange(peers=(PeerChange(fake_key(3), allowed_ips=(other,)),)))  # wg set
    change = reconcile(dev, last, last.frozen(), since=since)  # an edit touching no peer
    assert [p.public_key for p in change.peers] == [fake_key(3)]  # put back as the file says
    assert list(dev.snapshot(peers=[fake_key(3)]).peers[fake_key(3)].allowed_ips) == [
        a_peer(3).allowed_ips[0]
    ]
