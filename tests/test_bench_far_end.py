"""bench/far_end.py: reading the capture (each answer In from the far end paired with the next
probe-sized datagram Out toward the client), and its server and prober scripts, run for real on
loopback."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import far_end  # noqa: E402

CAPTURE = """\
1796188934.000000000 t1a3 In  IP 198.19.0.2.40000 > 198.19.0.1.51820: UDP, length 224
1796188934.000100000 t1x1 Out IP 198.18.2.1.40001 > 198.18.2.2.7777: UDP, length 158
1796188934.005300000 t1x1 In  IP 198.18.2.2.7777 > 198.18.2.1.40001: UDP, length 158
1796188934.005500000 t1a3 Out IP 198.19.0.1.51820 > 198.19.0.2.40000: UDP, length 224
1796188934.020000000 t1a3 In  IP 198.19.0.2.40000 > 198.19.0.1.51820: UDP, length 224
1796188934.020100000 t1x1 Out IP 198.18.2.1.40001 > 198.18.2.2.7777: UDP, length 158
1796188934.025100000 t1x1 In  IP 198.18.2.2.7777 > 198.18.2.1.40001: UDP, length 158
1796188934.026300000 t1a3 Out IP 198.19.0.1.51820 > 198.19.0.2.40000: UDP, length 224
1796188934.040000000 t1a3 Out IP 198.19.0.1.51820 > 198.19.0.2.40000: UDP, length 224
garbage line
"""


def test_each_answer_is_paired_with_the_next_tunnel_datagram_out():
    got = far_end.answer_shares(CAPTURE)
    assert [round(x, 3) for x in got] == [0.2, 1.2]  # the last Out had no answer before it


def answering(port: int, seconds: float) -> bool:
    """Whether the far end on loopback `port` answers within `seconds` (asked every 0.1 s)."""
    end = time.monotonic() + seconds
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("127.0.0.1", port))
        s.settimeout(0.1)
        while time.monotonic() < end:
            s.send(b"up?")
            try:
                if s.recv(64) == b"up?":
                    return True
            except OSError:  # not yet listening (refused), or not yet answered
                pass
    return False


def test_the_server_answers_late_and_the_prober_takes_the_delay_off():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Its interpreter starts late on purpose, as on a loaded machine: a probe sent before it
    # is up is refused, so the probes start once it answers.
    server = subprocess.Popen(
        ["sh", "-c", 'sleep 0.2; exec "$0" -c "$1" 127.0.0.1 "$2" 0.03 10',
         sys.executable, far_end.SERVER, str(port)],
    )  # fmt: skip
    try:
        assert answering(port, 10.0)
        out = subprocess.run(
            [sys.executable, "-c", far_end.PROBER, "127.0.0.1", str(port), "1.0", "0.03", "150"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
    finally:
        server.kill()
        server.wait()
    got = json.loads(out)
    assert 10 <= got["sent"] <= 40  # one probe every 20 ms, after each answer
    assert len(got["rtts"]) >= got["sent"] - 1
    # RTT less the 30 ms delay: loopback adds little, and never minus the delay
    assert all(-1 < x < 50 for x in got["rtts"]) and sorted(got["rtts"])[len(got["rtts"]) // 2] < 20
