"""Resolving a peer's endpoint name without ever blocking the event loop.

getaddrinfo blocks, and a resolver that hangs (an unreachable DNS server, a stuck NSS module)
would freeze every device of the process if it ran on the loop. So names go to a few worker
threads, the answer comes back to the loop through `call_soon_threadsafe`, and a timer on the
loop gives up after RESOLVE_TIMEOUT seconds (reported like any other failure).

getaddrinfo cannot be interrupted: a hung call keeps its thread until the C library returns.
Hence few workers (a hung resolver cannot pile up threads; later requests queue, and those that
time out while queued are skipped), daemon threads (a hung call never keeps the process from
exiting), and workers that exit when the queue is empty (no threads while nothing resolves).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections import deque
from collections.abc import Callable

RESOLVE_TIMEOUT = 10.0  # seconds; glibc gives up on one name server after 5 s, retrying once
WORKERS = 4

# (address or None, reason or None), called on the loop exactly once per request
Done = Callable[[tuple[str, int] | None, str | None], None]


def pick_address(infos: list, port: int) -> tuple[str, int] | None:
    """The address wg would use from getaddrinfo's answer: the first IPv4, else the first IPv6."""
    for family in (socket.AF_INET, socket.AF_INET6):
        for info in infos:
            if info[0] == family:
                return (info[4][0], port)
    return None


class Request:
    """One name being resolved; `cancel()` (on the loop) means its answer is never delivered."""

    def __init__(self, loop: asyncio.AbstractEventLoop, host: str, port: int, done: Done):
        self.loop = loop
        self.host = host
        self.port = port
        self.finished = False
        self._done = done
        self._timer: asyncio.TimerHandle | None = None

    def cancel(self) -> None:
        self.finished = True
        if self._timer is not None:
            self._timer.cancel()

    def give_up_after(self, timeout: float) -> None:
        """On the loop: report a timeout unless an answer comes first."""
        self._timer = self.loop.call_later(
            timeout, self._finish, None, f"no answer within {timeout:g} s"
        )

    def _finish(self, address: tuple[str, int] | None, reason: str | None) -> None:
        if self.finished:
            return  # timed out or cancelled first
        self.cancel()
        self._done(address, reason)

    def answer(self, address: tuple[str, int] | None, reason: str | None) -> None:
        """From a worker thread: hand the answer (or the reason there is none) to the loop."""
        try:
            self.loop.call_soon_threadsafe(self._finish, address, reason)
        except RuntimeError:
            pass  # the loop is closed: nobody waits for this answer any more


class Resolver:
    def __init__(self, getaddrinfo: Callable = socket.getaddrinfo, *, workers: int = WORKERS):
        self._getaddrinfo = getaddrinfo
        self._workers = workers
        self._lock = threading.Lock()
        self._queue: deque[Request] = deque()
        self._running = 0

    def resolve(
        self,
        loop: asyncio.AbstractEventLoop,
        host: str,
        port: int,
        done: Done,
        timeout: float = RESOLVE_TIMEOUT,
    ) -> Request:
        """Start resolving `host`; `done` runs on `loop` with the address, or with None and
        the reason (including a timeout). Call it on the loop; it never blocks."""
        request = Request(loop, host, port, done)
        request.give_up_after(timeout)
        with self._lock:
            self._queue.append(request)
            start = self._running < self._workers
            if start:
                self._running += 1
        if start:
            try:
                threading.Thread(target=self._work, name="tether-resolve", daemon=True).start()
            except RuntimeError:  # no thread to be had: the request times out, reported as such
                with self._lock:
                    self._running -= 1
        return request

    def _work(self) -> None:
        while True:
            with self._lock:
                if not self._queue:
                    self._running -= 1
                    return
                request = self._queue.popleft()
            if request.finished:
                continue  # timed out or cancelled while it waited
            try:
                infos = self._getaddrinfo(request.host, request.port, type=socket.SOCK_DGRAM)
            except OSError as e:
                request.answer(None, e.strerror or str(e))
                continue
            except Exception as e:  # a resolver must not kill its worker; report, go on
                request.answer(None, f"{type(e).__name__}: {e}")
                continue
            address = pick_address(infos, request.port)
            request.answer(address, None if address else "no IPv4 or IPv6 address")
