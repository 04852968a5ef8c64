"""The headline figure: iperf3 through our device vs through wireguard-go with kernel NAT.

Needs root, wireguard-go, wg, iperf3, iptables, ip. In one run it builds (in network namespaces
it creates and removes):

    c0 (wireguard-go client) ──> exit: tetherctl (our device + userspace exit) ──> inet: iperf3 -s
    c1 (wireguard-go client) ──> exit: wireguard-go + ip_forward + MASQUERADE  ──> inet: iperf3 -s

and measures, alternating between the two paths so machine noise hits both alike, TCP upload,
TCP download, UDP and ping RTT. Prints medians of RUNS runs and our/reference ratios.

    python bench/bench_exit_iperf.py [--runs 3] [--seconds 5] [--profile out.svg]

All traffic stays inside the namespaces; every iperf3 run is bounded by --seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.netlab import NetLab, wait_for  # noqa: E402
from tether import keys  # noqa: E402

INET = "198.18.2.2"


def build(lab: NetLab, tmp: Path, profile: str | None):
    exit_ns, inet_ns = lab.netns("x"), lab.netns("i")
    inet_if, _ = lab.link(exit_ns, inet_ns, ["198.18.2.1/24"], [f"{INET}/24"])
    lab.spawn(inet_ns, "iperf3", "-s", "-p", "5201", log=tmp / "iperf-server.log")
    wait_for(lambda: "5201" in lab.ns_sh(inet_ns, "ss", "-ltn", check=False).stdout, 10,
             "iperf3 server")
    paths = {}
    # (a) our device
    dev, priv = lab.name("td"), keys.genkey()
    ours_client = keys.genkey()
    conf = tmp / "conf"
    conf.mkdir()
    (conf / f"{dev}.conf").write_text(
        f"[Interface]\nPrivateKey = {priv}\nListenPort = 51820\nAddress = 10.99.0.1/24\n\n"
        f"[Peer]\nPublicKey = {keys.pubkey(ours_client)}\nAllowedIPs = 10.99.0.2/32\n")
    log = tmp / "tetherctl.log"
    argv = [sys.executable, "-m", "tether", "run", "--config-dir", str(conf), "--log",
            "warning", dev]
    if profile:
        argv = ["py-spy", "record", "-o", profile, "-r", "200", "--", *argv]
    lab.spawn(exit_ns, *argv, log=log, env=dict(os.environ, PYTHONPATH=str(REPO)))
    lab.sockets.append(Path(f"/var/run/wireguard/{dev}.sock"))
    wait_for(lambda: Path(f"/var/run/wireguard/{dev}.sock").exists(), 20, "tetherctl up")
    paths["tetherctl"] = client(lab, "0", exit_ns, ours_client, keys.pubkey(priv), 51820,
                                "10.99.0.2", "198.18.10")
    # (b) the reference: wireguard-go server + kernel forwarding + MASQUERADE
    ref_if, ref_priv, ref_client = lab.name("wr"), keys.genkey(), keys.genkey()
    lab.wireguard_go(exit_ns, ref_if,
                     f"[Interface]\nPrivateKey = {ref_priv}\nListenPort = 51821\n\n"
                     f"[Peer]\nPublicKey = {keys.pubkey(ref_client)}\n"
                     "AllowedIPs = 10.98.0.2/32\n", ["10.98.0.1/24"])
    lab.ns_sh(exit_ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    lab.ns_sh(exit_ns, "iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "10.98.0.0/24",
              "-o", inet_if, "-j", "MASQUERADE")
    paths["wireguard-go"] = client(lab, "1", exit_ns, ref_client, keys.pubkey(ref_priv), 51821,
                                   "10.98.0.2", "198.18.11")
    return paths


def client(lab, i, exit_ns, priv, server_pub, port, tunnel_ip, underlay):
    ns = lab.netns(f"c{i}")
    lab.link(ns, exit_ns, [f"{underlay}.2/24"], [f"{underlay}.1/24"])
    ifname = lab.name(f"w{i}")
    lab.wireguard_go(ns, ifname,
                     f"[Interface]\nPrivateKey = {priv}\n\n[Peer]\nPublicKey = {server_pub}\n"
                     f"AllowedIPs = 0.0.0.0/0\nEndpoint = {underlay}.1:{port}\n",
                     [f"{tunnel_ip}/24"])
    lab.sh("ip", "-n", ns, "route", "add", "default", "dev", ifname)
    return ns


def iperf(lab, ns, seconds, *extra) -> float:
    out = lab.ns_sh(ns, "iperf3", "-c", INET, "-p", "5201", "-t", str(seconds), "-J", *extra,
                    check=False, timeout=seconds + 60)
    try:
        data = json.loads(out.stdout)
    except json.JSONDecodeError:
        return 0.0
    end = data.get("end", {})
    if "-u" in extra:
        return end.get("sum", {}).get("bits_per_second", 0.0) * (
            1 - end.get("sum", {}).get("lost_percent", 100.0) / 100) / 1e6
    return end.get("sum_received", {}).get("bits_per_second", 0.0) / 1e6


def ping_rtt(lab, ns) -> float:
    out = lab.ns_sh(ns, "ping", "-c", "20", "-i", "0.05", "-W", "2", INET, check=False,
                    timeout=60).stdout
    m = re.search(r"= [\d.]+/([\d.]+)/", out)
    return float(m.group(1)) if m else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--udp-rate", default="400M")
    parser.add_argument("--profile", help="record our daemon with py-spy into this SVG")
    args = parser.parse_args()
    for tool in ("wireguard-go", "wg", "iperf3", "iptables", "ip"):
        if shutil.which(tool) is None:
            print(f"bench_exit_iperf: {tool} not installed; skipped")
            return 0
    if os.geteuid() != 0:
        print("bench_exit_iperf: needs root (network namespaces); skipped")
        return 0
    tests = {
        "TCP upload Mbit/s": ("",),
        "TCP download Mbit/s": ("-R",),
        "UDP Mbit/s (delivered)": ("-u", "-b", args.udp_rate, "-l", "1300"),
    }
    results = {name: {p: [] for p in ("tetherctl", "wireguard-go")} for name in tests}
    rtts = {"tetherctl": [], "wireguard-go": []}
    lab = NetLab()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            paths = build(lab, Path(tmp), args.profile)
            for ns in paths.values():  # warm up: handshakes done before measuring
                ping_rtt(lab, ns)
            for _run in range(args.runs):
                for name, extra in tests.items():
                    for path, ns in paths.items():
                        results[name][path].append(iperf(lab, ns, args.seconds, *[
                            e for e in extra if e]))
                        time.sleep(0.5)
                for path, ns in paths.items():
                    rtts[path].append(ping_rtt(lab, ns))
    finally:
        lab.close()
    print(f"iperf3 through WireGuard, median of {args.runs} runs of {args.seconds}s "
          "(2-core machine; client, server and iperf3 share it)")
    print(f"{'':28}{'tetherctl':>12}{'wireguard-go':>14}{'ratio':>8}")
    for name in tests:
        ours = statistics.median(results[name]["tetherctl"])
        ref = statistics.median(results[name]["wireguard-go"])
        ratio = ours / ref if ref else float("nan")
        print(f"{name:28}{ours:12.0f}{ref:14.0f}{ratio:8.0%}")
    ours, ref = statistics.median(rtts["tetherctl"]), statistics.median(rtts["wireguard-go"])
    print(f"{'ping RTT ms':28}{ours:12.3f}{ref:14.3f}")
    print("raw:", json.dumps({"results": results, "rtt": rtts}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
