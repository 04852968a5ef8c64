"""The exit's destination policy end to end (DESIGN.md §3a), through stock wireguard-go clients.

Besides the usual topology (tests/e2e/topology.py) the exit namespace gets a second link to a
`lan` namespace with RFC 1918 and ULA addresses: the host's LAN, which the exit's own namespace
reaches but the peers must not, unless the device file's `[Exit]` opens it. Edits of `[Exit]`
apply to the running daemon.
"""

from __future__ import annotations

import os
import re
import sys

import pytest

from .netlab import wait_for
from .test_exit_e2e import ok
from .topology import TOOLS, TUNNEL4, TUNNEL6, Topology

pytestmark = pytest.mark.e2e

LAN4, LAN6 = "192.168.77.2", "fd77::2"
API = "127.0.0.1:9191"


def add_lan(topo: Topology) -> str:
    lab = topo.lab
    lan = lab.netns("l")
    lab.link(topo.exit_ns, lan, ["192.168.77.1/24", "fd77::1/64"], [f"{LAN4}/24", f"{LAN6}/64"])
    www = topo.tmp / "lanwww"
    www.mkdir()
    (www / "hello.txt").write_bytes(b"hello from the LAN\n")
    ready = topo.tmp / "lan.ready"
    lab.spawn(lan, sys.executable, str(TOOLS / "inet_servers.py"), str(www), str(ready),
              log=topo.tmp / "lan.log")  # fmt: skip
    wait_for(ready.exists, 15, "lan servers")
    return lan


def edit_exit(topo: Topology, old: str, new: str) -> None:
    """Change the device file as an operator's editor would (write a copy, rename it over)."""
    text = topo.path.read_text()
    assert old in text
    applied = topo.log.read_text().count("applied set_exit")
    tmp = topo.path.with_suffix(".tmp")
    tmp.write_text(text.replace(old, new, 1))
    os.chmod(tmp, 0o600)
    os.replace(tmp, topo.path)
    wait_for(lambda: topo.log.read_text().count("applied set_exit") > applied, 10, "[Exit] applied")


def curl(topo, url, client=0, where=None):
    argv = ("curl", "-sS", "--max-time", "10", url)
    if where is not None:
        return topo.lab.ns_sh(where, *argv, check=False, timeout=20)
    return topo.client_sh(*argv, client=client, timeout=20)


def ping(topo, target, client=0, count=3):
    return topo.client_sh(
        "ping", "-c", str(count), "-i", "0.3", "-W", "3", target, client=client, timeout=40
    )


def test_lan_refused_fast_then_opened_live_and_refusals_in_metrics(lab, tmp_path):
    topo = Topology(lab, tmp_path, daemon_args=("--api-listen", API))
    add_lan(topo)
    # the exit's own namespace reaches the LAN: what stops the peer below is the policy
    direct = curl(topo, f"http://{LAN4}:8080/hello.txt", where=topo.exit_ns)
    assert direct.stdout == "hello from the LAN\n", direct.stderr
    for host in (LAN4, LAN6):
        result = ok(topo.check("prohibited", host, "8080"))
        assert result["tcp"]["seconds"] < 1.0 and result["udp"]["seconds"] < 1.0, result
        out = ping(topo, host, count=1)
        assert out.returncode != 0
        assert re.search(r"filtered|prohibited", out.stdout, re.I), out.stdout
    metrics = curl(topo, f"http://{API}/metrics", where=topo.exit_ns).stdout
    client = topo.clients[0]["pub"]
    counted = re.search(
        rf'tetherctl_exit_refused_total{{device="{topo.dev}",public_key="{re.escape(client)}"}} '
        r"(\d+)",
        metrics,
    )
    assert counted and int(counted.group(1)) >= 6, metrics

    edit_exit(topo, "AllowDestinations = ", "AllowDestinations = 192.168.77.0/24, fd77::/64, ")
    for url in (f"http://{LAN4}:8080/hello.txt", f"http://[{LAN6}]:8080/hello.txt"):
        out = curl(topo, url)
        assert out.returncode == 0 and out.stdout == "hello from the LAN\n", out.stderr
    assert ping(topo, LAN4).returncode == 0

    # DenyDestinations wins over AllowDestinations, live as well
    edit_exit(topo, "[Exit]\n", "[Exit]\nDenyDestinations = 192.168.77.2\n")
    assert ok(topo.check("prohibited", LAN4, "8080"))["tcp"]["seconds"] < 1.0
    assert curl(topo, f"http://[{LAN6}]:8080/hello.txt").returncode == 0


def test_peer_to_peer_refused_by_default_and_works_with_peer_to_peer_yes(lab, tmp_path):
    topo = Topology(lab, tmp_path, clients=2)
    first, second = (f"{TUNNEL4}.{c['host']}" for c in topo.clients)
    first6, second6 = (f"{TUNNEL6}{c['host']:x}" for c in topo.clients)
    for target, client in ((second, 0), (second6, 0), (first, 1)):
        out = ping(topo, target, client=client, count=1)
        assert out.returncode != 0, out.stdout
        assert re.search(r"filtered|prohibited", out.stdout, re.I), out.stdout
    result = ok(topo.check("prohibited", second, "7007"))
    assert result["tcp"]["seconds"] < 1.0
    # the device's own addresses answer either way
    assert ping(topo, f"{TUNNEL4}.1").returncode == 0

    edit_exit(topo, "[Exit]\n", "[Exit]\nPeerToPeer = yes\n")
    for target, client in ((second, 0), (first, 1), (second6, 0), (first6, 1)):
        out = ping(topo, target, client=client)
        assert out.returncode == 0 and " 0% packet loss" in out.stdout, out.stdout
