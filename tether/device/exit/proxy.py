"""The exit shell's upstream proxies themselves (see `egress` for the flows through them):
where a proxy is (a name is resolved off the loop, `tether.device.resolve`, when the proxy is
configured and again RESOLVE_REFRESH seconds after each answer, the last answer being used
meanwhile), whether it works, and one SOCKS exchange with it on the loop (`Negotiation`).

Whether it works: after the proxy itself failed (unreachable, refusing our credentials,
breaking the protocol, silent past the negotiation's deadline), new flows through it fail at
once, but for one every RETRY_WHILE_DOWN seconds that tries it again, and a probe (connect and
authenticate, nothing more) checks it every PROBE_INTERVAL seconds, so it comes back on its own
and the `tetherctl_egress_up` gauge follows it without traffic. Failures are logged when the
proxy goes down and then at most once per LOG_INTERVAL, with a count; no line carries the
password (only `Egress.label`).
"""

from __future__ import annotations

import errno
import logging
import math
import os
import socket
import time
from collections.abc import Callable

from tether.config.egress import Egress
from tether.device.resolve import RESOLVE_TIMEOUT
from tether.netstack.exit.socks import PROXY_DOWN, SocksClient, SocksFailed

__all__ = ["Negotiation", "Proxy", "is_ip", "open_socket", "os_reason"]

log = logging.getLogger("tether.exit")

RETRY_WHILE_DOWN = 2.0  # a proxy that failed is tried by one new flow this often
PROBE_INTERVAL = 15.0  # ... and probed this often, whether flows come or not
PROBE_TIMEOUT = 10.0
LOG_INTERVAL = 60.0  # at most one "still down" line per proxy this often
RESOLVE_REFRESH = 300.0
_READ = 4096  # negotiation replies are at most 262 bytes; more is the destination's


class Negotiation:
    """One TCP connection to a proxy and the SOCKS exchange on it, on the loop: connect, talk,
    and call `done(result)` once (never after `cancel`). The socket stays its owner's."""

    __slots__ = ("loop", "sock", "fd", "client", "done", "out", "timer", "finished")

    def __init__(self, loop, sock: socket.socket, client: SocksClient, done: Callable) -> None:
        self.loop = loop
        self.sock = sock
        self.fd = sock.fileno()
        self.client = client
        self.done = done
        self.out = bytearray()
        self.finished = False
        self.timer = loop.call_at(client.next_timer(), self._timeout)

    def start(self, address: tuple[str, int]) -> None:
        try:
            err = self.sock.connect_ex(address)
        except OSError as e:
            err = e.errno or errno.EIO
        if err in (0, errno.EINPROGRESS, errno.EAGAIN):
            self.loop.add_writer(self.fd, self._connected)
        else:
            self._proxy_failed(f"cannot connect to the proxy: {os_reason(err)}")

    def cancel(self) -> None:
        """Stop: no callback, no timer; the reader and writer are removed (the owner closes the
        socket)."""
        if self.finished:
            return
        self.finished = True
        self.timer.cancel()
        self.loop.remove_writer(self.fd)
        self.loop.remove_reader(self.fd)

    def _connected(self) -> None:
        self.loop.remove_writer(self.fd)
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._proxy_failed(f"cannot connect to the proxy: {os_reason(err)}")
            return
        self.loop.add_reader(self.fd, self._readable)
        self._send()

    def _send(self) -> None:
        self.out += self.client.take_data()
        if not self.out:
            return
        try:
            n = self.sock.send(self.out)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as e:
            self._proxy_failed(f"the connection to the proxy broke: {os_reason(e.errno)}")
            return
        del self.out[:n]
        if self.out:  # a full send buffer during a handshake of a few bytes: wait for room
            self.loop.add_writer(self.fd, self._writable)

    def _writable(self) -> None:
        self.loop.remove_writer(self.fd)
        self._send()

    def _readable(self) -> None:
        if self.finished:
            return
        try:
            data = self.sock.recv(_READ)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._proxy_failed(f"the connection to the proxy broke: {os_reason(e.errno)}")
            return
        self.client.receive_data(data, time.monotonic())
        if self.client.result is not None:
            self._finish(self.client.result)
        else:
            self._send()

    def _timeout(self) -> None:
        self.client.handle_timer(time.monotonic())
        if self.client.result is not None:
            self._finish(self.client.result)
        elif not self.finished:
            self.timer = self.loop.call_at(self.client.next_timer(), self._timeout)

    def _proxy_failed(self, reason: str) -> None:
        self._finish(SocksFailed(PROXY_DOWN, reason, True))

    def _finish(self, result) -> None:
        if self.finished:
            return
        self.cancel()
        self.done(result)


def os_reason(err: int | None) -> str:
    """`ECONNREFUSED (Connection refused)`: what a log line says of a socket error."""
    return f"{errno.errorcode.get(err or 0, err)} ({os.strerror(err or 0)})"


