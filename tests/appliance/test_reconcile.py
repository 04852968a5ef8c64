"""The reconciler against a real (started, never run) device: every kind of difference, and
untouched peers untouched: a peer the change does not name keeps its sessions."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from tether import keys
from tether.appliance.reconcile import describe, plan, reconcile
from tether.config import ConfigFile
from tether.config.values import Endpoint
from tether.device import udp
from tether.device.change import DeviceChange, PeerChange

from ..device.support import idle_device

PRIV = "4HOYXaS0mtLH9ZChsPaDQ3W/L7Z/rrchr8CMDqZGgXg="
PRIV2 = "YA0jYI5+nbZwzMZX7i5Mb8Ua0izBH4Z66xUlw1IS62U="
A = "10NguWHSLJ0tUOr4AkbTtOEYHoagq1KH/PJSIJ3SwFs="
B = "vi2iosrlXoDeZT08aXlq4AxXUNKO04NDuEeCw2Z7sD0="
C = "KNgyeJkpX7mIFKuD9BKF2gg5F4dSjffNYEx40sf8BEw="


def conf(peers: str = "", iface: str = "") -> ConfigFile:
    return ConfigFile.parse(
        f"[Interface]\nPrivateKey = {PRIV}\nListenPort = {PORT}\n"
        f"Address = 10.0.0.1/24\n{iface}\n{peers}"
    )


def free_port() -> int:
    sock = udp.bind(0, "127.0.0.1", "::1")
    try:
        return sock.getsockname()[1]
    finally:
        sock.close()


PORT, PORT2 = free_port(), free_port()
PEER_A = f"[Peer]\nPublicKey = {A}\nAllowedIPs = 10.0.0.2/32\n"
PEER_B = f"[Peer]\nPublicKey = {B}\nAllowedIPs = 10.0.0.3/32\nEndpoint = 192.0.2.1:51820\n"


def device():
    return idle_device("trec")


def touched(change: DeviceChange) -> set[bytes]:
    return {p.public_key for p in change.peers}


def names(change: DeviceChange) -> list[str]:
    return [part.split()[0] for part in describe(change)]


def key(b64):
    return keys.decode(b64)


def test_first_apply_sets_everything():
    with device() as dev:
        change = reconcile(dev, None, conf(PEER_A + PEER_B).config)
        assert names(change) == [
            "set_listen_port", "set_private_key", "set_addresses", "set_peer", "set_peer"
        ]  # fmt: skip
        state = dev.snapshot()
        assert set(state.peers) == {key(A), key(B)} and state.listen_port == PORT
        assert state.peers[key(B)].endpoint == ("192.0.2.1", 51820)


def test_no_change_no_ops():
    cfg = conf(PEER_A + PEER_B)
    with device() as dev:
        reconcile(dev, None, cfg.config)
        assert not plan(dev.snapshot(), cfg.config, conf(PEER_A + PEER_B).config)


def test_add_remove_change_peer_leaves_others_alone():
    old = conf(PEER_A + PEER_B)
    with device() as dev:
        reconcile(dev, None, old.config)
        new = conf(PEER_A + f"[Peer]\nPublicKey = {C}\nAllowedIPs = 10.0.0.4/32\n")
        change = reconcile(dev, old.config, new.config)
        assert touched(change) == {key(B), key(C)}  # A is not named: its session survives
        assert [p.remove for p in change.peers] == [True, False]
        assert set(dev.snapshot().peers) == {key(A), key(C)}


def test_each_peer_field_change():
    old = conf(PEER_A)
    for field, extra, allowed in [
        ("allowed_ips", "", "10.0.0.2/32, 10.1.0.0/16"),
        ("persistent_keepalive", "PersistentKeepalive = 25\n", "10.0.0.2/32"),
        ("preshared_key", f"PresharedKey = {PRIV2}\n", "10.0.0.2/32"),
        ("endpoint", "Endpoint = [2001:db8::1]:4500\n", "10.0.0.2/32"),
    ]:
        with device() as dev:
            reconcile(dev, None, old.config)
            new = conf(f"[Peer]\nPublicKey = {A}\nAllowedIPs = {allowed}\n{extra}")
            change = reconcile(dev, old.config, new.config)
            assert names(change) == ["set_peer"]
            (peer,) = change.peers
            set_fields = {
                "allowed_ips": peer.replace_allowed_ips,
                "persistent_keepalive": peer.persistent_keepalive is not None,
                "preshared_key": peer.preshared_key is not None,
                "endpoint": peer.endpoint is not None,
            }
            assert [name for name, on in set_fields.items() if on] == [field]
            assert not plan(dev.snapshot(), new.config, new.config)


def test_exit_section_changes_go_live_alone():
    exit_ = "[Exit]\nAllowDestinations = 192.168.7.0/24\nPeerToPeer = yes\n"
    cfg = conf(PEER_A + exit_)
    with device() as dev:
        assert "set_exit" in names(reconcile(dev, None, cfg.config))
        assert dev.snapshot().exit.peer_to_peer
        assert not plan(dev.snapshot(), cfg.config, conf(PEER_A + exit_).config)
        edited = conf(PEER_A + exit_.replace("yes", "no") + "DenyDestinations = 192.168.7.9\n")
        change = reconcile(dev, cfg.config, edited.config)
        assert names(change) == ["set_exit"] and not change.peers
        exit_now = dev.snapshot().exit
        assert not exit_now.peer_to_peer and len(exit_now.deny_destinations) == 1
        gone = reconcile(dev, edited.config, conf(PEER_A).config)  # section removed: defaults
        assert names(gone) == ["set_exit"] and dev.snapshot().exit.is_default


def test_peer_egress_goes_live_alone_and_the_password_is_not_described():
    proxied = PEER_A + "Egress = socks5://u:pw-secret@192.0.2.9:1080\n"
    with device() as dev:
        change = reconcile(dev, None, conf(proxied + PEER_B).config)
        assert "set_peer_egress" in names(change)
        assert "pw-secret" not in " ".join(describe(change))
        assert dict(dev.snapshot().peer_egress) == {key(A): conf(proxied).config.peers[0].egress}
        same = conf(proxied + PEER_B).config
        assert not plan(dev.snapshot(), same, conf(proxied + PEER_B).config)
        direct = conf(PEER_A + "Egress = direct\n" + PEER_B).config
        change = reconcile(dev, same, direct)
        assert names(change) == ["set_peer_egress"] and not change.peers
        assert dev.snapshot().peer_egress[key(A)].is_direct
        change = reconcile(dev, direct, conf(PEER_A + PEER_B).config)  # removed: the default
        assert names(change) == ["set_peer_egress"] and not dev.snapshot().peer_egress


def test_interface_changes():
    old = conf(PEER_A)
    with device() as dev:
        reconcile(dev, None, old.config)
        new = ConfigFile.parse(
            f"[Interface]\nPrivateKey = {PRIV2}\nListenPort = {PORT2}\nMTU = 1280\n"
            f"Address = 10.0.0.1/24, fd00::1/64\n\n{PEER_A}"
        )
        change = reconcile(dev, old.config, new.config)
        assert names(change) == ["set_listen_port", "set_private_key", "set_mtu", "set_addresses"]
        state = dev.snapshot()
        assert state.listen_port == PORT2 and state.mtu == 1280
        assert state.private_key == key(PRIV2) and len(state.addresses) == 2


def test_listen_port_zero_keeps_the_port_it_has():
    """`ListenPort = 0` is "any port": an edit of something else must not move the device to a
    new random port (every client would lose it); changing to 0 from a real port does."""
    any_port = ConfigFile.parse(f"[Interface]\nPrivateKey = {PRIV}\nListenPort = 0\n\n{PEER_A}")
    with device() as dev:
        reconcile(dev, None, any_port.config)
        port = dev.snapshot().listen_port
        edited = ConfigFile.parse(
            f"[Interface]\nPrivateKey = {PRIV}\nListenPort = 0\n\n{PEER_A}{PEER_B}"
        )
        change = reconcile(dev, any_port.config, edited.config)
        assert names(change) == ["set_peer"] and dev.snapshot().listen_port == port
        fixed = conf(PEER_A)
        reconcile(dev, edited.config, fixed.config)
        assert dev.snapshot().listen_port == PORT
        change = reconcile(dev, fixed.config, any_port.config)
        assert "set_listen_port" in names(change)
        assert dev.snapshot().listen_port not in (0, PORT)


def test_roamed_endpoint_is_not_reset_by_unrelated_edits():
    old = conf(PEER_B)
    with device() as dev:
        reconcile(dev, None, old.config)
        roamed = PeerChange(key(B), endpoint=Endpoint("198.51.100.9", 33333))  # the phone roamed
        dev.apply(DeviceChange(peers=(roamed,)))
        new = conf(PEER_B + PEER_A)
        reconcile(dev, old.config, new.config)
        assert dev.snapshot().peers[key(B)].endpoint == ("198.51.100.9", 33333)
        # but an edit of that endpoint in the file is applied
        newer = conf(PEER_B.replace("192.0.2.1", "192.0.2.7") + PEER_A)
        reconcile(dev, new.config, newer.config)
        assert dev.snapshot().peers[key(B)].endpoint == ("192.0.2.7", 51820)


def test_runtime_only_peer_is_removed_and_own_key_ignored():
    old = conf(PEER_A)
    with device() as dev:
        reconcile(dev, None, old.config)
        own = PeerChange(key(keys.pubkey(PRIV)), allowed_ips=(ipaddress.ip_network("10.0.0.9/32"),))
        dev.apply(DeviceChange(peers=(PeerChange(key(C)), own)))  # `wg set`; own key ignored
        assert set(dev.snapshot().peers) == {key(A), key(C)}
        change = reconcile(dev, old.config, old.config)
        assert touched(change) == {key(C)}
        assert set(dev.snapshot().peers) == {key(A)}


peers_st = st.lists(
    st.tuples(
        st.sampled_from([A, B, C]), st.integers(2, 250), st.sampled_from([0, 25]), st.booleans()
    ),
    # one owner per key and per address: a real device gives a prefix to one peer only
    unique_by=(lambda t: t[0], lambda t: t[1]),
    max_size=3,
)


def render(peers) -> ConfigFile:
    text = ""
    for pub, host, ka, ep in peers:
        text += f"[Peer]\nPublicKey = {pub}\nAllowedIPs = 10.0.0.{host}/32\n"
        if ka:
            text += f"PersistentKeepalive = {ka}\n"
        if ep:
            text += f"Endpoint = 192.0.2.{host}:51820\n"
    return conf(text)


@settings(max_examples=200, deadline=None)
@given(st.lists(peers_st, min_size=1, max_size=6))
def test_any_sequence_of_files_converges_and_touches_only_changed_peers(files):
    with device() as dev:
        last = None
        for peers in files:
            cfg = render(peers)
            before = {
                k: (v.preshared_key, v.persistent_keepalive, list(v.allowed_ips))
                for k, v in dev.snapshot().peers.items()
            }
            change = reconcile(dev, last, cfg.config)
            want = {p.public_key: p for p in cfg.config.peers}
            state = dev.snapshot()
            assert set(state.peers) == set(want)
            for k, p in want.items():
                s = state.peers[k]
                assert (s.preshared_key, s.persistent_keepalive, list(s.allowed_ips)) == (
                    p.preshared_key,
                    p.persistent_keepalive,
                    p.allowed_ips,
                )
                if p.endpoint is not None:
                    assert s.endpoint == (p.endpoint.host, p.endpoint.port)
            for k in want:
                unchanged = (
                    k in before
                    and before[k]
                    == (want[k].preshared_key, want[k].persistent_keepalive, want[k].allowed_ips)
                    and (
                        last is not None
                        and last.peer(k) is not None
                        and last.peer(k).endpoint == want[k].endpoint
                    )
                )
                if unchanged:
                    assert k not in touched(change)
            assert not plan(state, cfg.config, cfg.config)
            last = cfg.config
