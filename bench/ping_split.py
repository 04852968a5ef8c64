"""Where a ping's round trip goes under load: in the exit, or on the client's side.

bench_exit_load --split captures, with tcpdump in the exit's namespace, the WireGuard datagram
that carries each echo request in and the one that carries its reply out. Their distance is
the exit's share of the round trip (its socket queue, decryption, the host's ICMP, the reply's
wait and encryption: all of it, for either server); the rest of ping's RTT is the client's
share (its own queues behind the load, wireguard-go, its kernel) and the veth links.

The pings are sent with a payload no other packet of the bench has (PING_SIZE), so a kernel
filter picks their datagrams by length alone: an ICMP echo of 200 bytes is a 228-byte IPv4
packet, padded to 240 by WireGuard, a 272-byte message, a UDP length of 280. Pings go every
50 ms and take a few, so each request's datagram is followed by its reply's before the next
request's; a lost one leaves a request without a reply, which is skipped. A TCP segment of
225-240 bytes would pad to the same length and pass the filter: bulk iperf3 traffic has none
(full segments and ACKs), but a stray one could shorten one ping's share.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

__all__ = ["PING_SIZE", "Capture", "available", "shares"]

PING_SIZE = 200
_UDP_LENGTH = 8 + 16 + 240 + 16  # UDP header, WireGuard data header, padded packet, tag


def shares(tcpdump_text: str, begins=None, ends=None) -> list[float]:
    """The exit's share (ms) of each ping, from `tcpdump -tt -nn` lines of an `any` capture:
    from a datagram coming In to the next one going Out (of those lines `begins` and `ends`
    accept, when given: far_end.py's capture holds other datagrams too)."""
    out: list[float] = []
    start = None
    for line in tcpdump_text.splitlines():
        fields = line.split()
        if len(fields) < 3 or "UDP" not in line:
            continue
        try:
            t = float(fields[0])
        except ValueError:
            continue
        if fields[2] == "In" and (begins is None or begins(line)):
            start = t
        elif fields[2] == "Out" and start is not None and (ends is None or ends(line)):
            out.append((t - start) * 1e3)
            start = None
    return out


class Capture:
    """tcpdump in namespace `ns` for the ping datagrams (or what `bpf` picks), into `pcap`,
    until `stop()`, which reads the capture with `parse` (`shares`, or far_end's)."""

    def __init__(self, ns: str, pcap: Path, bpf: str = "", parse=None) -> None:
        self.pcap = pcap
        self.parse = parse or shares
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, "tcpdump", "-i", "any", "-nn", "-B", "8192",
             "--time-stamp-precision=nano", "-w", str(pcap),
             bpf or f"udp and udp[4:2] == {_UDP_LENGTH}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip

    def close(self) -> None:
        """End tcpdump if `stop` never did (the measurement failed half way)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> list[float]:
        """The exit's share of each ping (or answer) captured (ms), in order."""
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if not self.pcap.exists():
            return []
        text = subprocess.run(
            ["tcpdump", "-r", str(self.pcap), "-nn", "-tt", "--time-stamp-precision=nano"],
            capture_output=True, text=True, timeout=60,
        ).stdout  # fmt: skip
        return self.parse(text)


def available() -> bool:
    return shutil.which("tcpdump") is not None
