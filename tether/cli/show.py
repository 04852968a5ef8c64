"""`tetherctl show` and `showconf`: a running device's state, as `wg show` / `wg showconf` print it.

They read the device through its UAPI socket, so they work for any device `wg` could show
(ours, or wireguard-go's), and with `--run-dir` for devices whose sockets are elsewhere.
"""

from __future__ import annotations

import os
import sys
import time

from tether import keys
from tether.device.uapi.client import get
from tether.device.uapi.protocol import UapiError
from tether.device.uapi.server import run_dir


def register(sub) -> None:
    """Add `show` and `showconf` to the top-level parser."""
    p = sub.add_parser("show", help="show running devices (as `wg show`)")
    p.add_argument("device", nargs="?", metavar="DEVICE")
    p.add_env_option("--run-dir", metavar="DIR", help="where UAPI sockets are")
    p.set_defaults(func=cmd_show)
    p = sub.add_parser("showconf", help="print a running device's config (as `wg showconf`)")
    p.add_argument("device", metavar="DEVICE")
    p.add_env_option("--run-dir", metavar="DIR", help="where UAPI sockets are")
    p.set_defaults(func=cmd_showconf)


def _sockets(directory: str) -> list[str]:
    try:
        return sorted(f[:-5] for f in os.listdir(directory) if f.endswith(".sock"))
    except FileNotFoundError:
        return []


def _snapshot(directory: str, name: str):
    try:
        return get(os.path.join(directory, f"{name}.sock"))
    except (OSError, UapiError) as e:
        raise SystemExit(
            f"tetherctl: Unable to access interface {name}: {getattr(e, 'strerror', None) or e}"
        ) from None


def _ago(seconds: float) -> str:
    seconds = int(seconds)
    parts = []
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds >= size or (unit == "second" and not parts):
            n, seconds = divmod(seconds, size)
            parts.append(f"{n} {unit}{'s' if n != 1 else ''}")
    return ", ".join(parts) + " ago"


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.2f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)


def cmd_show(args) -> int:
    """One device, or every socket in the run directory, in `wg show`'s layout (keys hidden)."""
    directory = run_dir(args.run_dir)
    names = [args.device] if args.device else _sockets(directory)
    for i, name in enumerate(names):
        snap = _snapshot(directory, name)
        if i:
            print()
        print(f"interface: {name}")
        if snap.private_key:
            print(f"  public key: {keys.encode(keys.public_from_private(snap.private_key))}")
            print("  private key: (hidden)")
        if snap.listen_port:
            print(f"  listening port: {snap.listen_port}")
        now = time.time()
        for peer in snap.peers:
            print(f"\npeer: {keys.encode(peer.public_key)}")
            if peer.preshared_key:
                print("  preshared key: (hidden)")
            if peer.endpoint:
                print(f"  endpoint: {peer.endpoint}")
            allowed = ", ".join(str(n) for n in peer.allowed_ips) or "(none)"
            print(f"  allowed ips: {allowed}")
            if peer.last_handshake_time_sec:
                print(f"  latest handshake: {_ago(now - peer.last_handshake_time_sec)}")
            if peer.rx_bytes or peer.tx_bytes:
                print(f"  transfer: {_bytes(peer.rx_bytes)} received, {_bytes(peer.tx_bytes)} sent")
            if peer.persistent_keepalive_interval:
                print(f"  persistent keepalive: every {peer.persistent_keepalive_interval} seconds")
    return 0


def cmd_showconf(args) -> int:
    """The running configuration as `wg showconf` prints it, for `wg setconf` or a backup."""
    snap = _snapshot(run_dir(args.run_dir), args.device)
    out = ["[Interface]"]
    if snap.listen_port:
        out.append(f"ListenPort = {snap.listen_port}")
    if snap.private_key:
        out.append(f"PrivateKey = {keys.encode(snap.private_key)}")
    for peer in snap.peers:
        out += ["", "[Peer]", f"PublicKey = {keys.encode(peer.public_key)}"]
        if peer.preshared_key:
            out.append(f"PresharedKey = {keys.encode(peer.preshared_key)}")
        if peer.allowed_ips:
            out.append("AllowedIPs = " + ", ".join(str(n) for n in peer.allowed_ips))
        if peer.endpoint:
            out.append(f"Endpoint = {peer.endpoint}")
        if peer.persistent_keepalive_interval:
            out.append(f"PersistentKeepalive = {peer.persistent_keepalive_interval}")
    sys.stdout.write("\n".join(out) + "\n")
    return 0
