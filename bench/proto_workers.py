"""Prototype (docs/workers.md): one device served by N worker processes on one UDP port.

    python bench/proto_workers.py --workers N [--ready FILE] DEVICE.conf

The parent binds N sockets on the file's ListenPort as one SO_REUSEPORT group with the steering
program attached (tether/device/steering.py), starts worker k with socket k (inherited file
descriptor; the group's order is the order of binding, so socket k is index k of the program)
and keeps its own copies (see `parent`). Each worker is a full Device with its own exit
(ExitShell, the daemon's defaults: loopback and the host's addresses refused) and the whole
file applied, and allocates session indices ≡ k mod N. When every worker is up the parent
creates FILE.

What this prototype does not do, and the notes say how it would be done: no file watching or
reconciling of later edits, no UAPI (`wg show` would have to sum the workers), no forwarding of
peer-to-peer packets between workers, no shared flow limits (each worker enforces the file's
limits on its own), no ownership of a peer's sessions across roaming. It is a benchmark
subject, not a user path: nothing in tether/ starts it.

SIGTERM or SIGINT to the parent stops the workers (by pid) and waits for them; a worker that
dies is replaced on its socket (up to RESTARTS times, then the parent stops all and exits 1).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import resource
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tether.appliance.reconcile import reconcile  # noqa: E402
from tether.config.model import parse_bytes  # noqa: E402
from tether.device import steering  # noqa: E402
from tether.device.device import Device  # noqa: E402
from tether.device.exit import ExitShell  # noqa: E402

START_TIMEOUT = 30.0
RESTARTS = 3  # replacements of dead workers per run, in all


class Channel:
    """The workers' link for forwarded initiations: one unix datagram socket per worker, named
    in the abstract namespace after the parent's pid (so two prototypes never cross). A
    message is the source address (text host, port) and the initiation; a full or missing
    peer socket drops it, as a lossy link would (the peer retries its handshake)."""

    HEAD = struct.Struct("!BH")

    def __init__(self, k: int) -> None:
        self.prefix = f"\0proto-workers-{os.getppid()}-"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(f"{self.prefix}{k}")
        self.sock.setblocking(False)
        self.dropped = 0

    def send(self, owner: int, _key: bytes, datagram: bytes, source: tuple) -> None:
        host = source[0].encode()
        message = self.HEAD.pack(len(host), source[1]) + host + datagram
        try:
            self.sock.sendto(message, f"{self.prefix}{owner}")
        except OSError:  # the owner is restarting, or its buffer is full
            self.dropped += 1

    def receive(self, device: Device) -> None:
        for _ in range(64):
            try:
                message = self.sock.recv(2048)
            except (BlockingIOError, InterruptedError):
                return
            size, port = self.HEAD.unpack_from(message)
            host = message[3 : 3 + size].decode()
            device.receive_forwarded(message[3 + size :], (host, port))


def owner_rule(config, n: int, rule: str):
    """Who owns a peer: None ("tuple": whoever gets its initiation), by key hash, or by the
    peer's position in the file (round robin, balanced for a fixed set of peers)."""
    if rule == "tuple":
        return None
    if rule == "key":
        return lambda key: steering.owner_by_key(key, n)
    order = {peer.public_key: i % n for i, peer in enumerate(config.peers)}
    return lambda key: order.get(key, steering.owner_by_key(key, n))


def worker(conf: Path, k: int, n: int, fd: int, ready: Path, rule: str) -> int:
    """Worker k of n: the device of `conf` on the inherited socket `fd`, until SIGTERM."""
    _, config = parse_bytes(conf.read_bytes(), str(conf))
    iface = config.interface
    sock = socket.socket(fileno=fd)
    owner = owner_rule(config, n, rule)
    channel = Channel(k) if owner is not None else None

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        role = steering.WorkerRole(
            k, n, lambda _port: sock, owner, channel.send if channel is not None else None
        )
        device = Device(
            f"{conf.stem}.{k}",
            private_key=iface.private_key,
            mtu=iface.effective_mtu,
            addresses=iface.addresses,
            inside_factory=functools.partial(ExitShell, allow_local=False),
            exit_settings=config.exit,
            role=role,
        )
        device.start(loop, sock.getsockname()[1])
        if channel is not None:
            loop.add_reader(channel.sock.fileno(), channel.receive, device)
        try:
            reconcile(device, None, config)
            ready.touch()
            await stop.wait()
            summary(device, k, n, channel.dropped if channel is not None else 0)
        finally:
            device.close()

    asyncio.run(main())
    return 0


