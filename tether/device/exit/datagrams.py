"""The exit's datagram host sockets (ping sockets, UDP flows) in an epoll set of their own.

Why not plain `loop.add_reader` like the TCP sockets: when the device's tunnel socket and a
host socket are ready in the same loop iteration, asyncio runs their callbacks in the kernel's
readiness order, and a tunnel socket that stays readable under load comes first. An echo reply
or a game's UDP datagram then waits for a whole batch of the upload it shares the loop with
(64 datagrams, about a millisecond on a busy 2-core machine), and the next one too, since the
reply is only sent when the device next collects. A video call beside an upload should not
pay for the upload's batches.

So these sockets sit in a nested epoll set (its descriptor is itself pollable, so the asyncio
loop still wakes for them when it would otherwise sleep), and the device drains the set before
each read of its own socket (`Inside.poll`): one `epoll_wait(0)` system call per batch when
nothing is ready. TCP host sockets stay on the loop: they carry bulk data, whose batches are
what the small packets are let past.
"""

from __future__ import annotations

import logging
import select
from collections.abc import Callable

log = logging.getLogger(__name__)

__all__ = ["DatagramSockets", "POLL_SOCKETS"]

POLL_SOCKETS = 64  # ready sockets served per drain (each reads its own bounded batch)


class DatagramSockets:
    """A registry of datagram sockets with their readable callbacks (add_reader's signature).
    Where the platform has no epoll, they go to the loop as any other reader."""

    def __init__(self, loop, on_ready: Callable[[], None]) -> None:
        self.loop = loop
        self.closed = False
        self._callbacks: dict[int, tuple[Callable, tuple]] = {}
        try:
            self._epoll = select.epoll()
        except (AttributeError, OSError):  # pragma: no cover - not Linux
            self._epoll = None
        if self._epoll is not None:
            loop.add_reader(self._epoll.fileno(), on_ready)

    def add(self, fd: int, callback: Callable, *args) -> None:
        """Watch `fd` (no-op once closed: the shell is going away and closes its sockets)."""
        if self.closed:
            return
        if self._epoll is None:  # pragma: no cover - not Linux
            self.loop.add_reader(fd, callback, *args)
            return
        try:
            self._epoll.register(fd, select.EPOLLIN)
        except FileExistsError:  # watched already: the new callback replaces the old one
            self._epoll.modify(fd, select.EPOLLIN)
        self._callbacks[fd] = (callback, args)

    def remove(self, fd: int) -> None:
        """Stop watching `fd` (before the socket is closed)."""
        if self.closed:
            return
        if self._epoll is None:  # pragma: no cover - not Linux
            self.loop.remove_reader(fd)
            return
        if self._callbacks.pop(fd, None) is not None:
            try:
                self._epoll.unregister(fd)
            except (OSError, ValueError):
                pass

    def run_ready(self) -> int:
        """Run the callbacks of the sockets that are readable now (never blocks); how many.

        Never raises. With `add_reader` the loop logged a callback's exception and served the
        other sockets; here the caller is the device's own readable callback, where an
        exception would skip its tunnel read, and, the socket it failed to drain staying
        readable, every read after it too: one flow's bug would stop the device. So it is
        logged as the loop would, and the socket stays watched as it did there (a ping socket
        is every peer's: dropping it for one bad reply would end ping for all)."""
        if not self._callbacks or self._epoll is None:  # also once closed
            return 0
        events = self._epoll.poll(0, POLL_SOCKETS)
        callbacks = self._callbacks
        for fd, _mask in events:
            entry = callbacks.get(fd)  # an earlier callback of this drain may have closed it
            if entry is None:
                continue
            try:
                entry[0](*entry[1])
            except Exception:
                log.exception("exit: datagram socket %d: reader failed", fd)
        return len(events)

    def close(self) -> None:
        """Forget every callback and close the epoll set; the sockets are their owners' to
        close (the shell closes its flows and pingers first). Later adds and removes are
        no-ops: whatever a closed shell's callbacks still do must touch neither a closed epoll
        nor the loop."""
        self.closed = True
        self._callbacks.clear()
        if self._epoll is not None:
            try:
                self.loop.remove_reader(self._epoll.fileno())
            except (ValueError, RuntimeError):
                pass
            self._epoll.close()
            self._epoll = None
