"""A fleet of exits end to end (DESIGN.md §7): real `tetherctl run --fleet-etcd` daemons in their
own namespaces, sharing one device through Debian's etcd, with stock wireguard-go clients.

    client c0 ── host B ──┐                ┌── inet (HTTP servers)
    client c1 ── host A ──┼── (each host) ─┘
                          └── etcd (its own namespace; one member, or three)

Both hosts run the same device file (same [Interface]); peers come only from the API, which
either host serves on its loopback. etcd's namespace is reachable from the hosts only, never
through the exit (its links are outside the [Exit] section's AllowDestinations).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from tether import keys

from .etcdlab import EtcdCluster
from .netlab import REPO, NetLab, require, wait_for
from .topology import TOOLS

pytestmark = pytest.mark.e2e
DEVICE_PORT, API_PORT = 51820, 9090
SUBNET = "10.98.0"
BIG = 8 * 1024 * 1024


def inet_addr(i: int) -> str:
    return f"198.18.{2 + i}.2"


def wg_conf(config: str, private: str) -> tuple[str, list[str]]:
    """The client side: what `wg setconf` takes from a client config, and its addresses."""
    lines, addresses = [], []
    for line in config.replace("__PLACEHOLDER__", private).splitlines():
        key, _, value = line.partition("=")
        name = key.strip().lower()
        if name == "address":
            addresses += [a.strip() for a in value.split(",")]
        elif line.startswith("[") or name in ("privatekey", "publickey", "allowedips", "endpoint"):
            lines.append(line.split("#")[0].rstrip())
    return "\n".join(lines) + "\nPersistentKeepalive = 5\n", addresses


class Fleet:
    """The namespaces, etcd and two (or more) tetherctl hosts of one test."""

    def __init__(self, lab: NetLab, tmp: Path, *, hosts: int = 2, members: int = 1, files=None):
        require("wireguard-go", "wg", "ip", "curl", "etcd")
        self.lab, self.tmp = lab, tmp
        self.inet = lab.netns("i")
        self.etcd_ns = lab.netns("e")
        www = tmp / "www"
        www.mkdir()
        for name, data in (files or {}).items():
            (www / name).write_bytes(data)
        self.private = keys.genkey()
        self.hosts: list[dict] = []
        for i in range(hosts):
            ns = lab.netns(f"h{i}")
            lab.link(ns, self.inet, [f"198.18.{2 + i}.1/24"], [f"{inet_addr(i)}/24"])
            lab.link(ns, self.etcd_ns, [f"198.18.{40 + i}.1/24"], [f"198.18.{40 + i}.2/24"])
            self.hosts.append({"ns": ns, "dir": tmp / f"host{i}", "log": tmp / f"host{i}.log"})
        ready = tmp / "inet.ready"
        lab.spawn(self.inet, sys.executable, str(TOOLS / "inet_servers.py"), str(www), str(ready))
        wait_for(ready.exists, 15, "inet servers")
        self.etcd = EtcdCluster(tmp, members, ns=self.etcd_ns)
        self.dev = lab.name("fd")
        for i, host in enumerate(self.hosts):
            host["dir"].mkdir()
            path = host["dir"] / f"{self.dev}.conf"
            path.write_text(
                f"[Interface]\nPrivateKey = {self.private}\nListenPort = {DEVICE_PORT}\n"
                f"Address = {SUBNET}.1/24\n\n[Exit]\nAllowDestinations = 198.18.2.0/23\n"
            )
            path.chmod(0o600)
            host["path"] = path
            self.start(i)
        for i in range(hosts):
            self.wait_up(i)

    def etcd_urls(self, i: int) -> str:
        ports = self.etcd.client_ports
        return ",".join(f"http://198.18.{40 + i}.2:{ports[n]}" for n in self.etcd.names)

    def start(self, i: int) -> None:
        """Host i's daemon; each host has its own UAPI directory (the device name is shared)."""
        host = self.hosts[i]
        run = host["dir"] / "run"
        run.mkdir(exist_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO))
        host["proc"] = self.lab.spawn(
            host["ns"], sys.executable, "-m", "tether", "run", self.dev,
            "--config-dir", str(host["dir"]), "--run-dir", str(run), "--log", "debug",
            "--api-listen", f"127.0.0.1:{API_PORT}",
            "--public-ipv4", f"198.18.{10 + i}.1",
            "--fleet-etcd", self.etcd_urls(i),
            env=env, log=host["log"],
        )  # fmt: skip

    def wait_up(self, i: int) -> None:
        def up():
            assert self.hosts[i]["proc"].poll() is None, self.hosts[i]["log"].read_text()
            return self.calls(i, ("GET", "/healthz"))[0][0] == 200

        wait_for(up, 30, f"host {i} up")

    def stop(self, i: int) -> None:
        proc = self.hosts[i]["proc"]
        proc.send_signal(signal.SIGTERM)  # ip netns exec passes it on (exec)
        proc.wait(15)

    def calls(self, i: int, *calls: tuple[str, str]) -> list:
        """HTTP calls to host i's API, all at once: [[status, body, seconds], ...]."""
        argv = []
        for method, path in calls:
            argv += [method, f"http://127.0.0.1:{API_PORT}{path}"]
        out = self.lab.ns_sh(
            self.hosts[i]["ns"], sys.executable, str(TOOLS / "api_calls.py"), *argv, timeout=120
        )
        return json.loads(out.stdout)

    def peers(self, i: int) -> dict[str, str]:
        """The peers in host i's file: public key -> AllowedIPs text."""
        out, key = {}, None
        for line in self.hosts[i]["path"].read_text().splitlines():
            name, _, value = line.partition("=")
            if name.strip().lower() == "publickey":
                key = value.strip()
            elif name.strip().lower() == "allowedips" and key:
                out[key] = value.strip()
        return out

    def client(self, short: str, host: int, config: str, private: str) -> dict:
        """A wireguard-go client whose only way out is host `host`, configured from `config`."""
        lab = self.lab
        ns = lab.netns(short)
        side = f"198.18.{10 + host}"
        lab.link(ns, self.hosts[host]["ns"], [f"{side}.2/24"], [f"{side}.1/24"])
        text, addresses = wg_conf(config, private)
        ifname = lab.name(f"w{short}")
        lab.wireguard_go(ns, ifname, text, addresses)
        lab.sh("ip", "-n", ns, "route", "add", "default", "dev", ifname)
        return {"ns": ns, "if": ifname}


