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

--workers 2 (or 1,2) adds the prototype of docs/workers.md as a further path per count: one
device served by that many worker processes on one steered SO_REUSEPORT port
(bench/proto_workers.py), with its own N clients. --no-latency skips part 1.

    python bench/bench_exit_load.py [--runs 3] [--seconds 8] [--clients 1,4,12]
                                    [--workers 2] [--no-latency]
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
    device_file,
    iperf_rate,
    iperf_start,
    ours_server,
    reference_server,
)

from tests.e2e.netlab import NetLab, wait_for  # noqa: E402
from tether import keys  # noqa: E402

REFERENCE = "wireguard-go"
BASE_PORT = 5201


def workers_server(
    lab: NetLab,
    exit_ns: str,
    tmp: Path,
    priv: str,
    client_privs,
    workers: int,
    port: int,
    subnet: str,
) -> None:
    """The prototype (bench/proto_workers.py): our device on `port`, tunnel `subnet`.0/24,
    served by `workers` processes; returns its process once all are up."""  # fmt: skip
    conf = tmp / f"workers{workers}.conf"
    conf.write_text(device_file(priv, port, subnet, client_privs))
    ready = tmp / f"workers{workers}.ready"
    proc = lab.spawn(
        exit_ns, sys.executable, str(REPO / "bench" / "proto_workers.py"), "--workers",
        str(workers), "--ready", str(ready), str(conf), log=tmp / f"workers{workers}.log",
    )  # fmt: skip
    wait_for(ready.exists, 30, f"prototype with {workers} workers up")
    return proc


def stop_workers(tmp: Path, lab: NetLab, workers: list[int]) -> None:
    """Stop the prototypes and print their workers' summaries (who served which peers)."""
    for proc in lab.processes:
        if "proto_workers.py" in " ".join(map(str, proc.args)):
            proc.terminate()
            proc.wait(30)
    for w in workers:
        for line in (tmp / f"workers{w}.log").read_text().splitlines():
            if "worker " in line:
                print(line)


