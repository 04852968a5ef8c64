"""A call's far end under load: how long its answers wait in the exit.

ping_split.py measures pings to a host that answers at once, so a reply comes back while the
exit is still on the batch that carried its request. The far end of a call, a game or a DNS
server answers milliseconds later, in the middle of some other batch (an upload's, a
download's): what it measures is how soon the exit notices an answer it did not just ask for.

bench_exit_load --far-end MS runs, next to each ping under load, a prober in the client's
namespace that sends a small UDP datagram every 20 ms to a server in the inet namespace, which
sends each back MS later; the prober reports each round trip less MS. With --split, a capture
in the exit's namespace pairs each answer coming In from the server with the next tunnel
datagram of the probes' size going Out: the exit's share of the answer, for either server.

The probes have a size no other packet of the bench has: 8 + 150 bytes of UDP payload is a
186-byte IPv4 packet, padded to 192 by WireGuard, a 224-byte message, a UDP length of 232.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import ping_split

__all__ = ["PORT", "Prober", "answer_shares", "capture", "start_server"]

PORT = 7777
_PAYLOAD = 150  # after the 8-byte send time
_UDP_LENGTH = 8 + 16 + 192 + 16  # UDP header, WireGuard data header, padded packet, tag
_SERVER_PORT = re.compile(rf"\.{PORT}[: ]")

SERVER = """
import heapq, select, socket, sys, time
address, port = sys.argv[1], int(sys.argv[2])
delay, seconds = float(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((address, port))
end, due = time.monotonic() + seconds, []
while time.monotonic() < end:
    wait = min(0.5, max(0.0, due[0][0] - time.monotonic())) if due else 0.5
    if select.select([s], [], [], wait)[0]:
        data, source = s.recvfrom(2048)
        heapq.heappush(due, (time.monotonic() + delay, data, source))
    while due and due[0][0] <= time.monotonic():
        _, data, source = heapq.heappop(due)
        s.sendto(data, source)
"""

PROBER = """
import json, socket, struct, sys, time
address, port = sys.argv[1], int(sys.argv[2])
seconds, delay, size = float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((address, port))
rtts, sent, end = [], 0, time.monotonic() + seconds
while time.monotonic() < end:
    t0 = time.monotonic()
    s.send(struct.pack("!d", t0) + bytes(size))
    sent += 1
    s.settimeout(delay + 0.5)
    try:
        while struct.unpack("!d", s.recv(2048)[:8])[0] != t0:
            pass  # an answer that came after its own deadline
        rtts.append((time.monotonic() - t0 - delay) * 1e3)
    except (TimeoutError, OSError):
        pass
    time.sleep(max(0.0, t0 + 0.02 - time.monotonic()))
print(json.dumps({"rtts": rtts, "sent": sent}))
"""


def start_server(lab, ns: str, address: str, delay_ms: float, seconds: float):
    """The far end in the lab's namespace `ns`, on `address`:PORT, for `seconds` (it stops by
    itself; the lab ends it with the others)."""
    return lab.spawn(ns, sys.executable, "-c", SERVER, address, str(PORT), str(delay_ms / 1e3),
                     str(seconds))  # fmt: skip


class Prober:
    """Probes from namespace `ns` to the far end for `seconds`; `result()` waits for them."""

    def __init__(self, ns: str, address: str, delay_ms: float, seconds: float) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", PROBER, address, str(PORT),
             str(seconds), str(delay_ms / 1e3), str(_PAYLOAD)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        self.seconds = seconds

    def result(self) -> tuple[list[float], int]:
        """Each answered probe's round trip less the far end's delay (ms), and how many were
        sent."""
        try:
            out, _ = self.proc.communicate(timeout=self.seconds + 30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            return [], 0
        try:
            got = json.loads(out.strip().splitlines()[-1])
            return [float(x) for x in got["rtts"]], int(got["sent"])
        except (ValueError, KeyError, IndexError):
            return [], 0


def answer_shares(tcpdump_text: str) -> list[float]:
    """The exit's share (ms) of each far-end answer, from `tcpdump -tt -nn` lines of an `any`
    capture: from an answer coming In from the server's port to the next datagram going Out
    that is not toward the server (the probe's tunnel datagram)."""

    def server(line: str) -> bool:
        return _SERVER_PORT.search(line) is not None

    return ping_split.shares(tcpdump_text, begins=server, ends=lambda line: not server(line))


def capture(ns: str, pcap: Path) -> ping_split.Capture:
    """tcpdump in namespace `ns` for the far end's datagrams and the probes' tunnel datagrams,
    read with `answer_shares` when stopped."""
    bpf = f"(udp and port {PORT}) or (udp and udp[4:2] == {_UDP_LENGTH})"
    return ping_split.Capture(ns, pcap, bpf, answer_shares)