def add(fleet: Fleet, i: int, key: str) -> str:
    status, body, _ = fleet.calls(i, ("POST", f"/peer/add/any/{key}"))[0]
    assert status == 200, body
    return body


def test_two_hosts_share_peers_through_etcd(lab, tmp_path):
    fleet = Fleet(lab, tmp_path)
    # a peer added through host A works through host B, and is live there within a second
    priv = keys.genkey()
    pub = keys.pubkey(priv)
    t0 = time.monotonic()
    config = add(fleet, 0, pub)
    wait_for(lambda: pub in fleet.peers(1), 2.0, "the peer in host B's file")
    latency = time.monotonic() - t0
    assert "Address = 10.98.0.2/32" in config
    client = fleet.client("c0", 1, config.replace("198.18.10.1", "198.18.11.1"), priv)
    out = lab.ns_sh(client["ns"], "curl", "-sS", "--max-time", "10",
                    f"http://{inet_addr(1)}:8080/whoami", check=False, timeout=20)  # fmt: skip
    assert out.returncode == 0, (out.stderr, fleet.hosts[1]["log"].read_text()[-3000:])
    assert out.stdout.strip() == "198.18.3.1"  # the Internet saw host B
    # 50 concurrent adds, spread over both hosts: 50 distinct addresses, identical files
    new = [keys.pubkey(keys.genkey()) for _ in range(50)]
    procs = []
    for i in (0, 1):
        argv = []
        for key in new[i::2]:
            argv += ["POST", f"http://127.0.0.1:{API_PORT}/peer/add/any/{key}"]
        procs.append(
            lab.spawn(
                fleet.hosts[i]["ns"],
                sys.executable,
                str(TOOLS / "api_calls.py"),
                *argv,
                log=tmp_path / f"adds{i}.json",
            )  # fmt: skip
        )
    for p in procs:
        assert p.wait(120) == 0
    results = [r for i in (0, 1) for r in json.loads((tmp_path / f"adds{i}.json").read_text())]
    assert [r[0] for r in results] == [200] * 50, [r[1] for r in results if r[0] != 200][:3]
    wait_for(lambda: len(fleet.peers(0)) == 51 == len(fleet.peers(1)), 5, "51 peers on both")
    assert fleet.peers(0) == fleet.peers(1)
    addresses = list(fleet.peers(0).values())
    assert len(set(addresses)) == 51
    # removal on B: gone from A's file and A's running device
    victim = new[0]
    status, body, _ = fleet.calls(1, ("DELETE", f"/peer/remove/{victim}"))[0]
    assert status == 200, body
    wait_for(lambda: victim not in fleet.peers(0), 2.0, "the removal on host A")
    # a host restarted after missing changes catches up (adds and removals)
    fleet.stop(0)
    gone, later = new[1:4], [keys.pubkey(keys.genkey()) for _ in range(3)]
    results = fleet.calls(1, *[("DELETE", f"/peer/remove/{k}") for k in gone],
                          *[("POST", f"/peer/add/any/{k}") for k in later])  # fmt: skip
    assert [r[0] for r in results] == [200] * 6
    fleet.start(0)
    fleet.wait_up(0)
    wait_for(lambda: fleet.peers(0) == fleet.peers(1), 10, "host A caught up")
    assert not set(gone) & set(fleet.peers(0)) and set(later) <= set(fleet.peers(0))
    # the client's own peer removed through A: B's running device drops it (no more traffic)
    status, body, _ = fleet.calls(0, ("DELETE", f"/peer/remove/{pub}"))[0]
    assert status == 200, body
    wait_for(lambda: pub not in fleet.peers(1), 2.0, "the removal in host B's file")
    out = lab.ns_sh(client["ns"], "curl", "-sS", "--max-time", "3",
                    f"http://{inet_addr(1)}:8080/whoami", check=False, timeout=20)  # fmt: skip
    assert out.returncode != 0, out.stdout
    print(f"add on A -> in B's file: {latency * 1000:.0f} ms")


