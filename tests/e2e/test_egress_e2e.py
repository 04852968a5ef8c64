"""Egress through an upstream SOCKS5 proxy end to end (DESIGN.md §3a, `Egress`): stock
wireguard-go clients, our daemon, Debian's danted with username authentication in a namespace
between the exit and inet (tests/e2e/socks_proxy.py), and counters on the exit's own way to
inet proving that nothing of a proxied peer leaves directly, even while the proxy is down."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from pathlib import Path

import pytest

from .netlab import wait_for
from .socks_proxy import EGRESS, PASSWORD, PROXY, PROXY_OUT, Dante, sent_directly, uplink_counters
from .topology import INET4, Topology

pytestmark = pytest.mark.e2e

EXIT_OUT = "198.18.2.1"  # what inet sees of a direct flow
API = "127.0.0.1:9191"  # the daemon's API inside the exit namespace (for /metrics)
LABEL = f"socks5://tproxy@{PROXY}:1080"


def build(lab, tmp_path, *, exit_extra="", peer_extra=None, clients=1, files=None, exit_hosts=""):
    """The topology with danted between exit and inet; `exit_hosts`: /etc/hosts lines for the
    exit namespace (names for the proxy)."""
    proxy = {}

    def prepare(topo):
        if exit_hosts:
            lab.etc_file(topo.exit_ns, "hosts", "127.0.0.1 localhost\n" + exit_hosts)
        proxy["dante"] = dante = Dante(lab, tmp_path, topo.exit_ns, topo.inet_ns)
        dante.start()
        uplink_counters(lab, topo.exit_ns)

    topo = Topology(
        lab,
        tmp_path,
        clients=clients,
        http_files={"hello.txt": b"hello through the proxy\n", **(files or {})},
        daemon_args=("--api-listen", API),
        exit_extra=exit_extra,
        peer_extra=peer_extra,
        prepare=prepare,
    )
    topo.dante = proxy["dante"]
    return topo, topo.dante


def ok(result, topo=None):
    logs = ""
    if topo is not None and result.returncode != 0:
        logs = "\n" + topo.log.read_text()[-3000:] + topo.dante.log.read_text()[-2000:]
    assert result.returncode == 0, result.stdout + result.stderr + logs
    return json.loads(result.stdout.strip().splitlines()[-1])


def curl(topo, path, *extra, client=0, timeout=120):
    return topo.client_sh(
        "curl", "-sS", "--max-time", str(timeout - 10), *extra, f"http://{INET4}:8080/{path}",
        client=client, timeout=timeout,
    )  # fmt: skip


def whoami(topo, client=0, *, switching=False) -> str | None:
    """Who the inet server saw. `switching`: the egress is being changed, and a connection
    caught open by the change is reset (by design: nothing keeps leaving the old way), so a
    failure is None, for the caller to ask again."""
    out = curl(topo, "whoami", client=client, timeout=30)
    if switching and out.returncode != 0:
        return None
    assert out.returncode == 0, out.stderr + topo.log.read_text()[-3000:]
    return out.stdout.strip()


def udp_whoami(topo, client=0) -> str:
    return ok(topo.check("udp-whoami", INET4, "7012", client=client))["seen"]


def metrics(topo) -> str:
    out = topo.lab.ns_sh(topo.exit_ns, "curl", "-sS", f"http://{API}/metrics", timeout=20)
    assert out.returncode == 0, out.stderr
    return out.stdout


def egress_gauge(topo) -> float | None:
    pattern = rf'tetherctl_egress_up\{{device="{topo.dev}",egress="{re.escape(LABEL)}"\}} (\S+)'
    found = re.search(pattern, metrics(topo))
    return float(found.group(1)) if found else None


def assert_no_secret(topo) -> None:
    assert PASSWORD not in topo.log.read_text()
    assert "s3cret" not in topo.log.read_text() and "s3cret" not in metrics(topo)


def test_http_and_a_20_mb_download_through_the_proxy(lab, tmp_path):
    data = os.urandom(20 * 1024 * 1024)
    topo, _ = build(lab, tmp_path, exit_extra=f"Egress = {EGRESS}\n", files={"big.bin": data})
    assert whoami(topo) == PROXY_OUT  # inet sees the proxy, not the exit
    out = curl(topo, "hello.txt")
    assert out.returncode == 0 and out.stdout == "hello through the proxy\n", out.stderr
    target = tmp_path / "got.bin"
    out = curl(topo, "big.bin", "-o", str(target), timeout=300)
    assert out.returncode == 0, out.stderr + topo.log.read_text()[-3000:]
    assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert ok(topo.check("tcp-many", INET4, "7007", "20", "20000"))["good"] == 20
    assert sent_directly(lab, topo.exit_ns) == 0
    assert egress_gauge(topo) == 1.0
    assert_no_secret(topo)


def test_udp_echo_and_dns_through_udp_associate(lab, tmp_path):
    topo, _ = build(lab, tmp_path, exit_extra=f"Egress = {EGRESS}\n")
    assert udp_whoami(topo) == PROXY_OUT
    sizes = [str(n) for n in (1, 100, 512, 1000, 1400)]
    assert ok(topo.check("udp-echo", INET4, "7007", *sizes))["echoed"] == len(sizes)
    assert ok(topo.check("dns", INET4, "5353"))["answers"]["A"] == "192.0.2.53"
    # ICMP echo cannot cross SOCKS: administratively prohibited, at once
    out = topo.client_sh("ping", "-c", "1", "-W", "3", INET4, timeout=20)
    assert out.returncode != 0 and "Packet filtered" in out.stdout + out.stderr, out.stdout
    assert sent_directly(lab, topo.exit_ns) == 0


def test_a_peer_override_one_client_direct_one_proxied(lab, tmp_path):
    topo, _ = build(
        lab,
        tmp_path,
        clients=2,
        exit_extra=f"Egress = {EGRESS}\n",
        peer_extra={1: "Egress = direct\n"},
    )
    assert whoami(topo, client=0) == PROXY_OUT
    assert whoami(topo, client=1) == EXIT_OUT
    assert udp_whoami(topo, client=0) == PROXY_OUT
    assert udp_whoami(topo, client=1) == EXIT_OUT
    # tetherctl's own key: not in what describes the device to WireGuard
    shown = lab.sh("wg", "showconf", topo.dev).stdout
    assert "[Peer]" in shown and "Egress" not in shown and "socks5" not in shown


def test_the_proxy_stopped_mid_run_fails_closed(lab, tmp_path):
    topo, dante = build(lab, tmp_path, exit_extra=f"Egress = {EGRESS}\n")
    assert whoami(topo) == PROXY_OUT
    dante.stop()
    start = time.monotonic()
    for _ in range(3):
        result = ok(topo.check("unreachable", INET4, "8080"), topo)
        assert result["tcp"]["seconds"] < 5, result
    out = topo.client_sh("curl", "-sS", "--max-time", "10", f"http://{INET4}:8080/hello.txt")
    assert out.returncode != 0
    assert time.monotonic() - start < 60
    assert sent_directly(lab, topo.exit_ns) == 0  # nothing left by the exit's own way
    wait_for(lambda: egress_gauge(topo) == 0.0, 10, "the gauge to say the egress is down")
    log = topo.log.read_text()
    assert f"egress {LABEL} is down" in log and "none leaves directly" in log, log[-3000:]
    assert log.count(f"egress {LABEL} is down") <= 2  # rate-limited
    # it comes back on its own once the proxy does
    dante.start()
    wait_for(lambda: curl(topo, "whoami", timeout=20).stdout.strip() == PROXY_OUT, 30, "back")
    assert sent_directly(lab, topo.exit_ns) == 0
    assert_no_secret(topo)


def test_wrong_credentials_fail_fast_with_a_clear_log_line(lab, tmp_path):
    wrong = EGRESS.replace("s3cret%23pw", "not-it")
    topo, _ = build(lab, tmp_path, exit_extra=f"Egress = {wrong}\n")
    start = time.monotonic()
    result = topo.check("unreachable", INET4, "8080")
    assert sent_directly(lab, topo.exit_ns) == 0
    result = ok(result, topo)
    assert result["tcp"]["seconds"] < 3, result
    assert time.monotonic() - start < 30
    wait_for(
        lambda: "the proxy refused our user name and password" in topo.log.read_text(),
        10,
        "the log line",
    )
    line = next(x for x in topo.log.read_text().splitlines() if "refused our user name" in x)
    assert LABEL in line and "not-it" not in topo.log.read_text(), line
    assert sent_directly(lab, topo.exit_ns) == 0


def test_a_live_change_of_egress_in_the_file_applies_to_new_flows(lab, tmp_path):
    """... with the proxy given by a host name, which the daemon resolves (off its loop)."""
    topo, _ = build(lab, tmp_path, exit_hosts=f"{PROXY} socks.test\n")
    assert whoami(topo) == EXIT_OUT
    text = topo.path.read_text()
    named = EGRESS.replace(PROXY, "socks.test")
    topo.path.write_text(text.replace("[Exit]\n", f"[Exit]\nEgress = {named}\n", 1))
    wait_for(lambda: whoami(topo, switching=True) == PROXY_OUT, 15, "the proxy to be used")
    assert udp_whoami(topo) == PROXY_OUT
    assert 'egress="socks5://tproxy@socks.test:1080"} 1.0' in metrics(topo)
    # a [Peer] override back to direct, live too
    text = topo.path.read_text()
    key = topo.clients[0]["pub"]
    topo.path.write_text(
        text.replace(f"PublicKey = {key}\n", f"PublicKey = {key}\nEgress = direct\n")
    )
    wait_for(lambda: whoami(topo, switching=True) == EXIT_OUT, 15, "the override to apply")


def test_the_proxys_own_address_is_refused_through_it(lab, tmp_path):
    """Abuse: a peer asks the proxy to connect to the proxy's own address (its SOCKS port, or
    anything it serves to itself). Even where the operator's policy lets that address through,
    the exit refuses it as it refuses the host's own: administratively prohibited, at once.
    dante refuses such a connection by itself, so a naive proxy that does not is used here."""
    naive = f"socks5://{PROXY}:1081"
    topo, dante = build(
        lab, tmp_path, exit_extra=f"AllowDestinations = 198.18.5.0/24\nEgress = {naive}\n"
    )
    tool = Path(__file__).parent / "tools" / "naive_socks.py"
    lab.spawn(dante.ns, sys.executable, str(tool), PROXY, "1081", log=tmp_path / "naive.log")
    wait_for(lambda: whoami(topo, switching=True) == PROXY_OUT, 15, "the naive proxy")
    result = ok(topo.check("unreachable", PROXY, "1081"), topo)
    assert result["tcp"]["seconds"] < 3, result
    assert sent_directly(lab, topo.exit_ns) == 0
