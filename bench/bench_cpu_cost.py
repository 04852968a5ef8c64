"""What a gigabit costs, in CPU, to each party: upload vs download, tetherctl vs wireguard-go.

Needs root, wireguard-go, wg, iperf3, iptables, ip. Builds bench_exit_iperf.py's topology (one
client per server, one iperf3 server in inet) and, for each server and direction, runs iperf3
while reading the CPU time (/proc, user + system) of every process involved:

    exit            our daemon, or the reference's wireguard-go server (its kernel forwarding
                    and NAT run in softirq, counted in the machine's softirq column)
    client wg       the client's wireguard-go
    client iperf3   from iperf3's own report (the client process ends with the test)
    server iperf3   the iperf3 server in inet
    softirq         the whole machine's softirq time over the test

as core-seconds per Gbit delivered. On this machine the client and the exit share 2 cores, so
the rate in each direction is about what the sum of a row allows: the table shows which party
a direction is expensive for (issue 14 asks for download >= 0.95 x upload; the last lines say
what the exit's download cost would have to be for that, everything else as measured, and the
ratio the other parties' costs allow with an exit as cheap on a download as on an upload, or free).

    python bench/bench_cpu_cost.py [--runs 3] [--seconds 8]
"""

from __future__ import annotations

import argparse
import json
import os
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
    build,
    cannot_run,
    iperf_rate,
    iperf_start,
    process_netns,
)

from tests.e2e.netlab import NetLab  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")
PARTIES = ("exit", "client wg", "client iperf3", "server iperf3", "softirq")


def netns_pids(ns: str) -> dict[int, str]:
    """The processes in network namespace `ns` (pid -> command name)."""
    try:
        inode = os.stat(f"/var/run/netns/{ns}").st_ino
    except OSError:
        return {}
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if process_netns(entry) != inode:
                continue
            found[int(entry.name)] = (entry / "comm").read_text().strip()
        except (OSError, IndexError, ValueError):
            continue
    return found


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def softirq_seconds() -> float:
    return int(Path("/proc/stat").read_text().split("\n", 1)[0].split()[7]) / TICK


def measure(ns: str, seconds: int, reverse: bool, pids: dict[str, int]) -> dict[str, float]:
    """One iperf3 run from client namespace `ns`: Mbit/s and each party's core-s per Gbit."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    soft = softirq_seconds()
    proc = iperf_start(ns, 5201, seconds, *(["-R"] if reverse else []))
    try:
        out, _ = proc.communicate(timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return {"Mbit/s": 0.0}
    rate = iperf_rate(out)
    gbit = rate * seconds / 1000
    if gbit <= 0:
        return {"Mbit/s": 0.0}
    row = {"Mbit/s": rate}
    for name, pid in pids.items():
        row[name] = (cpu_seconds(pid) - before[name]) / gbit
    row["softirq"] = (softirq_seconds() - soft) / gbit
    try:
        host = json.loads(out)["end"]["cpu_utilization_percent"]["host_total"]
    except (json.JSONDecodeError, KeyError):
        host = float("nan")
    row["client iperf3"] = host / 100 * seconds / gbit
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=8)
    args = parser.parse_args()
    if cannot_run("bench_cpu_cost", ("wireguard-go", "wg", "iperf3", "iptables", "ip")):
        return 0
    results: dict = {}
    lab = NetLab()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            paths = build(lab, Path(tmp), None)
            daemon = paths.pop("pid")
            paths.pop("spy")
            exit_ns, inet_ns = lab.name("x"), lab.name("i")
            exit_procs = netns_pids(exit_ns)
            server_iperf = next(p for p, c in netns_pids(inet_ns).items() if c == "iperf3")
            parties = {}
            for path, ns in paths.items():
                client_wg = next(p for p, c in netns_pids(ns).items() if c == "wireguard-go")
                exit_pid = daemon if path == "tetherctl" else next(
                    p for p, c in exit_procs.items() if c == "wireguard-go"
                )  # fmt: skip
                parties[path] = {
                    "exit": exit_pid, "client wg": client_wg, "server iperf3": server_iperf,
                }  # fmt: skip
                subprocess.run(["ip", "netns", "exec", ns, "ping", "-c", "3", "-i", "0.2",
                                "198.18.2.2"], capture_output=True, timeout=30)  # fmt: skip
            for _run in range(args.runs):
                for direction, reverse in (("upload", False), ("download", True)):
                    for path, ns in paths.items():
                        row = measure(ns, args.seconds, reverse, parties[path])
                        results.setdefault((path, direction), []).append(row)
                        time.sleep(0.5)
    finally:
        lab.close()
    report(args, results)
    return 0


def report(args, results: dict) -> None:
    print(
        f"CPU cost per Gbit (core-seconds), median of {args.runs} runs of {args.seconds}s "
        "(2-core machine: clients, servers and iperf3 share it)"
    )
    print(f"{'':24}{'Mbit/s':>8}" + "".join(f"{p:>15}" for p in PARTIES) + f"{'total':>8}")
    med = {}
    for (path, direction), rows in results.items():
        rows = [r for r in rows if r.get("Mbit/s")]
        if not rows:
            continue
        m = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        med[(path, direction)] = m
        total = sum(m[p] for p in PARTIES)
        print(
            f"{path + ' ' + direction:24}{m['Mbit/s']:8.0f}"
            + "".join(f"{m[p]:15.2f}" for p in PARTIES)
            + f"{total:8.2f}"
        )
    up, down = med.get(("tetherctl", "upload")), med.get(("tetherctl", "download"))
    if up and down:
        rest_down = sum(down[p] for p in PARTIES if p != "exit")
        total_up = sum(up[p] for p in PARTIES)
        # same CPU spent per second in both directions: rate ratio = total_up / total_down
        need = total_up / 0.95 - rest_down
        print(
            f"tetherctl download/upload: rate {down['Mbit/s'] / up['Mbit/s']:.2f}, cost "
            f"{total_up / sum(down[p] for p in PARTIES):.2f}; for 0.95 at the same CPU the exit's "
            f"download cost would have to be {need:.2f} (now {down['exit']:.2f}, its upload "
            f"{up['exit']:.2f})"
        )
        # What the other parties allow whatever the exit does: with the exit's own cost equal
        # in both directions (its upload's), and with an exit that cost nothing at all.
        rest_up = total_up - up["exit"]
        print(
            f"  the client side alone costs {rest_down:.2f} on a download and {rest_up:.2f} on an "
            f"upload: an exit whose download cost its upload's ({up['exit']:.2f}) would reach "
            f"{total_up / (up['exit'] + rest_down):.2f}, one that cost nothing "
            f"{rest_up / rest_down:.2f}"
        )
    print(
        "raw:",
        json.dumps({f"{p} {d}": rows for (p, d), rows in results.items()}),
    )


if __name__ == "__main__":
    sys.exit(main())
