"""systemd's notification protocol (sd_notify(3)), without linking libsystemd.

With Type=notify, systemd considers the unit started only on READY=1, shows STATUS= in
`systemctl status`, and knows a reload or stop is in progress from RELOADING=1 / STOPPING=1.
Outside systemd ($NOTIFY_SOCKET unset) every call is a no-op.
"""

from __future__ import annotations

import os
import socket
import time


def notify(*fields: str) -> bool:
    """Send one notification of `KEY=value` fields; False when there is no systemd to tell or
    the message was lost (never blocks, never raises)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace socket
    message = "\n".join(fields).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            # never block the event loop on a notification: a full queue loses the message
            sock.sendto(message, socket.MSG_DONTWAIT, address)
    except OSError:
        return False
    return True


def ready(status: str = "") -> bool:
    """The daemon serves: systemd considers the unit started (and `up` returns)."""
    return notify("READY=1", *([f"STATUS={status}"] if status else []))


def reloading() -> bool:
    """A SIGHUP re-read has begun; `ready` ends it."""
    # systemd ≥ 253 wants a timestamp with RELOADING=1 for Type=notify-reload; harmless before
    return notify(
        "RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}"
    )


def stopping() -> bool:
    """The orderly shutdown has begun, so systemd waits for it instead of killing."""
    return notify("STOPPING=1")


def status(text: str) -> bool:
    """One line for `systemctl status`: which devices are up, which have problems."""
    return notify(f"STATUS={text}")
