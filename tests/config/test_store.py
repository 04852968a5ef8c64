"""Locked, atomic writes: modes, owners, symlinks, and concurrent processes."""

from __future__ import annotations

import hashlib
import ipaddress
import multiprocessing as mp
import os
import stat
import time

import pytest

from tether import keys
from tether.config import ConfigError, store
from tether.config.model import Peer

BASE = """# my server
[Interface]
PrivateKey = 4HOYXaS0mtLH9ZChsPaDQ3W/L7Z/rrchr8CMDqZGgXg=
ListenPort = 51820  # keep me
Address = 10.50.0.1/16
"""


def write(path, text, mode=0o600):
    path.write_text(text)
    os.chmod(path, mode)


def test_new_file_is_0600(tmp_path):
    p = tmp_path / "new.conf"
    with store.locked(p):
        store.atomic_write(p, b"[Interface]\n")
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert not [f for f in os.listdir(tmp_path) if f != "new.conf"]  # no temp files left


def test_mode_and_owner_are_kept(tmp_path):
    p = tmp_path / "wg0.conf"
    write(p, BASE, 0o640)
    if os.geteuid() == 0:
        os.chown(p, 1234, 5678)
    store.edit(p, lambda cfg: cfg.update_interface(listen_port=1))
    st = p.stat()
    assert stat.S_IMODE(st.st_mode) == 0o640
    if os.geteuid() == 0:
        assert (st.st_uid, st.st_gid) == (1234, 5678)
    assert "ListenPort = 1  # keep me\n" in p.read_text()


def test_write_goes_through_symlink(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    target = real / "wg0.conf"
    write(target, BASE)
    link = tmp_path / "wg0.conf"
    link.symlink_to(target)
    store.edit(link, lambda cfg: cfg.update_interface(listen_port=2))
    assert link.is_symlink()
    assert "ListenPort = 2" in target.read_text()


def test_invalid_file_is_never_written(tmp_path):
    p = tmp_path / "wg0.conf"
    write(p, BASE + "Bogus = 1\n")
    with pytest.raises(ConfigError) as e:
        store.edit(p, lambda cfg: cfg.update_interface(listen_port=3))
    assert str(e.value) == "wg0.conf:6: unknown key 'Bogus' in [Interface]"
    assert p.read_text() == BASE + "Bogus = 1\n"


def test_failing_change_leaves_file_alone(tmp_path):
    p = tmp_path / "wg0.conf"
    write(p, BASE)

    def boom(cfg):
        cfg.update_interface(listen_port=9)
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError):
        store.edit(p, boom)
    assert p.read_text() == BASE


def test_unchanged_edit_does_not_rewrite(tmp_path):
    p = tmp_path / "wg0.conf"
    write(p, BASE)
    before = p.stat().st_ino
    store.edit(p, lambda cfg: cfg.update_interface(listen_port=51820))
    assert p.stat().st_ino == before


def test_device_names(tmp_path):
    for name in ["wg0", "bywg0", "a.b-c_d=e+f", "x" * 15]:
        assert store.check_device_name(name) == name
    for name in ["", "x" * 16, "../etc", "a/b", "wg 0", ".", "..", "wg0\n"]:
        with pytest.raises(ValueError):
            store.check_device_name(name)
    for f in ["wg0.conf", "bad name.conf", "wg1.conf", "notes.txt", ".wg0.conf.abc.tmp"]:
        (tmp_path / f).write_text("")
    assert store.list_devices(tmp_path) == ["wg0", "wg1"]


def _adder(path: str, start: int, count: int, barrier) -> None:
    barrier.wait()
    for i in range(start, start + count):
        pub = keys.public_from_private(keys.clamp(hashlib.sha256(b"%d" % i).digest()))
        net = ipaddress.ip_network(f"10.50.{i // 250}.{i % 250 + 2}/32")
        store.edit(path, lambda cfg, pub=pub, net=net: cfg.add_peer(Peer(pub, allowed_ips=[net])))


def _reader(path: str, stop, bad) -> None:
    while not stop.is_set():
        try:
            store.load(path)
        except ConfigError as e:
            bad.put(str(e))
            return


def test_concurrent_writer_processes_lose_nothing_and_readers_never_see_torn_files(tmp_path):
    p = tmp_path / "wg0.conf"
    write(p, BASE)
    ctx = mp.get_context("fork")
    writers, per = 4, 25
    barrier = ctx.Barrier(writers)
    stop, bad = ctx.Event(), ctx.Queue()
    reader = ctx.Process(target=_reader, args=(str(p), stop, bad), daemon=True)
    reader.start()
    procs = [
        ctx.Process(target=_adder, args=(str(p), w * per, per, barrier), daemon=True)
        for w in range(writers)
    ]
    try:
        for proc in procs:
            proc.start()
        deadline = time.monotonic() + 120
        for proc in procs:
            proc.join(max(1, deadline - time.monotonic()))
        assert [proc.exitcode for proc in procs] == [0] * writers
    finally:
        stop.set()
        reader.join(30)
        for proc in [reader, *procs]:
            if proc.is_alive():
                proc.kill()
    assert bad.empty(), bad.get()
    cfg = store.load(p)
    assert len(cfg.config.peers) == writers * per
    assert cfg.text().startswith(BASE)  # the user's lines, comments included, are intact


def test_parse_cache_never_hides_a_hand_edit(tmp_path):
    p = tmp_path / "wg0.conf"
    write(p, BASE)
    cache = store.ParseCache()
    store.edit(p, lambda cfg: cfg.update_interface(listen_port=1000), cache=cache)
    # a person edits the file between two programmatic edits (same size, same second)
    p.write_text(p.read_text().replace("ListenPort = 1000", "ListenPort = 2000"))
    store.edit(p, lambda cfg: cfg.add_peer(Peer(hashlib.sha256(b"x").digest())), cache=cache)
    cfg = store.load(p)
    assert cfg.config.interface.listen_port == 2000 and len(cfg.config.peers) == 1

    # a failed change does not leave a half-edited object in the cache
    def half_edit(cfg):
        cfg.update_interface(listen_port=3000)
        raise RuntimeError("changed my mind")

    with pytest.raises(RuntimeError):
        store.edit(p, half_edit, cache=cache)
    store.edit(
        p,
        lambda cfg: cfg.update_peer(hashlib.sha256(b"x").digest(), persistent_keepalive=5),
        cache=cache,
    )
    assert store.load(p).config.interface.listen_port == 2000