def summary(device: Device, k: int, n: int, channel_drops: int) -> None:
    """One line on stderr at the end: which peers this worker served and what it cost."""
    state = device.snapshot()
    served = [p for p in state.peers.values() if p.last_handshake is not None]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    line = (
        f"proto_workers: worker {k}/{n}: {len(served)} of {len(state.peers)} peers had a "
        f"handshake here; rx {sum(p.rx_bytes for p in served) / 1e6:.0f} MB, tx "
        f"{sum(p.tx_bytes for p in served) / 1e6:.0f} MB; unknown-index drops "
        f"{state.counters['drop_unknown_index']}; initiations forwarded "
        f"{state.counters['initiations_forwarded']} (lost {channel_drops}); CPU user "
        f"{usage.ru_utime:.1f}s system {usage.ru_stime:.1f}s"
    )
    os.write(2, f"{line}\n".encode())  # one write: the workers share the log


def spawn(
    conf: Path, k: int, n: int, sock: socket.socket, mark: Path, rule: str
) -> subprocess.Popen:
    """Worker k on the parent's socket k (inherited: the same socket, another descriptor)."""
    mark.unlink(missing_ok=True)
    fd = sock.fileno()
    return subprocess.Popen(
        [sys.executable, __file__, "--worker", f"{k}/{n}", "--fd", str(fd), "--ready", str(mark),
         "--owner", rule, str(conf)],
        pass_fds=[fd],
    )  # fmt: skip


def parent(conf: Path, n: int, ready: Path | None, rule: str) -> int:
    """The group's keeper: it holds a descriptor of every socket for the whole run, so a dead
    worker's socket stays in the group (its datagrams wait in its buffer instead of the last
    socket moving into its slot and every residue class behind it going astray), and the
    replacement worker inherits the same socket. At most RESTARTS replacements in all."""
    _, config = parse_bytes(conf.read_bytes(), str(conf))
    group = steering.reuseport_group(config.interface.listen_port or 0, n)
    port = group[0].getsockname()[1]
    marks = [Path(f"{ready or conf}.worker{k}") for k in range(n)]
    procs: list[subprocess.Popen] = []
    stopping = False
    restarts = 0

    def stop(*_):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        procs = [spawn(conf, k, n, sock, marks[k], rule) for k, sock in enumerate(group)]
        deadline = time.monotonic() + START_TIMEOUT
        while not all(m.exists() for m in marks):
            if stopping or time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                print("proto_workers: a worker did not start", file=sys.stderr)
                return 1
            time.sleep(0.05)
        print(f"proto_workers: {conf.stem} on UDP {port}, {n} workers", file=sys.stderr)
        if ready is not None:
            ready.touch()
        while not stopping:
            for k, p in enumerate(procs):
                if p.poll() is None:
                    continue
                if restarts == RESTARTS:
                    print("proto_workers: workers keep dying; stopping", file=sys.stderr)
                    return 1
                restarts += 1
                print(
                    f"proto_workers: worker {k} exited ({p.returncode}); starting another on "
                    "its socket (its sessions and flows are gone)",
                    file=sys.stderr,
                )
                procs[k] = spawn(conf, k, n, group[k], marks[k], rule)
            time.sleep(0.2)
        return 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for sock in group:
            sock.close()
        for mark in marks:
            mark.unlink(missing_ok=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("conf", type=Path)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--ready", type=Path, help="created once every worker is up")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # "k/n": run as worker k
    parser.add_argument("--fd", type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--owner",
        choices=("tuple", "key", "order"),
        default="tuple",
        help="who owns a peer's sessions: whoever gets its initiation (the kernel's 4-tuple "
        "hash), a hash of its key, or its position in the file (round robin); the last two "
        "forward initiations between workers",
    )
    parser.add_argument("--log", default="warning")
    args = parser.parse_args()
    logging.basicConfig(level=args.log.upper(), format="%(name)s: %(message)s")
    if args.worker:
        k, n = (int(x) for x in args.worker.split("/"))
        return worker(args.conf, k, n, args.fd, args.ready, args.owner)
    if not 1 <= args.workers <= steering.MAX_WORKERS:
        parser.error(f"--workers: 1..{steering.MAX_WORKERS}")
    return parent(args.conf, args.workers, args.ready, args.owner)


if __name__ == "__main__":
    sys.exit(main())