class Proxy:
    """One upstream proxy (an `Egress`) as the shell uses it: where it is, whether it works
    (`up`: None until the first attempt or probe ends), its circuit breaker, probes and log
    lines. The exit carries these objects on flows as their `egress`."""

    def __init__(self, egress: Egress, owner) -> None:
        self.egress = egress
        self.label = egress.label
        self.credentials = egress.credentials
        self.owner = owner
        ip = egress.host if is_ip(egress.host) else None
        self.address: tuple[str, int] | None = (ip, egress.port) if ip else None
        self.named = ip is None
        self.resolved_at = -math.inf
        self.resolving = None
        self.waiters: dict = {}  # flow -> callback(address | None, reason)
        self.up: bool | None = None
        self.reason = ""
        self.retry_at = 0.0
        self.unreported = 0  # failures since the last log line
        self.logged_at = -math.inf
        self.probe_timer = None
        self.probe_sock: socket.socket | None = None
        self.probe_setup: Negotiation | None = None
        self.closed = False

    def __repr__(self) -> str:
        return f"<Proxy {self.label} up={self.up}>"

    # -- where it is -------------------------------------------------------------------------

    def when_resolved(self, key, callback: Callable) -> None:
        """`callback(address, None)` at once when the address is known, else once resolved
        (or `callback(None, reason)`); `key` (a flow) can `forget` the wait."""
        if self.named and time.monotonic() - self.resolved_at > RESOLVE_REFRESH:
            self._resolve()
        if self.address is not None:
            callback(self.address, None)
        else:
            self.waiters[key] = callback

    def forget(self, key) -> None:
        self.waiters.pop(key, None)

    def _resolve(self) -> None:
        if self.resolving is None and not self.closed:
            owner = self.owner
            self.resolving = owner.resolver.resolve(
                owner.loop, self.egress.host, self.egress.port, self._resolved, RESOLVE_TIMEOUT
            )

    def _resolved(self, address: tuple[str, int] | None, reason: str | None) -> None:
        self.resolving = None
        now = time.monotonic()
        self.resolved_at = now
        if address is not None:
            self.address = address
        elif self.address is None:
            self.failed(f"cannot resolve {self.egress.host}: {reason}", now)
        waiters, self.waiters = self.waiters, {}
        for callback in waiters.values():
            callback(self.address, None if self.address else f"cannot resolve: {reason}")
        self.owner.host_input()

    # -- whether it works --------------------------------------------------------------------

    def may_try(self, now: float) -> bool:
        """Whether a new flow may try the proxy: always unless it is down; then one flow per
        RETRY_WHILE_DOWN seconds (the others fail at once, and are counted for the log)."""
        if self.up is not False:
            return True
        if now >= self.retry_at:
            self.retry_at = now + RETRY_WHILE_DOWN
            return True
        self.unreported += 1
        return False

    def succeeded(self) -> None:
        """The proxy took a connection and our credentials (whatever it then said of the
        destination): it works."""
        if self.up is False:
            log.info("%s: egress %s is up again", self.owner.name, self.label)
        self.up = True
        self.unreported = 0

    def failed(self, reason: str, now: float) -> None:
        """The proxy itself failed: down, logged (rate-limited), probed until it is back."""
        was = self.up
        self.up = False
        self.reason = reason
        self.retry_at = now + RETRY_WHILE_DOWN
        self.unreported += 1
        if was is not False or now - self.logged_at >= LOG_INTERVAL:
            more = self.unreported - 1
            since = f" ({more} more flows failed since the last report)" if more > 0 else ""
            log.warning(
                "%s: egress %s is down: %s; flows through it fail, none leaves directly%s",
                self.owner.name,
                self.label,
                reason,
                since,
            )
            self.logged_at = now
            self.unreported = 0
        self._schedule_probe(PROBE_INTERVAL)

    def _schedule_probe(self, delay: float) -> None:
        if self.probe_timer is None and self.probe_setup is None and not self.closed:
            self.probe_timer = self.owner.loop.call_later(delay, self.probe)

    def probe(self) -> None:
        """Connect and authenticate, nothing more: the gauge follows the proxy's health without
        traffic. Runs when the proxy is configured and while it is down."""
        self.probe_timer = None
        if self.closed or self.probe_setup is not None or self.up is True:
            return
        self.when_resolved(self, self._probe_at)

    def _probe_at(self, address: tuple[str, int] | None, reason: str | None) -> None:
        if self.closed or self.probe_setup is not None:
            return
        if address is None:
            self._schedule_probe(PROBE_INTERVAL)  # `_resolved` reported the failure
            return
        try:
            sock = open_socket(address, socket.SOCK_STREAM)
        except OSError as e:
            self.failed(f"cannot make a socket: {os_reason(e.errno)}", time.monotonic())
            return
        client = SocksClient(None, "", 0, self.credentials, time.monotonic(), timeout=PROBE_TIMEOUT)
        self.probe_sock = sock
        self.probe_setup = Negotiation(self.owner.loop, sock, client, self._probed)
        self.probe_setup.start(address)

    def _probed(self, result) -> None:
        self.probe_setup = None
        if self.probe_sock is not None:
            self.probe_sock.close()
            self.probe_sock = None
        if isinstance(result, SocksFailed):
            self.failed(result.reason, time.monotonic())
        else:
            self.succeeded()

    def close(self) -> None:
        """No longer configured: background work stops (flows using it finish as they are)."""
        self.closed = True
        if self.probe_timer is not None:
            self.probe_timer.cancel()
            self.probe_timer = None
        if self.probe_setup is not None:
            self.probe_setup.cancel()
            self.probe_setup = None
        if self.probe_sock is not None:
            self.probe_sock.close()
            self.probe_sock = None
        if self.resolving is not None:
            self.resolving.cancel()
            self.resolving = None
        waiters, self.waiters = self.waiters, {}
        for callback in waiters.values():
            callback(None, "the egress was reconfigured")


def is_ip(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return False
    return True


def open_socket(address: tuple[str, int], kind: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = socket.socket(family, kind)
    sock.setblocking(False)
    return sock
