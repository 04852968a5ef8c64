"""The UAPI socket, `<run dir>/<device>.sock`, served on the device's event loop.

This is how the real `wg show`, `wg set` and `wg syncconf` reach a tetherctl device. wg only
looks in `/var/run/wireguard` (a compile-time path), which needs root; without root the
directory can be moved (`--run-dir`, TETHERCTL_RUN_DIR) for our own tools and tests. The socket
is created under umask 077 (mode 0600) because `set` can replace keys. Requests are decoded by
`protocol` and applied through `adapter`, so this module is only the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat

from tether.device.uapi.adapter import uapi_get, uapi_set
from tether.device.uapi.protocol import (
    EIO,
    GetRequest,
    RequestReader,
    UapiError,
    format_errno,
    format_get_response,
)

log = logging.getLogger("tether.uapi")

DEFAULT_RUN_DIR = "/var/run/wireguard"


def run_dir(explicit: str | None = None) -> str:
    """Where UAPI sockets live: the option, else TETHERCTL_RUN_DIR, else wg's own directory."""
    return explicit or os.environ.get("TETHERCTL_RUN_DIR") or DEFAULT_RUN_DIR


class UapiServer:
    """Serves one device's UAPI socket on the loop the device runs on."""

    def __init__(self, device, directory: str):
        self.device = device
        self.path = os.path.join(directory, f"{device.name}.sock")
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        """Create the socket and serve it. It is bound and listening under a temporary name
        and then renamed into place, so that whoever sees the path can connect at once."""
        directory = os.path.dirname(self.path)
        os.makedirs(directory, mode=0o755, exist_ok=True)
        self._remove_stale()
        temporary = f"{self.path}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)  # left by a run of ours that crashed here
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            old = os.umask(0o077)
            try:
                sock.bind(temporary)
            finally:
                os.umask(old)
            sock.listen(16)
            sock.setblocking(False)
            os.rename(temporary, self.path)
        except BaseException:
            sock.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        self._server = await asyncio.start_unix_server(self._serve, sock=sock)

    def _remove_stale(self) -> None:
        """A socket file left by a crashed run is replaced; one a live process answers is not."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(f"{self.path} exists and is not a socket")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(self.path)
        except OSError:
            os.unlink(self.path)
            return
        finally:
            probe.close()
        raise OSError(f"{self.path} is in use: is {self.device.name} already running?")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        requests = RequestReader()
        try:
            while not requests.closed:
                data = await reader.read(65536)
                events = requests.feed(data) if data else requests.feed_eof()
                for event in events:
                    writer.write(self._answer(event))
                    if isinstance(event, UapiError):
                        break
                await writer.drain()
                if not data:
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    def _answer(self, event) -> bytes:
        try:
            return self._answer_one(event)
        except Exception:
            # A bug must not take the socket (or the device) down with it; wg shows EIO.
            log.exception("%s: uapi request failed", self.device.name)
            return format_errno(EIO)

    def _answer_one(self, event) -> bytes:
        if isinstance(event, UapiError):
            log.info("%s: uapi request refused: %s", self.device.name, event)
            return format_errno(event.errno) if event.reply else b""
        if isinstance(event, GetRequest):
            return format_get_response(uapi_get(self.device))
        try:
            uapi_set(self.device, event)
        except UapiError as e:
            log.info("%s: uapi set refused: %s", self.device.name, e)
            return format_errno(e.errno)
        return format_errno(0)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
