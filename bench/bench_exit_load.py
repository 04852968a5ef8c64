"""Latency under load and many clients: tetherctl vs wireguard-go with kernel NAT, in one run.

Needs root, wireguard-go, wg, iperf3, iptables, ip, ping. Builds (in namespaces it creates and
removes) the topology of bench_exit_iperf.py with N clients on each path:

    c0..cN-1 (wireguard-go clients) ──> exit: tetherctl (userspace exit)           ──> inet
    r0..rN-1 (wireguard-go clients) ──> exit: wireguard-go + ip_forward + MASQUERADE ──> inet

inet runs one `iperf3 -s` per client (an iperf3 server serves one test at a time).

1. Latency under load (issue 14's bufferbloat figure): one client saturates its tunnel with
   iperf3 (download, then upload) while the same client pings the inet host 20 times a second;
   ping p50 / p90 / max and pings lost, plus the idle RTT.
2. Many clients: N clients download at once (N from --clients); the aggregate Mbit/s and Jain's
   fairness index (sum x)^2 / (n * sum x^2) of their rates.

Paths alternate within each run so machine noise hits both alike; figures are medians over
--runs. Every iperf3 and ping run is bounded by --seconds.

    python bench/bench_exit_load.py [--runs 3] [--seconds 8] [--clients 1,4,12]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_exit_iperf import (  # noqa: E402
    INET,
    cannot_run,
    client,
    iperf_rate,
    iperf_start,
    ours_server,
    reference_server,
)

from tests.e2e.netlab import NetLab, wait_for  # noqa: E402
from tether import keys  # noqa: E402

PATHS = ("tetherctl", "wireguard-go")
BASE_PORT = 5201


def build(lab: NetLab, tmp: Path, n: int) -> dict[str, list[str]]:
    """The two servers in one exit namespace, n clients each; returns their namespaces."""
    exit_ns, inet_ns = lab.netns("x"), lab.netns("i")
    inet_if, _ = lab.link(exit_ns, inet_ns, ["198.18.2.1/24"], [f"{INET}/24"])
    for k in range(2 * n):
        port = BASE_PORT + k
        lab.spawn(inet_ns, "iperf3", "-s", "-p", str(port), log=tmp / f"iperf-{port}.log")
    wait_for(
        lambda: all(
            str(BASE_PORT + k) in lab.ns_sh(inet_ns, "ss", "-ltn", check=False).stdout
            for k in range(2 * n)
        ),
        20,
        "iperf3 servers",
    )
    ours_priv, ref_priv = keys.genkey(), keys.genkey()
    ours_clients = [keys.genkey() for _ in range(n)]
    ref_clients = [keys.genkey() for _ in range(n)]
    ours_server(lab, exit_ns, tmp, ours_priv, ours_clients)
    reference_server(lab, exit_ns, inet_if, ref_priv, ref_clients)
    # Client k of path p: underlay 198.19.(64p + k).0/24 (benchmarking space, our own veths).
    return {
        "tetherctl": [
            client(
                lab,
                f"o{k}",
                exit_ns,
                c,
                keys.pubkey(ours_priv),
                51820,
                f"10.99.0.{k + 2}",
                f"198.19.{k}",
            )
            for k, c in enumerate(ours_clients)
        ],
        "wireguard-go": [
            client(
                lab,
                f"r{k}",
                exit_ns,
                c,
                keys.pubkey(ref_priv),
                51821,
                f"10.98.0.{k + 2}",
                f"198.19.{64 + k}",
            )
            for k, c in enumerate(ref_clients)
        ],
    }


def iperf_result(proc: subprocess.Popen, seconds: int) -> float:
    """Mbit/s received, 0 when the run failed or hung (it shows, it does not abort the bench)."""
    try:
        out, _ = proc.communicate(timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return 0.0
    return iperf_rate(out)


def ping(ns: str, count: int, interval: float = 0.05) -> tuple[list[float], int]:
    """RTTs (ms) of the replies and the number of pings sent."""
    out = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            ns,
            "ping",
            "-n",
            "-c",
            str(count),
            "-i",
            str(interval),
            "-W",
            "1",
            INET,
        ],
        capture_output=True,
        text=True,
        timeout=count * interval + 30,
    ).stdout
    rtts = [float(m) for m in re.findall(r"time=([\d.]+) ms", out)]
    return rtts, count


def quantile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def under_load(ns: str, port: int, seconds: int, reverse: bool) -> dict[str, float]:
    proc = iperf_start(ns, port, seconds, *(["-R"] if reverse else []))
    time.sleep(1.0)  # past slow start: the queue is what is measured
    rtts, sent = ping(ns, max(10, int((seconds - 2) / 0.05)))
    rate = iperf_result(proc, seconds)
    return {
        "Mbit/s": rate,
        "p50": quantile(rtts, 0.5),
        "p90": quantile(rtts, 0.9),
        "max": max(rtts, default=float("nan")),
        "lost": sent - len(rtts),
    }


def many(nss: list[str], first_port: int, seconds: int) -> dict[str, float]:
    procs = [iperf_start(ns, first_port + k, seconds, "-R") for k, ns in enumerate(nss)]
    rates = [iperf_result(p, seconds) for p in procs]
    total = sum(rates)
    squares = sum(r * r for r in rates)
    jain = total * total / (len(rates) * squares) if squares else 0.0
    return {"Mbit/s": total, "jain": jain}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--clients", default="1,4,12", help="client counts for part 2")
    args = parser.parse_args()
    counts = sorted({int(c) for c in args.clients.split(",") if c.strip()})
    if not counts or counts[0] < 1 or counts[-1] > 32:
        parser.error("--clients: counts between 1 and 32")
    if cannot_run("bench_exit_load", ("wireguard-go", "wg", "iperf3", "iptables", "ip", "ping")):
        return 0
    nmax = counts[-1]
    ports = {"tetherctl": BASE_PORT, "wireguard-go": BASE_PORT + nmax}
    load: dict = {d: {p: [] for p in PATHS} for d in ("idle", "download", "upload")}
    multi: dict = {n: {p: [] for p in PATHS} for n in counts}
    lab = NetLab()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            clients = build(lab, Path(tmp), nmax)
            for nss in clients.values():  # handshakes done before measuring
                for ns in nss:
                    ping(ns, 3, 0.2)
            for _run in range(args.runs):
                for path in PATHS:
                    rtts, sent = ping(clients[path][0], 40)
                    load["idle"][path].append(
                        {
                            "p50": quantile(rtts, 0.5),
                            "p90": quantile(rtts, 0.9),
                            "max": max(rtts, default=float("nan")),
                            "lost": sent - len(rtts),
                            "Mbit/s": 0.0,
                        }
                    )
                for direction, reverse in (("download", True), ("upload", False)):
                    for path in PATHS:
                        load[direction][path].append(
                            under_load(clients[path][0], ports[path], args.seconds, reverse)
                        )
                        time.sleep(0.5)
                for n in counts:
                    for path in PATHS:
                        multi[n][path].append(many(clients[path][:n], ports[path], args.seconds))
                        time.sleep(0.5)
    finally:
        lab.close()

    def med(rows: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    print(
        f"Latency under load and many clients, median of {args.runs} runs of {args.seconds}s "
        "(2-core machine: clients, servers and iperf3 share it)"
    )
    print(f"{'':34}{'tetherctl':>12}{'wireguard-go':>14}{'ratio':>8}")
    for direction in ("idle", "download", "upload"):
        rows = load[direction]
        keys_ = ("p50", "p90", "max", "lost") + (("Mbit/s",) if direction != "idle" else ())
        for key in keys_:
            ours, ref = med(rows["tetherctl"], key), med(rows["wireguard-go"], key)
            unit = "" if key in ("lost", "Mbit/s") else " ms"
            label = f"ping {key}{unit}" if key != "Mbit/s" else "iperf3 Mbit/s"
            ratio = f"{ours / ref:8.0%}" if ref else f"{'':8}"
            print(f"{direction + ': ' + label:34}{ours:12.2f}{ref:14.2f}{ratio}")
    for n in counts:
        for key in ("Mbit/s", "jain"):
            ours, ref = med(multi[n]["tetherctl"], key), med(multi[n]["wireguard-go"], key)
            ratio = f"{ours / ref:8.0%}" if ref else f"{'':8}"
            label = f"{n} clients down: " + ("aggregate Mbit/s" if key == "Mbit/s" else "Jain")
            print(f"{label:34}{ours:12.2f}{ref:14.2f}{ratio}")
    print("raw:", json.dumps({"load": load, "clients": {str(n): v for n, v in multi.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
