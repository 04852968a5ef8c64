"""Sans-IO exit netstack: IP, UDP, ICMP and a TCP terminator. Knows nothing of WireGuard."""
