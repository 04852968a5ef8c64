"""The exit end to end: a stock wireguard-go client reaches the `inet` namespace only through
our device, over TCP, UDP and ICMP, IPv4 and IPv6 (DESIGN.md §6)."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from .topology import INET4, INET6, TUNNEL4, Topology

pytestmark = pytest.mark.e2e

BIG_DOWN = 50 * 1024 * 1024
BIG_UP = 20 * 1024 * 1024


@pytest.fixture
def topo(lab, tmp_path):
    return Topology(lab, tmp_path, http_files={"hello.txt": b"hello through the exit\n"})


def ok(result):
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1]) if result.stdout.strip() else {}


def curl(topo, url, *extra, timeout=300):
    return topo.client_sh(
        "curl", "-sS", "--max-time", str(timeout - 10), *extra, url, timeout=timeout
    )


@pytest.mark.parametrize("inet", [INET4, f"[{INET6}]"], ids=["ipv4", "ipv6"])
def test_http_get(topo, inet):
    out = curl(topo, f"http://{inet}:8080/hello.txt")
    assert out.returncode == 0 and out.stdout == "hello through the exit\n", out.stderr


def test_no_way_out_but_the_tunnel(topo):
    # with the WireGuard interface down, inet is unreachable from the client
    topo.lab.sh("ip", "-n", topo.clients[0]["ns"], "link", "set", topo.clients[0]["if"], "down")
    out = curl(topo, f"http://{INET4}:8080/hello.txt", "--connect-timeout", "2", timeout=20)
    assert out.returncode != 0


def test_big_download_and_upload_verified(lab, tmp_path):
    data = os.urandom(BIG_DOWN)
    topo = Topology(lab, tmp_path, http_files={"big.bin": data})
    target = tmp_path / "got.bin"
    out = curl(topo, f"http://{INET4}:8080/big.bin", "-o", str(target))
    assert out.returncode == 0, out.stderr + topo.log.read_text()[-3000:]
    assert hashlib.sha256(target.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    upload = tmp_path / "up.bin"
    payload = os.urandom(BIG_UP)
    upload.write_bytes(payload)
    out = curl(topo, f"http://{INET4}:8080/upload", "-T", str(upload))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [hashlib.sha256(payload).hexdigest(), str(BIG_UP)]


@pytest.mark.parametrize("inet", [INET4, INET6], ids=["ipv4", "ipv6"])
def test_100_concurrent_tcp_connections(topo, inet):
    result = ok(topo.check("tcp-many", inet, "7007", "100", "20000"))
    assert result["good"] == 100


@pytest.mark.parametrize("inet", [INET4, INET6], ids=["ipv4", "ipv6"])
def test_udp_echo_all_sizes_and_a_fragmented_datagram(topo, inet):
    sizes = [str(n) for n in range(1, 1401, 7)] + ["1400", "3000"]
    result = ok(topo.check("udp-echo", inet, "7007", *sizes))
    assert result["echoed"] == len(sizes)


@pytest.mark.parametrize("inet", [INET4, INET6], ids=["ipv4", "ipv6"])
def test_dns_style_request(topo, inet):
    assert ok(topo.check("dns", inet, "5353"))["answers"]["A"] == "192.0.2.53"


@pytest.mark.parametrize("inet", [INET4, INET6], ids=["ipv4", "ipv6"])
def test_ping_through_the_exit(topo, inet):
    out = topo.client_sh("ping", "-c", "3", "-i", "0.2", "-W", "2", inet, timeout=30)
    assert out.returncode == 0 and " 0% packet loss" in out.stdout, out.stdout + out.stderr


@pytest.mark.parametrize("inet", [INET4, INET6], ids=["ipv4", "ipv6"])
def test_closed_port_is_refused_fast(topo, inet):
    result = ok(topo.check("refused", inet, "9"))
    assert result["seconds"] < 2


def test_device_address_answers_ping(topo):
    out = topo.client_sh("ping", "-c", "2", "-W", "2", f"{TUNNEL4}.1", timeout=30)
    assert out.returncode == 0, out.stdout


def test_peer_to_peer_ping_through_the_device(lab, tmp_path):
    topo = Topology(lab, tmp_path, clients=2, exit_extra="PeerToPeer = yes\n")
    other = f"{TUNNEL4}.{topo.clients[1]['host']}"
    # the second client must have a session for the reply to reach it: its keepalive makes one
    out = topo.client_sh("ping", "-c", "3", "-i", "0.3", "-W", "3", other, timeout=40)
    assert out.returncode == 0 and " 0% packet loss" in out.stdout, out.stdout
    v6 = f"fd99::{topo.clients[1]['host']:x}"
    out = topo.client_sh("ping", "-c", "3", "-i", "0.3", "-W", "3", v6, timeout=40)
    assert out.returncode == 0, out.stdout
