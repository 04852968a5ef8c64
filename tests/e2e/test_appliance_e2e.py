"""The appliance end to end: live file edits under load, and the peer API used by a stock client.

Topology as in DESIGN.md §6 (tests/e2e/topology.py). The API listens on 127.0.0.1 inside the
exit namespace and is reached with curl run there.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import subprocess
import time

import pytest

from tether import keys
from tether.config import store
from tether.config.model import Peer

from .netlab import wait_for
from .topology import INET4, Topology

pytestmark = pytest.mark.e2e

DOWNLOAD = 30 * 1024 * 1024


def test_tcp_transfer_survives_peers_added_and_removed_by_editing_the_file(lab, tmp_path):
    data = os.urandom(DOWNLOAD)
    topo = Topology(lab, tmp_path, http_files={"big.bin": data})
    path = topo.config_dir / f"{topo.dev}.conf"
    target = tmp_path / "got.bin"
    # throttled so the transfer spans all the edits below
    curl = lab.spawn(
        topo.clients[0]["ns"],
        "curl",
        "-sS",
        "--limit-rate",
        "6M",
        "--max-time",
        "120",
        "-o",
        str(target),
        f"http://{INET4}:8080/big.bin",
        log=tmp_path / "curl.log",
    )
    added = []
    for round_ in range(6):
        time.sleep(0.5)
        key = keys.public_from_private(keys.generate_private())
        net = ipaddress.ip_network(f"10.99.0.{100 + round_}/32")
        store.edit(path, lambda cfg, key=key, net=net: cfg.add_peer(Peer(key, allowed_ips=[net])))
        added.append(key)
        if round_ % 2:
            gone = added.pop(0)
            store.edit(path, lambda cfg, gone=gone: cfg.remove_peer(gone))
    wait_for(
        lambda: len(lab.wg_show(topo.dev, "peers").split()) == 1 + len(added), 5, "edits applied"
    )
    assert curl.wait(150) == 0, (tmp_path / "curl.log").read_text()
    assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(data).digest()
    log = topo.log.read_text()
    applied = [line for line in log.splitlines() if " applied " in line]
    assert sum(line.count("set_peer") for line in applied) == 6
    assert sum(line.count("remove_peer") for line in applied) == 3


def api(topo, method: str, path: str) -> subprocess.CompletedProcess:
    return topo.lab.ns_sh(
        topo.exit_ns,
        "curl",
        "-sS",
        "-X",
        method,
        "-w",
        "\n%{http_code}",
        f"http://127.0.0.1:9090{path}",
        check=False,
        timeout=30,
    )


def split(out) -> tuple[int, str]:
    body, _, code = out.stdout.rpartition("\n")
    return int(code), body


def test_api_made_config_used_unchanged_by_wireguard_go(lab, tmp_path):
    topo = Topology(
        lab,
        tmp_path,
        clients=0,
        http_files={"hello.txt": b"via the api\n"},
        daemon_args=("--api-listen", "127.0.0.1:9090", "--public-ipv4", Topology.exit_side(0)),
    )
    wait_for(lambda: api(topo, "GET", "/healthz").returncode == 0, 15, "API up")
    code, config = split(api(topo, "POST", "/peer/new/ipv4"))
    assert code == 200, config
    assert "__PLACEHOLDER__" not in config and f"Endpoint = {Topology.exit_side(0)}:" in config
    # the client takes the file as it is: wg-quick's own parser splits it for wg and ip
    conf = tmp_path / "client.conf"
    conf.write_text(config)
    stripped = subprocess.run(
        ["wg-quick", "strip", str(conf)], capture_output=True, text=True, check=True
    ).stdout
    addresses = [
        line.split("=", 1)[1].strip() for line in config.splitlines() if line.startswith("Address")
    ][0].split(", ")
    client = topo.add_client(0, stripped, addresses, {})
    out = topo.client_sh(
        "curl", "-sS", "--max-time", "20", f"http://{INET4}:8080/hello.txt", timeout=30
    )
    assert out.returncode == 0 and out.stdout == "via the api\n", out.stderr

    pub = [line for line in config.splitlines() if line.startswith("# Config for public key")]
    pubkey = pub[0].split('"')[1]
    code, _ = split(api(topo, "DELETE", f"/peer/remove/{pubkey}"))
    assert code == 200
    assert pubkey not in lab.wg_show(topo.dev, "peers")
    assert pubkey not in (topo.config_dir / f"{topo.dev}.conf").read_text()
    # the client's packets (and its next handshake attempts) go unanswered now
    before = lab.wg_show(client["if"], "latest-handshakes").split()[1]
    out = topo.client_sh("ping", "-c", "3", "-W", "1", INET4, timeout=30)
    assert out.returncode != 0
    subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            client["ns"],
            "wg",
            "set",
            client["if"],
            "peer",
            topo.server_pub,
            "persistent-keepalive",
            "1",
        ],
        check=True,
    )
    time.sleep(3)
    assert lab.wg_show(client["if"], "latest-handshakes").split()[1] == before
