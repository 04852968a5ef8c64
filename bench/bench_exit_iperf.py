"""The headline figure: iperf3 through our device vs through wireguard-go with kernel NAT.

Needs root, wireguard-go, wg, iperf3, iptables, ip. In one run it builds (in network namespaces
it creates and removes):

    c0 (wireguard-go client) ──> exit: tetherctl (our device + userspace exit) ──> inet: iperf3 -s
    c1 (wireguard-go client) ──> exit: wireguard-go + ip_forward + MASQUERADE  ──> inet: iperf3 -s

and measures, alternating between the two paths so machine noise hits both alike, TCP upload,
TCP download, UDP and ping RTT. Prints medians of RUNS runs and our/reference ratios.

    python bench/bench_exit_iperf.py [--runs 3] [--seconds 5] [--profile out.svg]
                                     [--profile-phases DIR]

--profile wraps our daemon in `py-spy record` for its whole life (one flame graph of all tests).
--profile-phases attaches py-spy to the daemon for each test on our path separately and writes
collapsed stacks (DIR/<test>-run<N>.txt, py-spy's raw format, idle samples included) and a
summary of the top functions by own time (DIR/<test>-run<N>.top.txt).

All traffic stays inside the namespaces; every iperf3 run is bounded by --seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.netlab import NetLab, wait_for  # noqa: E402
from tether import keys  # noqa: E402

INET = "198.18.2.2"
# 198.18.0.0/15 is benchmarking space, which the exit refuses by default: the bench's own device
# files open the inet subnet, as an operator opening a range would.
EXIT_SECTION = "[Exit]\nAllowDestinations = 198.18.2.0/24\n\n"


def py_spy() -> str:
    """py-spy from PATH, else the one installed next to this interpreter (a venv's bin/, which
    `ip netns exec` does not put on PATH)."""
    found = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if found is None:
        raise SystemExit("bench_exit_iperf: py-spy not found (pip install py-spy)")
    return found


def daemon_pid(proc) -> int:
    """The Python daemon's pid: `ip netns exec` execs its command, so it is the Popen's pid,
    unless py-spy wraps it, then it is py-spy's child."""
    for _ in range(100):
        exe = os.readlink(f"/proc/{proc.pid}/exe")
        if "py-spy" not in exe:
            return proc.pid
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        if children:
            return int(children[0])
        time.sleep(0.05)
    raise RuntimeError("cannot find the daemon under py-spy")


def top_own(raw: Path, n: int = 25) -> str:
    """Top functions by own (leaf) samples of the daemon's main (event loop) thread, from
    py-spy's collapsed stacks, as % of its busy samples (idle = waiting in select/epoll).
    Other threads (executors) are only counted: in the bench they sit blocked."""
    own: dict[str, int] = {}
    total = idle = other = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        if stack.startswith("Thread._bootstrap"):
            other += c
            continue
        total += c
        leaf = stack.rsplit(";", 1)[-1]
        if "select (selectors.py" in leaf or leaf.startswith("poll ("):
            idle += c
            continue
        leaf = re.sub(r":\d+\)$", ")", leaf)
        own[leaf] = own.get(leaf, 0) + c
    busy = max(1, total - idle)
    lines = [
        f"main thread samples {total}, idle {idle} ({idle / max(1, total):.0%}), busy "
        f"{busy}; other threads' samples {other}"
    ]
    for name, c in sorted(own.items(), key=lambda kv: -kv[1])[:n]:
        lines.append(f"{c / busy:6.1%}  {name}")
    return "\n".join(lines) + "\n"


def process_netns(proc_dir: Path) -> int:
    """The network namespace (its inode, as `os.stat(/var/run/netns/NAME).st_ino` gives it) of
    the process whose /proc directory is `proc_dir`; OSError, IndexError or ValueError when it
    is gone or not readable."""
    return int(os.readlink(proc_dir / "ns/net").split("[")[1].rstrip("]"))


