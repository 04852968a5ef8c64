"""Sans-IO exit netstack: IP, UDP, ICMP and a TCP terminator. Knows nothing of WireGuard.

Three sublayers, each importing only the ones below it and each imported by other layers only
through its package face:
- `wire`: packet formats and pure helpers (checksums, IP, fragments, UDP, ICMP, TCP segments);
- `tcp`: the TCP endpoint that terminates a peer's connection (`TcpConnection`);
- `exit`: the dispatcher (`Exit`), destination policy, limits, flow tables and the actions the
  IO shell executes.
"""

__all__ = ["exit", "tcp", "wire"]
