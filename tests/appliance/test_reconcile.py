"""The reconciler against a fake device: every kind of difference, and untouched peers untouched."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tether.appliance.reconcile import plan, reconcile
from tether.config import ConfigFile
from tether.device.state import PeerState, RunningState

PRIV = "4HOYXaS0mtLH9ZChsPaDQ3W/L7Z/rrchr8CMDqZGgXg="
PRIV2 = "YA0jYI5+nbZwzMZX7i5Mb8Ua0izBH4Z66xUlw1IS62U="
A = "10NguWHSLJ0tUOr4AkbTtOEYHoagq1KH/PJSIJ3SwFs="
B = "vi2iosrlXoDeZT08aXlq4AxXUNKO04NDuEeCw2Z7sD0="
C = "KNgyeJkpX7mIFKuD9BKF2gg5F4dSjffNYEx40sf8BEw="


def conf(peers: str = "", iface: str = "") -> ConfigFile:
    return ConfigFile.parse(
        f"[Interface]\nPrivateKey = {PRIV}\nListenPort = 51820\n"
        f"Address = 10.0.0.1/24\n{iface}\n{peers}"
    )


PEER_A = f"[Peer]\nPublicKey = {A}\nAllowedIPs = 10.0.0.2/32\n"
PEER_B = f"[Peer]\nPublicKey = {B}\nAllowedIPs = 10.0.0.3/32\nEndpoint = 192.0.2.1:51820\n"


class FakeDevice:
    """Keeps state like a device would and records which peers were touched."""

    def __init__(self):
        self.state = RunningState(None, 0, 1420, [])
        self.touched: list[tuple[str, bytes | None]] = []
        self.sessions: dict[bytes, int] = {}  # a session id that survives only if untouched

    def running_state(self):
        return self.state

    def set_private_key(self, key):
        self.state.private_key = key
        self.sessions.clear()
        self.touched.append(("key", None))

    def set_listen_port(self, port):
        self.state.listen_port = port
        self.touched.append(("port", None))

    def set_mtu(self, mtu):
        self.state.mtu = mtu
        self.touched.append(("mtu", None))

    def set_addresses(self, addresses):
        self.state.addresses = addresses
        self.touched.append(("addresses", None))

    def set_exit(self, settings):
        self.state.exit = settings
        self.touched.append(("exit", None))

    def set_peer(self, key, **changes):
        peer = self.state.peers.get(key) or PeerState(None, 0, [])
        for name, value in changes.items():
            if name == "endpoint":
                value = (value.host, value.port) if value else None
            setattr(peer, name, value)
        self.state.peers[key] = peer
        self.sessions.pop(key, None)
        self.touched.append(("peer", key))

    def remove_peer(self, key):
        del self.state.peers[key]
        self.sessions.pop(key, None)
        self.touched.append(("remove", key))


def bring_up(cfg: ConfigFile) -> FakeDevice:
    dev = FakeDevice()
    reconcile(dev, None, cfg.config)
    for key in dev.state.peers:
        dev.sessions[key] = 1
    dev.touched.clear()
    return dev


def key(b64):
    from tether import keys

    return keys.decode(b64)


def test_first_apply_sets_everything():
    dev = FakeDevice()
    ops = reconcile(dev, None, conf(PEER_A + PEER_B).config)
    names = [op.name for op in ops]
    assert names == ["set_listen_port", "set_private_key", "set_addresses", "set_peer", "set_peer"]
    assert set(dev.state.peers) == {key(A), key(B)}
    assert dev.state.peers[key(B)].endpoint == ("192.0.2.1", 51820)


def test_no_change_no_ops():
    cfg = conf(PEER_A + PEER_B)
    dev = bring_up(cfg)
    assert plan(dev.state, cfg.config, conf(PEER_A + PEER_B).config) == []


def test_add_remove_change_peer_leaves_others_alone():
    old = conf(PEER_A + PEER_B)
    dev = bring_up(old)
    new = conf(PEER_A + f"[Peer]\nPublicKey = {C}\nAllowedIPs = 10.0.0.4/32\n")
    reconcile(dev, old.config, new.config)
    assert ("remove", key(B)) in dev.touched and ("peer", key(C)) in dev.touched
    assert all(k != key(A) for _, k in dev.touched)
    assert dev.sessions == {key(A): 1}  # A's session survived


def test_each_peer_field_change():
    old = conf(PEER_A)
    base = dict(allowed="10.0.0.2/32", extra="")
    for field, extra, allowed in [
        ("allowed_ips", "", "10.0.0.2/32, 10.1.0.0/16"),
        ("persistent_keepalive", "PersistentKeepalive = 25\n", base["allowed"]),
        ("preshared_key", f"PresharedKey = {PRIV2}\n", base["allowed"]),
        ("endpoint", "Endpoint = [2001:db8::1]:4500\n", base["allowed"]),
    ]:
        dev = bring_up(old)
        new = conf(f"[Peer]\nPublicKey = {A}\nAllowedIPs = {allowed}\n{extra}")
        ops = reconcile(dev, old.config, new.config)
        assert len(ops) == 1 and ops[0].name == "set_peer"
        assert [name for name, _ in ops[0].changes] == [field]


def test_exit_section_changes_go_live_alone():
    exit_ = "[Exit]\nAllowDestinations = 192.168.7.0/24\nPeerToPeer = yes\n"
    cfg = conf(PEER_A + exit_)
    dev = FakeDevice()
    assert "set_exit" in [op.name for op in reconcile(dev, None, cfg.config)]
    assert dev.state.exit.peer_to_peer
    dev.touched.clear()
    assert plan(dev.state, cfg.config, conf(PEER_A + exit_).config) == []
    edited = conf(PEER_A + exit_.replace("yes", "no") + "DenyDestinations = 192.168.7.9\n")
    ops = reconcile(dev, cfg.config, edited.config)
    assert [op.name for op in ops] == ["set_exit"] and dev.touched == [("exit", None)]
    assert not dev.state.exit.peer_to_peer and len(dev.state.exit.deny_destinations) == 1
    gone = reconcile(dev, edited.config, conf(PEER_A).config)  # section removed: defaults
    assert [op.name for op in gone] == ["set_exit"] and dev.state.exit.is_default


def test_interface_changes():
    old = conf(PEER_A)
    dev = bring_up(old)
    new = ConfigFile.parse(
        f"[Interface]\nPrivateKey = {PRIV2}\nListenPort = 4000\nMTU = 1280\n"
        f"Address = 10.0.0.1/24, fd00::1/64\n\n{PEER_A}"
    )
    names = [op.name for op in reconcile(dev, old.config, new.config)]
    assert names == ["set_listen_port", "set_private_key", "set_mtu", "set_addresses"]
    assert dev.state.listen_port == 4000 and dev.state.mtu == 1280


def test_roamed_endpoint_is_not_reset_by_unrelated_edits():
    old = conf(PEER_B)
    dev = bring_up(old)
    dev.state.peers[key(B)].endpoint = ("198.51.100.9", 33333)  # the phone roamed
    new = conf(PEER_B + PEER_A)
    reconcile(dev, old.config, new.config)
    assert dev.state.peers[key(B)].endpoint == ("198.51.100.9", 33333)
    # but an edit of that endpoint in the file is applied
    newer = conf(PEER_B.replace("192.0.2.1", "192.0.2.7") + PEER_A)
    reconcile(dev, new.config, newer.config)
    assert dev.state.peers[key(B)].endpoint == ("192.0.2.7", 51820)


def test_runtime_only_peer_is_removed_and_own_key_ignored():
    old = conf(PEER_A)
    dev = bring_up(old)
    dev.state.peers[key(C)] = PeerState(None, 0, [])  # added with `wg set`, not in the file
    reconcile(dev, old.config, old.config)
    assert key(C) not in dev.state.peers


peers_st = st.lists(
    st.tuples(
        st.sampled_from([A, B, C]), st.integers(2, 250), st.sampled_from([0, 25]), st.booleans()
    ),
    unique_by=lambda t: t[0],
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
    dev = FakeDevice()
    last = None
    for peers in files:
        cfg = render(peers)
        dev.touched.clear()
        before = {
            k: (v.preshared_key, v.persistent_keepalive, list(v.allowed_ips))
            for k, v in dev.state.peers.items()
        }
        reconcile(dev, last, cfg.config)
        want = {p.public_key: p for p in cfg.config.peers}
        assert set(dev.state.peers) == set(want)
        for k, p in want.items():
            s = dev.state.peers[k]
            assert (s.preshared_key, s.persistent_keepalive, s.allowed_ips) == (
                p.preshared_key,
                p.persistent_keepalive,
                p.allowed_ips,
            )
            if p.endpoint is not None:
                assert s.endpoint == (p.endpoint.host, p.endpoint.port)
        touched = {k for _, k in dev.touched}
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
                assert k not in touched
        assert plan(dev.state, cfg.config, cfg.config) == []
        last = cfg.config
