"""The exit's IO shell: the sans-IO `Exit` (tether.netstack.exit) driven on the device's loop
with host sockets, as the device's `Inside`.

- `shell`: ExitShell, the Inside (sockets per flow, the exit's actions carried out);
- `host`: the host's addresses, the descriptor limit, the ping sockets;
- `sockets`: what a TCP flow's handle holds;
- `egress`, `proxy`: flows through an upstream SOCKS5 proxy (`Egress = socks5://...`), and the
  proxies themselves (address, health, probes, log lines).
"""

from tether.device.exit.shell import ExitShell, discover_host_addresses

__all__ = ["ExitShell", "discover_host_addresses"]