def build(lab: NetLab, tmp: Path, n: int, paths: list[str], workers: list[int]):
    """The servers in one exit namespace, n clients each; returns their namespaces by path.
    Path i's clients sit on underlay 198.19.(64i + k).0/24 (benchmarking space, our own veths)
    and use iperf3 ports BASE_PORT + i*n + k."""
    exit_ns, inet_ns = lab.netns("x"), lab.netns("i")
    inet_if, _ = lab.link(exit_ns, inet_ns, ["198.18.2.1/24"], [f"{INET}/24"])
    total = len(paths) * n
    for k in range(total):
        port = BASE_PORT + k
        lab.spawn(inet_ns, "iperf3", "-s", "-p", str(port), log=tmp / f"iperf-{port}.log")
    wait_for(
        lambda: all(
            str(BASE_PORT + k) in lab.ns_sh(inet_ns, "ss", "-ltn", check=False).stdout
            for k in range(total)
        ),
        20,
        "iperf3 servers",
    )
    out: dict[str, list[str]] = {}
    for i, path in enumerate(paths):
        server, clients = keys.genkey(), [keys.genkey() for _ in range(n)]
        if path == "tetherctl":
            port, subnet = 51820, "10.99.0"
            ours_server(lab, exit_ns, tmp, server, clients)
        elif path == REFERENCE:
            port, subnet = 51821, "10.98.0"
            reference_server(lab, exit_ns, inet_if, server, clients)
        else:
            w = workers[i - 2]
            port, subnet = 51822 + i, f"10.{97 - i}.0"
            workers_server(lab, exit_ns, tmp, server, clients, w, port, subnet)
        out[path] = [
            client(
                lab,
                f"{i}k{k}",
                exit_ns,
                c,
                keys.pubkey(server),
                port,
                f"{subnet}.{k + 2}",
                f"198.19.{64 * i + k}",
            )  # fmt: skip
            for k, c in enumerate(clients)
        ]
    return out


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
    parser.add_argument("--workers", default="", help="prototype paths: worker counts, e.g. 2")
    parser.add_argument("--no-latency", action="store_true", help="skip part 1")
    args = parser.parse_args()
    counts = sorted({int(c) for c in args.clients.split(",") if c.strip()})
    if not counts or counts[0] < 1 or counts[-1] > 32:
        parser.error("--clients: counts between 1 and 32")
    workers = [int(w) for w in args.workers.split(",") if w.strip()]
    if len(workers) > 2 or any(not 1 <= w <= 8 for w in workers):
        parser.error("--workers: at most two counts, each 1..8")
    if cannot_run("bench_exit_load", ("wireguard-go", "wg", "iperf3", "iptables", "ip", "ping")):
        return 0
    paths = ["tetherctl", REFERENCE] + [f"tetherctl x{w}" for w in workers]
    nmax = counts[-1]
    ports = {path: BASE_PORT + i * nmax for i, path in enumerate(paths)}
    load: dict = {d: {p: [] for p in paths} for d in ("idle", "download", "upload")}
    multi: dict = {n: {p: [] for p in paths} for n in counts}
    lab = NetLab()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            clients = build(lab, Path(tmp), nmax, paths, workers)
            for nss in clients.values():  # handshakes done before measuring
                for ns in nss:
                    ping(ns, 3, 0.2)
            for run in range(args.runs):
                # the order of the paths rotates from run to run: none always goes first
                order = paths[run % len(paths) :] + paths[: run % len(paths)]
                for path in order if not args.no_latency else ():
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
                    for path in order if not args.no_latency else ():
                        load[direction][path].append(
                            under_load(clients[path][0], ports[path], args.seconds, reverse)
                        )
                        time.sleep(0.5)
                for n in counts:
                    for path in order:
                        multi[n][path].append(many(clients[path][:n], ports[path], args.seconds))
                        time.sleep(0.5)
            stop_workers(Path(tmp), lab, workers)
    finally:
        lab.close()
    report(args, paths, load, multi, counts)
    return 0


def report(args, paths: list[str], load: dict, multi: dict, counts: list[int]) -> None:
    """Medians per path, each with its ratio to the reference."""

    def med(rows: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in rows) if rows else float("nan")

    print(
        f"Latency under load and many clients, median of {args.runs} runs of {args.seconds}s "
        "(2-core machine: clients, servers and iperf3 share it); ratio = path / reference"
    )
    ours = [p for p in paths if p != REFERENCE]
    print(f"{'':34}" + "".join(f"{p:>14}{'ratio':>7}" for p in ours) + f"{REFERENCE:>14}")

    def line(label: str, table: dict, key: str) -> None:
        ref = med(table[REFERENCE], key)
        cells = ""
        for p in ours:
            value = med(table[p], key)
            ratio = f"{value / ref:7.0%}" if ref else f"{'':7}"
            cells += f"{value:14.2f}{ratio}"
        print(f"{label:34}{cells}{ref:14.2f}")

    for direction in ("idle", "download", "upload") if not args.no_latency else ():
        keys_ = ("p50", "p90", "max", "lost") + (("Mbit/s",) if direction != "idle" else ())
        for key in keys_:
            unit = "" if key in ("lost", "Mbit/s") else " ms"
            label = f"ping {key}{unit}" if key != "Mbit/s" else "iperf3 Mbit/s"
            line(f"{direction}: {label}", load[direction], key)
    for n in counts:
        for key in ("Mbit/s", "jain"):
            label = f"{n} clients down: " + ("aggregate Mbit/s" if key == "Mbit/s" else "Jain")
            line(label, multi[n], key)
    print("raw:", json.dumps({"load": load, "clients": {str(n): v for n, v in multi.items()}}))


if __name__ == "__main__":
    sys.exit(main())
