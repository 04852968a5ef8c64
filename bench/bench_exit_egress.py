"""TCP through an upstream SOCKS5 proxy vs direct egress, in one run (issue 12's goal: through a
local SOCKS5 server at least 60 % of direct).

Needs root, wireguard-go, wg, iperf3, ip, unshare, openssl and Debian's dante-server. It builds
(in network namespaces it creates and removes) the e2e topology of tests/e2e/test_egress_e2e.py:

    c0 (wireguard-go) ─┐                      ┌─> proxy: danted (username auth) ─> inet: iperf3 -s
                       ├─> exit: tetherctl ───┤
    c1 (wireguard-go) ─┘                      └────────────────────────────────> inet
    c0's [Peer] has `Egress = socks5://...`; c1 leaves directly (the device's default)

and measures, alternating between the two clients so machine noise hits both alike, TCP
download and upload (iperf3, --seconds each) and the connection setup time a client sees
(median of 20 sequential connects; through the proxy the exit answers the SYN only once the
proxy has connected). Prints medians of --runs runs and proxied/direct ratios.

    python bench/bench_exit_egress.py [--runs 3] [--seconds 5]

All traffic stays inside the namespaces; every iperf3 run is bounded by --seconds.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.bench_exit_iperf import cannot_run, iperf  # noqa: E402
from tests.e2e.netlab import NetLab  # noqa: E402
from tests.e2e.socks_proxy import DANTED, EGRESS, Dante  # noqa: E402
from tests.e2e.topology import INET4, TOOLS, Topology  # noqa: E402

PROXIED, DIRECT = 0, 1  # client indexes


def build(lab: NetLab, tmp: Path) -> Topology:
    def prepare(topo):
        Dante(lab, tmp, topo.exit_ns, topo.inet_ns).start()
        lab.spawn(topo.inet_ns, "iperf3", "-s", "-p", "5201", log=tmp / "iperf3.log")

    topo = Topology(
        lab, tmp, clients=2, peer_extra={PROXIED: f"Egress = {EGRESS}\n"}, prepare=prepare
    )
    return topo


def connect_ms(topo: Topology, client: int) -> float:
    out = topo.client_sh(
        sys.executable, str(TOOLS / "client_checks.py"), "connect-time", INET4, "7007", "20",
        client=client, timeout=120,
    )  # fmt: skip
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])["median_ms"]
    except (ValueError, IndexError, KeyError):
        return float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    args = ap.parse_args()
    tools = ("wireguard-go", "wg", "iperf3", "ip", "unshare", "openssl", "curl", "ping")
    if cannot_run("bench_exit_egress", tools):
        return 0
    if not Path(DANTED).exists():
        print("bench_exit_egress: dante-server not installed; skipped")
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="bench-egress-"))
    lab = NetLab()
    names = {PROXIED: "socks5", DIRECT: "direct"}
    results: dict[str, dict[str, list[float]]] = {
        test: {name: [] for name in names.values()} for test in ("TCP down Mbit/s", "TCP up Mbit/s")
    }
    setup: dict[str, list[float]] = {name: [] for name in names.values()}
    try:
        topo = build(lab, tmp)
        for run in range(args.runs):
            order = (PROXIED, DIRECT) if run % 2 == 0 else (DIRECT, PROXIED)
            for client in order:
                ns, name = topo.clients[client]["ns"], names[client]
                # iperf (bench_exit_iperf's) talks to its INET, which is our INET4 too
                results["TCP down Mbit/s"][name].append(iperf(lab, ns, args.seconds, "-R"))
                results["TCP up Mbit/s"][name].append(iperf(lab, ns, args.seconds))
                setup[name].append(connect_ms(topo, client))
    finally:
        lab.close()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"bench_exit_egress: medians of {args.runs} runs, {args.seconds} s each")
    print(f"{'':24}{'socks5':>10}{'direct':>10}{'ratio':>8}")
    for test, by in results.items():
        proxied, direct = statistics.median(by["socks5"]), statistics.median(by["direct"])
        ratio = proxied / direct if direct else float("nan")
        print(f"{test:24}{proxied:10.0f}{direct:10.0f}{ratio:8.0%}")
    proxied, direct = statistics.median(setup["socks5"]), statistics.median(setup["direct"])
    print(f"{'TCP connect ms':24}{proxied:10.2f}{direct:10.2f}")
    print(f"{'added by the proxy ms':24}{proxied - direct:10.2f}")
    print("raw:", json.dumps({"results": results, "connect_ms": setup}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
