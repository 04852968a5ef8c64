"""Fuzz target: what a fleet host reads from etcd (tether/api/fleet/): keys and values under
the device's prefix, fed to the mirror as watch responses and rendered into a device file.

Any key and value must either be used or skipped (a FleetValueError, one line, naming the key);
the mirror never raises; what it keeps are peers with single addresses; the rendered file
parses, keeps the hand-written peer's block byte for byte, carries only single addresses inside
the device's subnet and each at most once, and rendering the same state again changes nothing.
The `--fleet-etcd` and `--fleet-prefix` texts are fed to their parsers on the side, and the
bytes to the watch's response decoder (which must answer EtcdUnavailable for junk).
Run: `make fuzz TARGET=fleet SECONDS=300` (see fuzz/README.md).
"""

from __future__ import annotations

import sys

from tether.api.fleet.etcd import EtcdOptions, EtcdUnavailable, WatchCompacted, WatchStream
from tether.api.fleet.layout import KINDS, FleetValueError, Layout, check_prefix, parse_value
from tether.api.fleet.mirror import Mirror
from tether.api.fleet.render import render
from tether.config.editor import ConfigFile

PRIVATE = "4HOYXaS0mtLH9ZChsPaDQ3W/L7Z/rrchr8CMDqZGgXg="
HAND = "10NguWHSLJ0tUOr4AkbTtOEYHoagq1KH/PJSIJ3SwFs="
HAND_BLOCK = f"# mine\n[Peer]\nPublicKey = {HAND}\nAllowedIPs = 10.6.0.2/32\n"
BASE = f"[Interface]\nPrivateKey = {PRIVATE}\nAddress = 10.6.0.1/24, fd06::1/64\n\n{HAND_BLOCK}"
LAYOUT = Layout("/tetherctl/", "fz0")
NAMES = (*KINDS, "serial", "other")


def events(data: bytes) -> list[list[tuple[str, bytes, bytes, int]]]:
    """Records separated by NUL: op byte (bit 0: delete, bit 1: end of a watch response), kind
    byte, then NAME \\x01 VALUE."""
    batches, batch = [], []
    for i, record in enumerate(data.split(b"\x00")):
        if len(record) < 2:
            continue
        op, kind = record[0], NAMES[record[1] % len(NAMES)]
        name, _, value = record[2:].partition(b"\x01")
        if kind == "serial":
            key = LAYOUT.serial
        elif kind == "other":
            key = LAYOUT.root + name
        else:
            key = LAYOUT.root + kind.encode() + b"/" + name
        batch.append(("DELETE" if op & 1 else "PUT", key, value, i + 1))
        if op & 2:
            batches.append(batch)
            batch = []
    batches.append(batch)
    return batches


def TestOneInput(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    for parser in (EtcdOptions.parse_urls, check_prefix):
        try:
            parser(text)
        except ValueError as e:
            if "\n" in str(e):
                raise AssertionError(f"multi-line error: {e!r}") from None
    try:  # a watch response line: decoded, or one of the errors the watcher handles
        WatchStream._decode(data)
    except (EtcdUnavailable, WatchCompacted) as e:
        if "\n" in str(e):
            raise AssertionError(f"multi-line error: {e!r}") from None
    head, _, rest = data.partition(b"\x01")
    for kind in KINDS:
        try:
            parse_value(kind, head.decode("latin-1"), rest)
        except FleetValueError as e:
            if "\n" in str(e):
                raise AssertionError(f"multi-line error: {e!r}") from None
    mirror = Mirror(LAYOUT)
    cfg = ConfigFile.parse(BASE, "fz0.conf")
    for revision, batch in enumerate(events(data), 1):
        mirror.apply(revision, batch)
        mirror.take_problems()
        snap = mirror.snapshot
        for key, entry in snap.peers.items():
            assert entry.peer.public_key == key
            assert all(n.prefixlen == n.max_prefixlen for n in entry.peer.allowed_ips)
        render(cfg, snap.peers, allocations=snap.addresses)
        after = cfg.text()
        assert HAND_BLOCK in after, "the hand-written block changed"
        again = ConfigFile.parse(after, "fz0.conf")
        nets = [n for p in again.config.peers for n in p.allowed_ips]
        assert len(nets) == len(set(nets)), "an address rendered twice"
        subnets = [a.network for a in again.config.interface.addresses]
        assert all(any(n.subnet_of(s) for s in subnets if s.version == n.version) for n in nets)
        assert not render(again, snap.peers, allocations=snap.addresses), "not idempotent"


def main() -> None:
    import atheris

    atheris.instrument_all()
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
