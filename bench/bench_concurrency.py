"""Which concurrency model: every device on one event loop, or one process per device?

The device and the exit run on one asyncio loop per process (the GIL makes threads useless for
the per-packet Python work). This measures what the alternative buys: two wireguard-go clients
download at the same time through two devices, served (a) by ONE `tetherctl run dev1 dev2`
process, and (b) by TWO processes, `tetherctl run dev1` and `tetherctl run dev2` (what the
`tetherctl@` systemd template gives). Prints the aggregate iperf3 TCP download (medians).

    python bench/bench_concurrency.py [--runs 3] [--seconds 5]

Root, wireguard-go, wg, iperf3, ip needed; all traffic stays in namespaces it creates.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_exit_iperf import (  # noqa: E402
    EXIT_SECTION,
    INET,
    client,
    iperf_rate,
    iperf_start,
    tetherctl_run,
)

from tests.e2e.netlab import NetLab, wait_for  # noqa: E402
from tether import keys  # noqa: E402


def build(lab: NetLab, tmp: Path, split: bool) -> list[str]:
    exit_ns, inet_ns = lab.netns("x"), lab.netns("i")
    lab.link(exit_ns, inet_ns, ["198.18.2.1/24"], [f"{INET}/24"])
    for port in (5201, 5202):
        lab.spawn(inet_ns, "iperf3", "-s", "-p", str(port), log=tmp / f"iperf{port}.log")
    wait_for(
        lambda: "5202" in lab.ns_sh(inet_ns, "ss", "-ltn", check=False).stdout, 10, "iperf3 servers"
    )
    conf = tmp / "conf"
    conf.mkdir()
    devices, clients = [], []
    for i in range(2):
        dev, priv, cpriv = lab.name(f"d{i}"), keys.genkey(), keys.genkey()
        (conf / f"{dev}.conf").write_text(
            f"[Interface]\nPrivateKey = {priv}\nListenPort = {51820 + i}\n"
            f"Address = 10.9{i}.0.1/24\n\n{EXIT_SECTION}[Peer]\nPublicKey = {keys.pubkey(cpriv)}\n"
            f"AllowedIPs = 10.9{i}.0.2/32\n"
        )
        devices.append(dev)
        clients.append((cpriv, keys.pubkey(priv), 51820 + i, f"10.9{i}.0.2", f"198.18.1{i}"))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    groups = [[d] for d in devices] if split else [devices]
    for n, group in enumerate(groups):
        lab.spawn(
            exit_ns,
            *tetherctl_run(conf, *group),
            log=tmp / f"daemon{n}.log",
            env=env,
        )
    for dev in devices:
        lab.sockets.append(Path(f"/var/run/wireguard/{dev}.sock"))
        wait_for(lambda dev=dev: Path(f"/var/run/wireguard/{dev}.sock").exists(), 20, "up")
    return [client(lab, str(i), exit_ns, *c) for i, c in enumerate(clients)]


def parallel_download(lab: NetLab, namespaces: list[str], seconds: int) -> float:
    procs = [iperf_start(ns, 5201 + i, seconds, "-R") for i, ns in enumerate(namespaces)]
    total = 0.0
    for proc in procs:
        out, _ = proc.communicate(timeout=seconds + 60)
        total += iperf_rate(out)
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args()
    if os.geteuid() != 0 or any(
        shutil.which(t) is None for t in ("wireguard-go", "wg", "iperf3", "ip")
    ):
        print("bench_concurrency: needs root, wireguard-go, wg, iperf3, ip; skipped")
        return 0
    results = {}
    for label, split in (("one process, both devices", False), ("one process per device", True)):
        lab = NetLab()
        try:
            with tempfile.TemporaryDirectory() as tmp:
                namespaces = build(lab, Path(tmp), split)
                for ns in namespaces:
                    lab.ns_sh(ns, "ping", "-c", "2", "-W", "2", INET, check=False)
                results[label] = [
                    parallel_download(lab, namespaces, args.seconds) for _ in range(args.runs)
                ]
        finally:
            lab.close()
    print(f"two clients downloading at once (iperf3 -R), aggregate Mbit/s, median of {args.runs}")
    for label, values in results.items():
        print(
            f"  {label:28}{statistics.median(values):8.0f}   runs: "
            + ", ".join(f"{v:.0f}" for v in values)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