def test_etcd_down_during_a_download_through_a(lab, tmp_path):
    data = bytes(range(256)) * (BIG // 256)
    fleet = Fleet(lab, tmp_path, files={"big.bin": data})
    priv = keys.genkey()
    config = add(fleet, 0, keys.pubkey(priv))
    client = fleet.client("c1", 0, config, priv)
    target = tmp_path / "big.out"
    download = lab.spawn(
        client["ns"], "curl", "-sS", "--max-time", "60", "--limit-rate", "2M",
        "-o", str(target), f"http://{inet_addr(0)}:8080/big.bin",
    )  # fmt: skip
    time.sleep(1)
    fleet.etcd.stop()
    t0 = time.monotonic()
    status, body, _ = fleet.calls(0, ("POST", f"/peer/add/any/{keys.pubkey(keys.genkey())}"))[0]
    assert status == 503 and "etcd" in body, body
    assert time.monotonic() - t0 < 3
    fleet.etcd.restart()
    later = keys.pubkey(keys.genkey())
    wait_for(
        lambda: fleet.calls(0, ("POST", f"/peer/add/any/{later}"))[0][0] == 200, 20, "adds again"
    )
    wait_for(lambda: later in fleet.peers(1), 5, "host B has the add made after the outage")
    assert download.wait(60) == 0
    assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(data).digest()


def test_three_member_etcd_survives_a_killed_member(lab, tmp_path):
    fleet = Fleet(lab, tmp_path, hosts=1, members=3)
    first = keys.pubkey(keys.genkey())
    add(fleet, 0, first)
    fleet.etcd.stop("m0", kill=True)  # the member the host talks to first
    second = keys.pubkey(keys.genkey())
    add(fleet, 0, second)
    assert {first, second} <= set(fleet.peers(0))
    assert "Address = 10.98.0.3/32" in fleet.calls(0, ("GET", f"/peer/config/any/{second}"))[0][1]
