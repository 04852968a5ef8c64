"""Concurrent adds from several processes (each with threads) while a hand edit happens.

Every process builds its own app on the same config directory, as several API processes, the
CLI and the daemon would; only the directory lock keeps them from losing each other's edits.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tether import keys
from tether.api.http.app import make_app
from tether.api.hub import FileOnlyHub
from tether.config import store

from .conftest import PUBLIC
from .support import call, new_key, write_device

REPO = Path(__file__).resolve().parents[2]
PROCESSES = 4
PER_PROCESS = 50
THREADS = 8

WORKER = r"""
import json, sys, time
from concurrent.futures import ThreadPoolExecutor
sys.path.insert(0, sys.argv[1])
from tether.api.http.app import make_app
from tether.api.peers.clientconf import PublicEndpoints
from tether.api.hub import FileOnlyHub
from tests_api_support import call

conf, go, shared = sys.argv[2], sys.argv[3], sys.argv[4]
new_keys = sys.argv[5:]
app = make_app(FileOnlyHub(conf), public=PublicEndpoints(ipv4="203.0.113.7"), rate_limit=None)
while not __import__("os").path.exists(go):
    time.sleep(0.005)

def add(key):
    r = call(app, "POST", f"/peer/add/ipv4/{key}")
    addr = None
    if r.status == 200:
        addr = r.text.split("Address = ")[1].split("\n")[0]
    return {"key": key, "status": r.status, "address": addr}

with ThreadPoolExecutor(THREADS) as pool:
    results = list(pool.map(add, [shared] + new_keys))
print(json.dumps(results))
""".replace("THREADS", str(THREADS))

DEVICE = """# Busy exit: comments must survive.
[Interface]
# the pool
Address = 10.50.0.1/22
ListenPort = 51820
PrivateKey = {key}

# Bob
[Peer]
PublicKey = {bob}
AllowedIPs = 10.50.0.2/32
"""


def hand_edit(path: Path, key: str, tag: str) -> ipaddress.IPv4Network:
    """What a lock-aware hand edit does (an admin's script, `flock /etc/tetherctl vi ...`):
    insert a commented peer in the middle of the file, taking a /29 just ahead of the addresses
    handed out so far, i.e. exactly where the next adds would go."""
    with store.locked(path):
        text = path.read_text()
        cfg = store.load(path)
        top = max(int(n.broadcast_address) for p in cfg.config.peers for n in p.allowed_ips)
        net = ipaddress.ip_network(((top + 8) & ~7, 29))
        at = text.index("# Bob\n")
        block = f"# {tag}\n[Peer]\nPublicKey = {key}\nAllowedIPs = {net}\n\n"
        store.atomic_write(path, (text[:at] + block + text[at:]).encode())
    return net


def test_parallel_adds_from_processes_with_hand_edits(tmp_path):
    conf = tmp_path / "conf"
    conf.mkdir()
    bob = new_key()
    path = write_device(conf, "busy", DEVICE.format(key=keys.genkey(), bob=bob))
    shim = tmp_path / "tests_api_support.py"
    shim.write_text((Path(__file__).parent / "support.py").read_text())
    go = tmp_path / "go"
    shared = new_key()
    all_keys = [[new_key() for _ in range(PER_PROCESS)] for _ in range(PROCESSES)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(REPO), str(conf), str(go), shared, *ks],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=tmp_path,
            env={"PYTHONPATH": f"{tmp_path}:{REPO}", "PATH": "/usr/bin:/bin"},
        )
        for ks in all_keys
    ]
    time.sleep(1.0)  # let every worker import and wait at the start line
    go.touch()
    hand_keys, hand_nets = [], []
    for i in range(3):
        time.sleep(0.1)
        hand_keys.append(new_key())
        hand_nets.append(hand_edit(path, hand_keys[-1], f"hand edit {i}"))
    results = []
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err.decode()
        results.extend(json.loads(out))

    shared_results = sorted(r["status"] for r in results if r["key"] == shared)
    assert shared_results == [200] + [409] * (PROCESSES - 1)
    added = [r for r in results if r["key"] != shared]
    assert len(added) == PROCESSES * PER_PROCESS
    assert all(r["status"] == 200 for r in added), {r["status"] for r in added}
    addresses = [r["address"] for r in results if r["status"] == 200]
    assert len(set(addresses)) == len(addresses) == PROCESSES * PER_PROCESS + 1

    cfg = store.load(path)  # the file is valid
    by_key = {keys.encode(p.public_key): p for p in cfg.config.peers}
    for r in results:
        if r["status"] != 200:
            continue
        assert [str(n) for n in by_key[r["key"]].allowed_ips] == [r["address"]]
        net = ipaddress.ip_network(r["address"])
        assert net.subnet_of(ipaddress.ip_network("10.50.0.0/22"))
        assert str(net) not in ("10.50.0.1/32", "10.50.0.2/32")
        # a range reserved by hand is never handed out: every process saw the edit
        assert not any(net.overlaps(h) for h in hand_nets), (net, hand_nets)
    assert all(k in by_key for k in hand_keys) and bob in by_key
    text = path.read_text()
    for comment in ("# Busy exit: comments must survive.\n", "# the pool\n", "# Bob\n"):
        assert comment in text
    for i in range(3):
        assert f"# hand edit {i}\n" in text
    # the hand edits landed while adds were still going on (they reserved ranges ahead)
    assert max(int(ipaddress.ip_network(a).network_address) for a in addresses) > int(
        hand_nets[0].network_address
    )


def test_same_key_twice_in_parallel_threads(conf_dir):
    app = make_app(FileOnlyHub(conf_dir), public=PUBLIC, rate_limit=None)
    key = new_key()
    barrier = threading.Barrier(2)

    def add(_):
        barrier.wait()
        return call(app, "POST", f"/peer/add/ipv4/{key}").status

    with ThreadPoolExecutor(2) as pool:
        assert sorted(pool.map(add, range(2))) == [200, 409]
    assert store.load(conf_dir / "bywg0.conf").peer(keys.decode(key)) is not None


def test_threads_adding_and_removing(conf_dir):
    app = make_app(FileOnlyHub(conf_dir), public=PUBLIC, rate_limit=None)
    ks = [new_key() for _ in range(60)]

    def churn(key):
        a = call(app, "POST", f"/peer/add/ipv4/{key}")
        b = call(app, "DELETE", f"/peer/remove/{key}") if ks.index(key) % 2 else None
        return a.status, b.status if b else None

    with ThreadPoolExecutor(8) as pool:
        out = list(pool.map(churn, ks))
    assert all(a == 200 for a, _ in out)
    cfg = store.load(conf_dir / "bywg0.conf")
    kept = [k for i, k in enumerate(ks) if i % 2 == 0]
    assert all(cfg.peer(keys.decode(k)) for k in kept)
    assert not any(cfg.peer(keys.decode(k)) for i, k in enumerate(ks) if i % 2)
    nets = [n for p in cfg.config.peers for n in p.allowed_ips]
    assert len(nets) == len(set(nets))
