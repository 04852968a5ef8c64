"""Memory of the daemon with ten peers each held at their flow limit.

Needs root, wireguard-go, wg, ip, curl, ping. Builds the end-to-end topology (DESIGN.md §6)
with ten wireguard-go clients, each its own peer of one tetherctl device. Each client then
opens its whole per-peer allowance (`max_flows_per_peer`, 1,024 by default): half TCP
connections to a server that accepts and never reads, each carrying 256 KiB the server never
takes, half UDP flows (one datagram each to an echo server), and holds them. Prints the
daemon's resident memory (VmRSS, and the peak VmHWM) and its open descriptors, idle and
with every peer at its limit.

    python bench/bench_exit_memory.py [--peers 10] [--flows 1024] [--hold 20]

Bounded: the clients hold their flows for --hold seconds, then close them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_exit_iperf import cannot_run  # noqa: E402

from tests.e2e.netlab import NetLab, wait_for  # noqa: E402
from tests.e2e.topology import INET4, TOOLS, Topology  # noqa: E402


def memory(pid: int) -> dict:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    mb = {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")}
    return {**mb, "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=10)
    parser.add_argument("--flows", type=int, default=1024, help="flows per peer (its limit)")
    parser.add_argument("--hold", type=float, default=20)
    args = parser.parse_args()
    if cannot_run("bench_exit_memory", ("wireguard-go", "wg", "ip", "curl", "ping")):
        return 0
    lab = NetLab()
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            topo = Topology(lab, Path(tmp), clients=args.peers)
            pid = topo.daemon.pid
            for i in range(args.peers):  # handshakes done
                topo.client_sh("ping", "-c", "1", "-W", "5", INET4, client=i, timeout=30)
            time.sleep(1)
            rows.append(("idle, sessions up", memory(pid)))
            logs, procs = [], []
            ntcp = args.flows // 2
            for i in range(args.peers):
                log = Path(tmp) / f"hold{i}.log"
                logs.append(log)
                procs.append(
                    lab.spawn(
                        topo.clients[i]["ns"],
                        sys.executable,
                        str(TOOLS / "client_checks.py"),
                        "hold",
                        INET4,
                        "7010",
                        "7007",
                        str(ntcp),
                        str(args.flows - ntcp),
                        str(args.hold),
                        log=log,
                    )  # fmt: skip
                )
            wait_for(lambda: all("holding" in log.read_text() for log in logs), 300, "flows held")
            held = [json.loads(log.read_text().splitlines()[0]) for log in logs]
            time.sleep(3)  # the connections' data has moved as far as it can
            rows.append((f"{args.peers} peers x {args.flows} flows held", memory(pid)))
            for proc in procs:
                proc.wait(args.hold + 60)
    finally:
        lab.close()
    tcp = sum(h["tcp"] for h in held)
    udp = sum(h["udp"] for h in held)
    print(
        f"tetherctl daemon memory, {args.peers} peers each opening {args.flows} flows "
        f"({tcp} TCP connections with 256 KiB unread by their server, {udp} UDP flows in all)"
    )
    print(f"{'':36}{'RSS MB':>9}{'peak MB':>9}{'fds':>8}")
    for name, m in rows:
        print(f"{name:36}{m['VmRSS']:9.1f}{m['VmHWM']:9.1f}{m['fds']:8d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
