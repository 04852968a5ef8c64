"""The renderer (sans-IO): fleet peers into a ConfigFile, idempotent, hand edits restored,
hand-written peers untouched, hostile entries left out."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from tether import keys
from tether.api.fleet.layout import FleetPeer
from tether.api.fleet.render import managed_keys, render
from tether.config.editor import ConfigFile
from tether.config.model import Peer

from ..api.support import new_key

PRIVATE = keys.genkey()
HAND = new_key()
BASE = (
    f"# shared interface\n[Interface]\nPrivateKey = {PRIVATE}\nAddress = 10.5.0.1/24, fd05::1/64\n"
    f"\n# the operator's own laptop\n[Peer]\nPublicKey = {HAND}\nAllowedIPs = 10.5.0.2/32\n"
)


def entry(key: str, *nets: str, comment: str = "added by the API") -> FleetPeer:
    return FleetPeer(
        Peer(keys.decode(key), allowed_ips=[ipaddress.ip_network(n) for n in nets]), comment
    )


def fleet(n: int, start: int = 3) -> dict[bytes, FleetPeer]:
    out = {}
    for i in range(n):
        k = new_key()
        out[keys.decode(k)] = entry(k, f"10.5.0.{start + i}/32", f"fd05::{start + i:x}/128")
    return out


def rendered(text: str, wanted) -> tuple[str, object]:
    cfg = ConfigFile.parse(text, "t.conf")
    done = render(cfg, wanted)
    return cfg.text(), done


def test_render_adds_marks_and_is_idempotent():
    wanted = fleet(3)
    text, done = rendered(BASE, wanted)
    assert len(done.added) == 3 and not done.removed and not done.restored
    assert text.startswith(BASE)  # the operator's lines are byte-identical
    assert text.count("# fleet-managed") == 3
    cfg = ConfigFile.parse(text, "t.conf")
    assert managed_keys(cfg) == set(wanted)
    again, done = rendered(text, wanted)
    assert again == text and not done


def test_removed_fleet_peer_leaves_and_hand_written_stays():
    wanted = fleet(3)
    text, _ = rendered(BASE, wanted)
    first = next(iter(wanted))
    rest = {k: v for k, v in wanted.items() if k != first}
    text2, done = rendered(text, rest)
    assert done.removed == [keys.encode(first)]
    assert keys.encode(first) not in text2
    assert HAND in text2 and "# the operator's own laptop" in text2
    assert rendered(text2, {})[0] == BASE


def test_hand_edits_of_rendered_blocks_are_restored():
    wanted = fleet(2)
    text, _ = rendered(BASE, wanted)
    k0, k1 = list(wanted)
    edited = text.replace("AllowedIPs = 10.5.0.3/32, fd05::3/128", "AllowedIPs = 0.0.0.0/0")
    cfg = ConfigFile.parse(edited, "t.conf")
    done = render(cfg, wanted, known=set(wanted))
    assert done.restored == [keys.encode(k0)] and cfg.text() == text
    # a whole block deleted by hand comes back (and is reported as a restore)
    cfg = ConfigFile.parse(text, "t.conf")
    cfg.remove_peer(k1)
    done = render(cfg, wanted, known=set(wanted))
    assert done.restored == [keys.encode(k1)]
    assert managed_keys(cfg) == set(wanted)


def test_hostile_entries_are_left_out():
    own = keys.pubkey(PRIVATE)
    good = new_key()
    wanted = {keys.decode(own): entry(own, "10.5.0.9/32")}
    bad = {
        new_key(): ("0.0.0.0/0",),
        new_key(): ("10.5.0.0/25",),
        new_key(): ("192.168.1.7/32",),
        new_key(): ("10.5.0.2/32",),  # the hand-written peer's address
    }
    for k, nets in bad.items():
        wanted[keys.decode(k)] = entry(k, *nets)
    wanted[keys.decode(good)] = entry(good, "10.5.0.20/32")
    text, done = rendered(BASE, wanted)
    assert done.added == [good]
    assert set(done.refused) == {own, *bad}
    assert "0.0.0.0/0" not in text and "10.5.0.0/25" not in text


def test_two_fleet_entries_with_one_address_lower_key_wins():
    a, b = sorted((new_key(), new_key()), key=keys.decode)
    wanted = {keys.decode(b): entry(b, "10.5.0.7/32"), keys.decode(a): entry(a, "10.5.0.7/32")}
    text, done = rendered(BASE, wanted)
    assert done.added == [a] and list(done.refused) == [b]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sets(st.integers(3, 60), max_size=12), min_size=1, max_size=5))
def test_any_sequence_of_fleet_states_renders_to_the_same_file_as_rendering_the_last(steps):
    """Whatever happened before, the file's fleet part depends only on the current state."""
    pool = {i: new_key() for i in range(3, 61)}
    cfg = ConfigFile.parse(BASE, "t.conf")
    for step in steps:
        wanted = {keys.decode(pool[i]): entry(pool[i], f"10.5.0.{i}/32") for i in sorted(step)}
        render(cfg, wanted)
    fresh = ConfigFile.parse(BASE, "t.conf")
    render(fresh, wanted)
    got = {p.public_key: p.allowed_ips for p in cfg.config.peers}
    want = {p.public_key: p.allowed_ips for p in fresh.config.peers}
    assert got == want
    assert ConfigFile.parse(cfg.text(), "t.conf").config.peers == cfg.config.peers
    assert render(cfg, wanted).__bool__() is False
