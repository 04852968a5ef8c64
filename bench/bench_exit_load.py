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

--profile DIR adds one round of part 2 after the measured ones (not in the figures): py-spy
records our servers' processes, and DIR/<n>-<path>/cpu.txt has the machine's CPU seconds by
command (this bench's namespaces), kernel threads, other people's processes, softirq, idle.
--workers 2 (or 1,2, or 2,2:order) adds the prototype of docs/workers.md as a further path per
count: one device served by that many worker processes on one steered SO_REUSEPORT port
(bench/proto_workers.py), with its own N clients; `:key` or `:order` gives a peer's sessions
to the owner by key hash or by position in the file, initiations forwarded between workers
(default `tuple`: whoever receives the initiation). --no-latency skips part 1. --split (needs
tcpdump) adds to part 1 how much of each ping's round trip was spent in the exit, from the
datagram bringing the request in to the one taking the reply out (bench/ping_split.py); the
rest is the client's side. --far-end MS adds to part 1 a call's far end: UDP probes every 20 ms
to a server in inet that answers MS late, in the middle of some later batch (the round trip
less MS; with --split, each answer's time in the exit; bench/far_end.py).

    python bench/bench_exit_load.py [--runs 3] [--seconds 8] [--clients 1,4,12]
                                    [--workers 2] [--no-latency] [--split] [--far-end MS]
                                    [--profile DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import far_end  # noqa: E402
import ping_split  # noqa: E402
from bench_exit_iperf import (  # noqa: E402
    INET,
    cannot_run,
    client,
    cpu_times,
    device_file,
    iperf_rate,
    iperf_start,
    ours_server,
    process_netns,
    py_spy,
    reference_server,
    top_own,
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
    spec: tuple[int, str],
    port: int,
    subnet: str,
    tag: str,
):
    """The prototype (bench/proto_workers.py): our device on `port`, tunnel `subnet`.0/24,
    served by spec = (workers, owner rule); returns its process once all are up; its log is
    tmp/<tag>.log."""  # fmt: skip
    workers, rule = spec
    conf = tmp / f"{tag}.conf"
    conf.write_text(device_file(priv, port, subnet, client_privs))
    ready = tmp / f"{tag}.ready"
    proc = lab.spawn(
        exit_ns, sys.executable, str(REPO / "bench" / "proto_workers.py"), "--workers",
        str(workers), "--owner", rule, "--ready", str(ready), str(conf), log=tmp / f"{tag}.log",
    )  # fmt: skip
    wait_for(ready.exists, 30, f"prototype with {workers} workers up")
    return proc


def stop_workers(tmp: Path, lab: NetLab, paths: list[str]) -> None:
    """Stop the prototypes and print their workers' summaries (who served which peers)."""
    for proc in lab.processes:
        if "proto_workers.py" in " ".join(map(str, proc.args)):
            proc.terminate()
            proc.wait(30)
    for i, path in enumerate(paths):
        log = tmp / f"workers-path{i}.log"
        for line in log.read_text().splitlines() if log.exists() else ():
            if "worker " in line:
                print(f"{path}: {line}")


def build(
    lab: NetLab, tmp: Path, n: int, paths: list[str], workers: list[tuple[int, str]], pids: dict
):
    """The servers in one exit namespace, n clients each; returns their namespaces by path
    and fills `pids` with our servers' Python processes by path (the workers' for a prototype).
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
            pids[path] = [ours_server(lab, exit_ns, tmp, server, clients).pid]
        elif path == REFERENCE:
            port, subnet = 51821, "10.98.0"
            reference_server(lab, exit_ns, inet_if, server, clients)
        else:
            port, subnet = 51822 + i, f"10.{97 - i}.0"
            parent = workers_server(
                lab, exit_ns, tmp, server, clients, workers[i - 2], port, subnet,
                f"workers-path{i}",
            ).pid  # fmt: skip
            children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
            pids[path] = [int(c) for c in children]
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


def ping(ns: str, count: int, interval: float = 0.05, size: int = 56) -> tuple[list[float], int]:
    """RTTs (ms) of the replies and the number of pings sent (`size`: ping -s)."""
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
            "-s",
            str(size),
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


def under_load(
    ns: str,
    port: int,
    seconds: int,
    reverse: bool,
    split: tuple[str, Path] | None = None,
    far_ms: float = 0.0,
) -> dict[str, float]:
    """`split` (the exit's namespace, a capture file): also the exit's share of each ping
    (ping_split.py), as "exit p50"/"exit p90". `far_ms`: also a far end answering that late
    (far_end.py), as "far p50"/"far p90"/"far lost" (and "far exit p50"/"far exit p90")."""
    captures = []  # tcpdumps are not the lab's: closed here whatever happens
    try:
        return _under_load(ns, port, seconds, reverse, split, far_ms, captures)
    finally:
        for capture in captures:
            capture.close()


def _under_load(ns, port, seconds, reverse, split, far_ms, captures: list) -> dict[str, float]:
    capture = far_capture = None
    if split:
        capture = ping_split.Capture(*split)
        captures.append(capture)
    if split and far_ms:
        far_capture = far_end.capture(split[0], split[1].with_suffix(".far.pcap"))
        captures.append(far_capture)
    proc = iperf_start(ns, port, seconds, *(["-R"] if reverse else []))
    time.sleep(1.0)  # past slow start: the queue is what is measured (and tcpdump is up)
    prober = far_end.Prober(ns, INET, far_ms, seconds - 2) if far_ms else None
    size = ping_split.PING_SIZE if split else 56
    rtts, sent = ping(ns, max(10, int((seconds - 2) / 0.05)), size=size)
    far = prober.result() if prober is not None else None
    rate = iperf_result(proc, seconds)
    row = {
        "Mbit/s": rate,
        "p50": quantile(rtts, 0.5),
        "p90": quantile(rtts, 0.9),
        "max": max(rtts, default=float("nan")),
        "lost": sent - len(rtts),
    }
    if capture is not None:
        exit_share = capture.stop()
        row["exit p50"] = quantile(exit_share, 0.5)
        row["exit p90"] = quantile(exit_share, 0.9)
    if far is not None:
        row["far p50"], row["far p90"] = quantile(far[0], 0.5), quantile(far[0], 0.9)
        row["far lost"] = far[1] - len(far[0])
    if far_capture is not None:
        answers = far_capture.stop()
        row["far exit p50"], row["far exit p90"] = quantile(answers, 0.5), quantile(answers, 0.9)
    return row


def cpu_census(namespaces: list[str]) -> Counter:
    """CPU seconds so far by command for the processes in `namespaces` (this bench's: servers,
    clients, iperf3), and in total for kernel threads and for every other process (other
    people's benchmarks on a shared machine), plus the machine's softirq and idle time."""
    tick = os.sysconf("SC_CLK_TCK")
    ours = set()
    for ns in namespaces:
        try:
            ours.add(os.stat(f"/var/run/netns/{ns}").st_ino)
        except OSError:
            pass
    census: Counter = Counter()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm, rest = (entry / "stat").read_text().rsplit(")", 1)
            ino = process_netns(entry)
        except (OSError, IndexError, ValueError):
            continue
        fields = rest.split()
        seconds = (int(fields[11]) + int(fields[12])) / tick
        if fields[1] == "2" or entry.name == "2":
            census["kernel threads"] += seconds
        elif ino in ours:
            census[comm.split("(", 1)[1]] += seconds
        else:
            census["other processes"] += seconds
    cpu = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    census["softirq (machine)"] = int(cpu[7]) / tick
    census["idle (machine)"] = int(cpu[4]) / tick
    return census


def many(
    nss: list[str],
    first_port: int,
    seconds: int,
    profile: Path | None = None,
    pids=(),
    namespaces: list[str] = (),
) -> dict[str, float]:
    """All clients download at once; `profile`: py-spy records each of `pids` meanwhile into
    profile-<pid>.txt (raw stacks) and .top.txt (own time of the busiest functions, CPU)."""
    census = cpu_census(namespaces) if profile is not None else None
    procs = [iperf_start(ns, first_port + k, seconds, "-R") for k, ns in enumerate(nss)]
    spies = []
    if profile is not None:
        time.sleep(1.0)
        for pid in pids:
            raw = profile / f"profile-{pid}.txt"
            spy = subprocess.Popen(
                [py_spy(), "record", "--pid", str(pid), "--rate", "200", "--duration",
                 str(max(1, seconds - 3)), "--idle", "--format", "raw", "--output", str(raw)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            spies.append((spy, raw, pid, cpu_times(pid), time.monotonic()))
    rates = [iperf_result(p, seconds) for p in procs]
    total = sum(rates)
    squares = sum(r * r for r in rates)
    jain = total * total / (len(rates) * squares) if squares else 0.0
    if census is not None:
        used = cpu_census(namespaces)
        used.subtract(census)
        (profile / "cpu.txt").write_text(
            f"{total:.0f} Mbit/s aggregate, Jain {jain:.2f}; CPU seconds:\n"
            + "".join(f"{v:8.2f}s  {k}\n" for k, v in used.most_common() if v > 0.005)
        )
    for spy, raw, pid, cpu0, t0 in spies:
        spy.wait(60)
        cpu1, t1 = cpu_times(pid), time.monotonic()
        if raw.exists():
            raw.with_suffix(".top.txt").write_text(
                f"pid {pid}: over {t1 - t0:.1f}s user {cpu1[0] - cpu0[0]:.2f}s system "
                f"{cpu1[1] - cpu0[1]:.2f}s, runnable but waiting {cpu1[3] - cpu0[3]:.2f}s\n"
                + top_own(raw)
            )
    return {"Mbit/s": total, "jain": jain}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--clients", default="1,4,12", help="client counts for part 2")
    parser.add_argument(
        "--workers",
        default="",
        help="prototype paths: worker counts with an optional owner rule, e.g. 1,2 or 2,2:order",
    )
    parser.add_argument("--no-latency", action="store_true", help="skip part 1")
    parser.add_argument(
        "--split",
        action="store_true",
        help="part 1 also gives the exit's share of each ping (tcpdump; ping_split.py)",
    )
    parser.add_argument(
        "--far-end",
        type=float,
        default=0.0,
        metavar="MS",
        help="part 1 also probes a UDP far end that answers MS late (far_end.py)",
    )
    parser.add_argument(
        "--profile", metavar="DIR", help="profile one extra round of part 2 into DIR"
    )
    args = parser.parse_args()
    counts = sorted({int(c) for c in args.clients.split(",") if c.strip()})
    if not counts or counts[0] < 1 or counts[-1] > 32:
        parser.error("--clients: counts between 1 and 32")
    workers: list[tuple[int, str]] = []
    for spec in filter(None, (w.strip() for w in args.workers.split(","))):
        count, _, rule = spec.partition(":")
        if not count.isdigit() or not 1 <= int(count) <= 8:
            parser.error(f"--workers: {spec}: a count of 1..8")
        if rule not in ("", "tuple", "key", "order"):
            parser.error(f"--workers: {spec}: the owner rule is tuple, key or order")
        workers.append((int(count), rule or "tuple"))
    if len(workers) > 2:
        parser.error("--workers: at most two prototype paths")
    if cannot_run("bench_exit_load", ("wireguard-go", "wg", "iperf3", "iptables", "ip", "ping")):
        return 0
    if args.split and not ping_split.available():
        parser.error("--split needs tcpdump (apt install tcpdump)")
    if not 0 <= args.far_end <= 1000:
        parser.error("--far-end: a delay of 0..1000 ms")
    paths = ["tetherctl", REFERENCE] + [
        f"tetherctl x{w}" + (f" {rule}" if rule != "tuple" else "") for w, rule in workers
    ]
    nmax = counts[-1]
    ports = {path: BASE_PORT + i * nmax for i, path in enumerate(paths)}
    load: dict = {d: {p: [] for p in paths} for d in ("idle", "download", "upload")}
    multi: dict = {n: {p: [] for p in paths} for n in counts}
    lab = NetLab()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            pids: dict[str, list[int]] = {}
            clients = build(lab, Path(tmp), nmax, paths, workers, pids)
            if args.far_end and not args.no_latency:  # ends by itself; killed below anyway
                far_end.start_server(lab, lab.name("i"), INET, args.far_end, 4 * 3600)
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
                        pcap = Path(tmp) / f"split-{run}-{direction}-{paths.index(path)}.pcap"
                        split = (lab.name("x"), pcap) if args.split else None
                        load[direction][path].append(
                            under_load(
                                clients[path][0],
                                ports[path],
                                args.seconds,
                                reverse,
                                split,
                                args.far_end,
                            )  # fmt: skip
                        )
                        time.sleep(0.5)
                for n in counts:
                    for path in order:
                        multi[n][path].append(many(clients[path][:n], ports[path], args.seconds))
                        time.sleep(0.5)
            for n in counts if args.profile else ():  # one more round, not in the figures
                for path in paths:
                    spy = Path(args.profile) / f"{n}-{path.replace(' ', '')}"
                    spy.mkdir(parents=True, exist_ok=True)
                    many(
                        clients[path][:n], ports[path], args.seconds, spy, pids.get(path, ()),
                        lab.namespaces,
                    )  # fmt: skip
                    time.sleep(0.5)
            stop_workers(Path(tmp), lab, paths)
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
    width = {p: max(14, len(p) + 2) for p in paths}
    print(
        f"{'':34}"
        + "".join(f"{p:>{width[p]}}{'ratio':>7}" for p in ours)
        + f"{REFERENCE:>{width[REFERENCE]}}"
    )

    def line(label: str, table: dict, key: str) -> None:
        ref = med(table[REFERENCE], key)
        cells = ""
        for p in ours:
            value = med(table[p], key)
            ratio = f"{value / ref:7.0%}" if ref else f"{'':7}"
            cells += f"{value:{width[p]}.2f}{ratio}"
        print(f"{label:34}{cells}{ref:{width[REFERENCE]}.2f}")

    for direction in ("idle", "download", "upload") if not args.no_latency else ():
        keys_ = ("p50", "p90", "max", "lost") + (("Mbit/s",) if direction != "idle" else ())
        if args.split and direction != "idle":
            keys_ += ("exit p50", "exit p90")
        if args.far_end and direction != "idle":
            keys_ += ("far p50", "far p90", "far lost")
            keys_ += ("far exit p50", "far exit p90") if args.split else ()
        for key in keys_:
            unit = "" if key in ("lost", "far lost", "Mbit/s") else " ms"
            label = f"ping {key}{unit}" if key != "Mbit/s" else "iperf3 Mbit/s"
            if key.startswith("exit "):
                label = f"ping {key[5:]} in the exit ms"
            elif key.startswith("far exit "):
                label = f"far {key[9:]} in the exit ms"
            elif key.startswith("far "):
                label = f"far answer {key[4:]}{unit}"
            line(f"{direction}: {label}", load[direction], key)
    for n in counts:
        for key in ("Mbit/s", "jain"):
            label = f"{n} clients down: " + ("aggregate Mbit/s" if key == "Mbit/s" else "Jain")
            line(label, multi[n], key)
    print("raw:", json.dumps({"load": load, "clients": {str(n): v for n, v in multi.items()}}))


if __name__ == "__main__":
    sys.exit(main())