def cpu_times(pid: int) -> tuple[float, float, float, float]:
    """(user, system, on-CPU, waiting-for-a-CPU) seconds of a process's main thread so far
    (the last two from schedstat: a busy loop that is not on a CPU is starved, not slow)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    run, wait = (int(x) / 1e9 for x in Path(f"/proc/{pid}/schedstat").read_text().split()[:2])
    return int(fields[11]) / tick, int(fields[12]) / tick, run, wait


def cannot_run(bench: str, tools: tuple[str, ...]) -> bool:
    """Print why a network-namespace benchmark is skipped (a tool missing, not root)."""
    for tool in tools:
        if shutil.which(tool) is None:
            print(f"{bench}: {tool} not installed; skipped")
            return True
    if os.geteuid() != 0:
        print(f"{bench}: needs root (network namespaces); skipped")
        return True
    return False


def tetherctl_run(conf: Path, *devices: str) -> list[str]:
    """The daemon command line the benchmarks run (quiet logging: logs cost throughput)."""
    return [
        sys.executable,
        "-m",
        "tether",
        "run",
        "--config-dir",
        str(conf),
        "--log",
        "warning",
        *devices,
    ]


def device_file(priv: str, port: int, subnet: str, client_privs) -> str:
    """Our bench device's file: UDP `port`, tunnel `subnet`.1/24, client k at `subnet`.(k+2),
    the inet subnet opened in [Exit]."""
    peers = "".join(
        f"[Peer]\nPublicKey = {keys.pubkey(c)}\nAllowedIPs = {subnet}.{k + 2}/32\n\n"
        for k, c in enumerate(client_privs)
    )
    return (
        f"[Interface]\nPrivateKey = {priv}\nListenPort = {port}\nAddress = {subnet}.1/24\n\n"
        f"{EXIT_SECTION}{peers}"
    )


def ours_server(lab: NetLab, exit_ns: str, tmp: Path, priv: str, client_privs, profile=None):
    """Our device (UDP 51820, tunnel 10.99.0.1/24, client k at 10.99.0.(k+2)) under `tetherctl
    run` in the exit namespace, up; returns the daemon's process (`profile`: under py-spy)."""
    dev = lab.name("td")
    conf = tmp / "conf"
    conf.mkdir()
    (conf / f"{dev}.conf").write_text(device_file(priv, 51820, "10.99.0", client_privs))
    argv = tetherctl_run(conf, dev)
    if profile:
        argv = [py_spy(), "record", "-o", profile, "-r", "200", "--", *argv]
    proc = lab.spawn(
        exit_ns, *argv, log=tmp / "tetherctl.log", env=dict(os.environ, PYTHONPATH=str(REPO))
    )
    lab.sockets.append(Path(f"/var/run/wireguard/{dev}.sock"))
    wait_for(lambda: Path(f"/var/run/wireguard/{dev}.sock").exists(), 20, "tetherctl up")
    return proc


def reference_server(lab: NetLab, exit_ns: str, inet_if: str, priv: str, client_privs) -> None:
    """The reference: wireguard-go (UDP 51821, tunnel 10.98.0.1/24, client k at 10.98.0.(k+2))
    with kernel forwarding and MASQUERADE toward inet."""
    peers = "".join(
        f"[Peer]\nPublicKey = {keys.pubkey(c)}\nAllowedIPs = 10.98.0.{k + 2}/32\n\n"
        for k, c in enumerate(client_privs)
    )
    lab.wireguard_go(
        exit_ns,
        lab.name("wr"),
        f"[Interface]\nPrivateKey = {priv}\nListenPort = 51821\n\n{peers}",
        ["10.98.0.1/24"],
    )
    lab.ns_sh(exit_ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    lab.ns_sh(
        exit_ns, "iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "10.98.0.0/24",
        "-o", inet_if, "-j", "MASQUERADE",
    )  # fmt: skip


def build(lab: NetLab, tmp: Path, profile: str | None):
    exit_ns, inet_ns = lab.netns("x"), lab.netns("i")
    inet_if, _ = lab.link(exit_ns, inet_ns, ["198.18.2.1/24"], [f"{INET}/24"])
    lab.spawn(inet_ns, "iperf3", "-s", "-p", "5201", log=tmp / "iperf-server.log")
    wait_for(
        lambda: "5201" in lab.ns_sh(inet_ns, "ss", "-ltn", check=False).stdout, 10, "iperf3 server"
    )
    paths = {}
    # (a) our device
    priv, ours_client = keys.genkey(), keys.genkey()
    proc = ours_server(lab, exit_ns, tmp, priv, [ours_client], profile)
    paths["tetherctl"] = client(
        lab, "0", exit_ns, ours_client, keys.pubkey(priv), 51820, "10.99.0.2", "198.18.10"
    )
    paths["pid"] = daemon_pid(proc)
    paths["spy"] = proc if profile else None
    # (b) the reference: wireguard-go server + kernel forwarding + MASQUERADE
    ref_priv, ref_client = keys.genkey(), keys.genkey()
    reference_server(lab, exit_ns, inet_if, ref_priv, [ref_client])
    paths["wireguard-go"] = client(
        lab, "1", exit_ns, ref_client, keys.pubkey(ref_priv), 51821, "10.98.0.2", "198.18.11"
    )
    return paths


def client(lab, i, exit_ns, priv, server_pub, port, tunnel_ip, underlay):
    ns = lab.netns(f"c{i}")
    lab.link(ns, exit_ns, [f"{underlay}.2/24"], [f"{underlay}.1/24"])
    ifname = lab.name(f"w{i}")
    lab.wireguard_go(
        ns,
        ifname,
        f"[Interface]\nPrivateKey = {priv}\n\n[Peer]\nPublicKey = {server_pub}\n"
        f"AllowedIPs = 0.0.0.0/0\nEndpoint = {underlay}.1:{port}\n",
        [f"{tunnel_ip}/24"],
    )
    lab.sh("ip", "-n", ns, "route", "add", "default", "dev", ifname)
    return ns


def iperf_start(ns: str, port: int, seconds: int, *extra: str) -> subprocess.Popen:
    """An iperf3 client toward inet from namespace `ns`, running (JSON on its stdout)."""
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, "iperf3", "-c", INET, "-p", str(port), "-t", str(seconds),
         "-J", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )  # fmt: skip


