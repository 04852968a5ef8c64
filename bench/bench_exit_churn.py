"""Connection churn through the exit: back-to-back short TCP connections, ours vs the reference.

Needs root, wireguard-go, wg, iptables, ip. Builds the two paths of `bench_exit_iperf.py`
(a wireguard-go client through tetherctl, and one through wireguard-go + kernel forwarding +
MASQUERADE) with the end-to-end tests' `inet` servers, and runs, alternating between the
paths, sequential connections to a server that writes one line and closes (as an HTTP/1.0
server does, so every connection ends in TIME-WAIT at the exit). Prints connections per
second and refusals (a reset or refused connect), medians of RUNS runs.

    python bench/bench_exit_churn.py [--runs 3] [--seconds 10] [--count 5000]

Each run is bounded by --seconds and --count; all traffic stays inside the namespaces.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_exit_iperf import INET, build, cannot_run  # noqa: E402

from tests.e2e.netlab import NetLab, wait_for  # noqa: E402

TOOLS = REPO / "tests" / "e2e" / "tools"


def start_inet_servers(lab: NetLab, tmp: Path) -> None:
    """The end-to-end tests' servers in the bench's `inet` namespace (next to iperf3)."""
    www, ready = tmp / "www", tmp / "inet.ready"
    www.mkdir()
    lab.spawn(
        lab.name("i"), sys.executable, str(TOOLS / "inet_servers.py"), str(www), str(ready),
        log=tmp / "inet.log",
    )  # fmt: skip
    wait_for(ready.exists, 15, "inet servers")


def churn(lab: NetLab, ns: str, seconds: float, count: int) -> dict:
    out = lab.ns_sh(
        ns, sys.executable, str(TOOLS / "client_checks.py"), "churn", INET, "7011",
        str(seconds), str(count), check=False, timeout=seconds + 60,
    )  # fmt: skip
    lines = out.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError(f"churn client failed: {out.stderr}")
    return json.loads(lines[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--count", type=int, default=5000)
    args = parser.parse_args()
    if cannot_run("bench_exit_churn", ("wireguard-go", "wg", "iperf3", "iptables", "ip")):
        return 0
    results: dict[str, list[dict]] = {"tetherctl": [], "wireguard-go": []}
    lab = NetLab()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            paths = build(lab, Path(tmp), None)
            paths.pop("pid"), paths.pop("spy")
            start_inet_servers(lab, Path(tmp))
            for ns in paths.values():  # warm up: handshakes done before measuring
                churn(lab, ns, 2, 50)
            for _ in range(args.runs):
                for path, ns in paths.items():
                    results[path].append(churn(lab, ns, args.seconds, args.count))
                    time.sleep(4.5)  # let this run's TIME-WAIT connections go
    finally:
        lab.close()
    print(
        f"back-to-back TCP connections (one line, server closes first), median of {args.runs} "
        f"runs of at most {args.seconds:g} s / {args.count} connections (2-core machine)"
    )
    print(f"{'':24}{'tetherctl':>12}{'wireguard-go':>14}{'ratio':>8}")
    ours = statistics.median(r["rate"] for r in results["tetherctl"])
    ref = statistics.median(r["rate"] for r in results["wireguard-go"])
    print(f"{'connections/s':24}{ours:12.0f}{ref:14.0f}{ours / ref if ref else 0:8.0%}")
    for what in ("refused", "errors"):
        counts = [sum(r[what] for r in results[p]) for p in ("tetherctl", "wireguard-go")]
        print(f"{what + ' (all runs)':24}{counts[0]:12d}{counts[1]:14d}")
    print("raw:", json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
