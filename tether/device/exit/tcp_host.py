"""The exit's TCP flows on the host side: one non-blocking socket per flow (`TcpSock` in the
flow's handle), connected, read, written and closed as the exit's actions say, on the device's
loop with plain add_reader/add_writer callbacks. Each callback feeds the exit and then calls the
shell's `host_input`, which runs the actions that caused and has the device collect.

Apart from the shell (shell.py) so that the shell stays the `Inside` and its dispatch; flows
whose egress is an upstream proxy are connected by `egress` (its `connect_tcp`), which hands
them back through `through_proxy` once the proxy has made the connection."""

from __future__ import annotations

import errno
import socket
import struct
import time

from tether.device.exit.sockets import TcpSock
from tether.netstack.exit import (
    READ_CHUNK,
    TcpClose,
    TcpConnect,
    TcpPauseReading,
    TcpResumeReading,
    TcpShutdown,
    TcpWrite,
)

__all__ = ["TCP_BATCH", "HostTcp"]

TCP_BATCH = 4  # reads per readable callback (each up to READ_CHUNK)
_LINGER_ABORT = struct.pack("ii", 1, 0)


class HostTcp:
    """The host sockets of the exit's TCP flows. `live` is the shell's set of flows holding a
    host socket; `egress` (set once the shell has made it) connects proxied flows."""

    def __init__(self, loop, exit_core, live: set, host_input) -> None:
        self.loop = loop
        self.exit = exit_core
        self.egress = None
        self._live = live
        self._host_input = host_input
        self._buf = bytearray(READ_CHUNK)
        self._view = memoryview(self._buf)

    def connect(self, a: TcpConnect) -> None:
        flow = a.flow
        if flow.egress is not None:
            self.egress.connect_tcp(flow)  # through its proxy, or it fails: never directly
            return
        fam = socket.AF_INET if flow.version == 4 else socket.AF_INET6
        try:
            sock = socket.socket(fam, socket.SOCK_STREAM)
        except OSError as e:
            self.exit.receive_tcp_connect_failed(flow, e.errno or errno.EIO, time.monotonic())
            return
        h = flow.handle = TcpSock(sock)
        self._live.add(flow)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            err = sock.connect_ex((flow.host, flow.port))
        except OSError as e:
            err = e.errno or errno.EIO
        if err == 0:
            self._established(flow)
        elif err in (errno.EINPROGRESS, errno.EAGAIN):
            h.connecting = True
            self.loop.add_writer(h.fd, self._connect_done, flow)
        else:
            self.exit.receive_tcp_connect_failed(flow, err, time.monotonic())

    def _connect_done(self, flow) -> None:
        h = flow.handle
        if h is None or h.closed:
            return
        self.loop.remove_writer(h.fd)
        h.connecting = False
        err = h.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.exit.receive_tcp_connect_failed(flow, err, time.monotonic())
        else:
            self._established(flow)
        self._host_input()

    def through_proxy(self, flow, leftover: bytes) -> None:
        """The proxy connected the flow: from here on its socket is like any other, and what
        the destination sent along with the proxy's reply is the first data read."""
        self._established(flow)
        if leftover:
            self.exit.receive_tcp_data(flow, leftover, time.monotonic())

    def _established(self, flow) -> None:
        h = flow.handle
        h.reading = True
        self.loop.add_reader(h.fd, self._readable, flow)
        self.exit.receive_tcp_connected(flow, time.monotonic())

    def _stop_reading(self, h: TcpSock) -> None:
        if h.reading:
            h.reading = False
            self.loop.remove_reader(h.fd)

    def _readable(self, flow) -> None:
        h = flow.handle
        if h is None or h.closed:
            return
        ex, sock, buf, view = self.exit, h.sock, self._buf, self._view
        now = time.monotonic()
        for _ in range(TCP_BATCH):
            budget = ex.tcp_read_budget(flow)
            if budget <= 0:
                self._stop_reading(h)
                break
            try:
                n = sock.recv_into(buf, budget)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._stop_reading(h)
                ex.receive_tcp_reset(flow, now)
                break
            if n == 0:
                self._stop_reading(h)
                h.eof = True
                ex.receive_tcp_eof(flow, now)
                break
            ex.receive_tcp_data(flow, view[:n], now)
            if n < budget:
                break  # the socket is most likely drained
        self._host_input()

    def pause(self, a: TcpPauseReading) -> None:
        h = a.flow.handle
        if h is not None:
            self._stop_reading(h)

    def resume(self, a: TcpResumeReading) -> None:
        h = a.flow.handle
        if h is not None and not h.reading and not h.eof and not h.closed and not h.connecting:
            h.reading = True
            self.loop.add_reader(h.fd, self._readable, a.flow)

    def write(self, a: TcpWrite) -> None:
        flow = a.flow
        h = flow.handle
        if h is None or h.closed:
            return
        data = a.data
        if h.pending is not None:
            h.pending += data
            return
        try:
            n = h.sock.send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:
            self._broken(flow)
            return
        if n < len(data):
            rest = data if type(data) is bytearray else bytearray(data)  # take_peer_data's
            del rest[:n]  # buffer is handed over, so trimming it in place copies nothing
            h.pending = rest
            self.loop.add_writer(h.fd, self._drain, flow)
            self.exit.receive_tcp_write_blocked(flow, time.monotonic())

    def _drain(self, flow) -> None:
        h = flow.handle
        if h is None or h.closed or h.pending is None:
            return
        try:
            n = h.sock.send(h.pending)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._broken(flow)
            return
        del h.pending[:n]
        if h.pending:
            return
        h.pending = None
        self.loop.remove_writer(h.fd)
        if h.shutdown_after:
            self._shutdown(h)
        if h.close_after:
            self.close_flow(flow, abort=False)
            return
        self.exit.receive_tcp_writable(flow, time.monotonic())
        self._host_input()

    def _broken(self, flow) -> None:
        """A send failed (reset, broken pipe): the exit resets the peer and then closes us."""
        h = flow.handle
        if h.pending is not None:
            h.pending = None
            self.loop.remove_writer(h.fd)
        if h.close_after:
            self.close_flow(flow, abort=True)
            return
        self._stop_reading(h)
        self.exit.receive_tcp_reset(flow, time.monotonic())
        self._host_input()

    @staticmethod
    def _shutdown(h: TcpSock) -> None:
        try:
            h.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def shutdown(self, a: TcpShutdown) -> None:
        h = a.flow.handle
        if h is None or h.closed:
            return
        if h.pending is not None:
            h.shutdown_after = True
        else:
            self._shutdown(h)

    def close(self, a: TcpClose) -> None:
        h = a.flow.handle
        if h is None and a.flow.egress is not None:
            self.egress.forget_tcp(a.flow)  # still waiting for its proxy's address
            return
        if h is None or h.closed:
            return
        if not a.abort and h.pending is not None:
            self._stop_reading(h)
            h.close_after = True  # _drain closes it
            return
        self.close_flow(a.flow, a.abort)

    def close_flow(self, flow, abort: bool) -> None:
        h = flow.handle
        if h is None or h.closed:
            return
        h.closed = True
        self._live.discard(flow)
        if h.setup is not None:  # the proxy was still being asked
            h.setup.cancel()
            h.setup = None
        self._stop_reading(h)
        if h.pending is not None or h.connecting:
            self.loop.remove_writer(h.fd)
            h.pending = None
        if abort:
            try:
                h.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ABORT)
            except OSError:
                pass
        h.sock.close()