def iperf_rate(out: str, udp: bool = False) -> float:
    """Mbit/s from `iperf3 -J` output: received (TCP) or delivered (UDP: sent less lost); 0.0
    for a run that failed (a failure shows in the figures, it does not abort the bench)."""
    try:
        data = json.loads(out)
    except json.JSONDecodeError:
        return 0.0
    end = data.get("end", {})
    if udp:
        total = end.get("sum", {})
        return (
            total.get("bits_per_second", 0.0) * (1 - total.get("lost_percent", 100.0) / 100) / 1e6
        )
    return end.get("sum_received", {}).get("bits_per_second", 0.0) / 1e6


def iperf(lab, ns, seconds, *extra) -> float:
    out = lab.ns_sh(
        ns,
        "iperf3",
        "-c",
        INET,
        "-p",
        "5201",
        "-t",
        str(seconds),
        "-J",
        *extra,
        check=False,
        timeout=seconds + 60,
    )
    return iperf_rate(out.stdout, udp="-u" in extra)


def ping_rtt(lab, ns) -> float:
    out = lab.ns_sh(
        ns, "ping", "-c", "20", "-i", "0.05", "-W", "2", INET, check=False, timeout=60
    ).stdout
    m = re.search(r"= [\d.]+/([\d.]+)/", out)
    return float(m.group(1)) if m else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--udp-rate", default="400M")
    parser.add_argument("--profile", help="record our daemon with py-spy into this SVG")
    parser.add_argument(
        "--profile-phases",
        metavar="DIR",
        help="py-spy our daemon per test into DIR (collapsed stacks + top list)",
    )
    args = parser.parse_args()
    if args.profile and args.profile_phases:
        parser.error("--profile and --profile-phases cannot both attach to the daemon")
    if args.profile_phases:
        Path(args.profile_phases).mkdir(parents=True, exist_ok=True)
    if cannot_run("bench_exit_iperf", ("wireguard-go", "wg", "iperf3", "iptables", "ip")):
        return 0
    tests = {
        "TCP upload Mbit/s": ("",),
        "TCP download Mbit/s": ("-R",),
        "UDP Mbit/s (delivered)": ("-u", "-b", args.udp_rate, "-l", "1300"),
    }
    results = {name: {p: [] for p in ("tetherctl", "wireguard-go")} for name in tests}
    rtts = {"tetherctl": [], "wireguard-go": []}
    lab = NetLab()
    spy_all = None
    try:
        with tempfile.TemporaryDirectory() as tmp:
            paths = build(lab, Path(tmp), args.profile)
            pid, spy_all = paths.pop("pid"), paths.pop("spy")
            for ns in paths.values():  # warm up: handshakes done before measuring
                ping_rtt(lab, ns)
            for _run in range(args.runs):
                for name, extra in tests.items():
                    for path, ns in paths.items():
                        spy = None
                        if args.profile_phases and path == "tetherctl":
                            slug = re.sub(r"[^a-z]+", "-", name.lower()).strip("-")
                            raw = Path(args.profile_phases) / f"{slug}-run{_run + 1}.txt"
                            spy = subprocess.Popen(
                                [
                                    py_spy(),
                                    "record",
                                    "--pid",
                                    str(pid),
                                    "--rate",
                                    "200",
                                    "--duration",
                                    str(max(1, args.seconds - 1)),
                                    "--idle",
                                    "--format",
                                    "raw",
                                    "--output",
                                    str(raw),
                                ],
                                stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL,
                            )
                            cpu0, t0 = cpu_times(pid), time.monotonic()
                        results[name][path].append(
                            iperf(lab, ns, args.seconds, *[e for e in extra if e])
                        )
                        if spy is not None:
                            cpu1, t1 = cpu_times(pid), time.monotonic()
                            spy.wait(30)
                            if raw.exists():
                                raw.with_suffix(".top.txt").write_text(
                                    f"{results[name][path][-1]:.0f} Mbit/s; daemon CPU over "
                                    f"{t1 - t0:.1f}s: user {cpu1[0] - cpu0[0]:.2f}s, "
                                    f"system {cpu1[1] - cpu0[1]:.2f}s; main thread on CPU "
                                    f"{cpu1[2] - cpu0[2]:.2f}s, runnable but waiting "
                                    f"{cpu1[3] - cpu0[3]:.2f}s\n" + top_own(raw)
                                )
                        time.sleep(0.5)
                for path, ns in paths.items():
                    rtts[path].append(ping_rtt(lab, ns))
    finally:
        if spy_all is not None and spy_all.poll() is None:
            # py-spy writes its SVG on SIGINT (Ctrl-C); the SIGTERM of lab.close() would lose it
            os.kill(spy_all.pid, signal.SIGINT)
            try:
                spy_all.wait(60)
            except subprocess.TimeoutExpired:
                print("bench_exit_iperf: py-spy did not finish writing the profile")
        lab.close()
    print(
        f"iperf3 through WireGuard, median of {args.runs} runs of {args.seconds}s "
        "(2-core machine; client, server and iperf3 share it)"
    )
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
