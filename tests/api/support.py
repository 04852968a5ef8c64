"""Helpers for the API tests: a WSGI caller, a fake hub, device files, a fake UAPI socket."""

from __future__ import annotations

import io
import os
import socket
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from tether import keys
from tether.config import store
from tether.device.hub import ApplyError, DeviceCounters, PeerStats
from tether.device.uapi.protocol import DeviceSnapshot, format_get_response

SERVER_PRIVATE = "4HOYXaS0mtLH9ZChsPaDQ3W/L7Z/rrchr8CMDqZGgXg="
SERVER_PUBLIC = "UESAy9LgT3PR77Tl1RCnHuj+ZtFvYMeWahnTIEhEvXM="
PEER1 = "10NguWHSLJ0tUOr4AkbTtOEYHoagq1KH/PJSIJ3SwFs="
SLASHY = "vi2iosrlXoDeZT08aXlq4AxXUNKO04NDuEeCw2Z7sD0="

DEVICE_TEXT = f"""# Office exit. Keep this comment.
[Interface]
Address = 10.8.0.1/24, fd08::1/64   # dual stack
ListenPort = 51820
PrivateKey = {SERVER_PRIVATE}
DNS = 10.8.0.1
MTU = 1380

# Alice's laptop
[Peer]
PublicKey = {PEER1}
AllowedIPs = 10.8.0.2/32, fd08::2/128
"""


def new_key() -> str:
    return keys.encode(keys.public_from_private(keys.generate_private()))


def slash_key() -> str:
    while True:
        k = new_key()
        if "/" in k:
            return k


def write_device(directory: Path, name: str = "bywg0", text: str = DEVICE_TEXT) -> Path:
    path = store.device_path(directory, name)
    path.write_text(text)
    os.chmod(path, 0o600)
    return path


def small_device_dir(tmp_path: Path) -> Path:
    """A config dir whose one device, `small`, has a /30: a single address to give a peer."""
    conf = tmp_path / "c"
    conf.mkdir()
    text = f"[Interface]\nAddress = 10.9.0.1/30\nListenPort = 1\nPrivateKey = {keys.genkey()}\n"
    write_device(conf, "small", text)
    return conf


@dataclass
class Response:
    status: int
    headers: dict
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")


def call(
    app,
    method: str,
    path: str,
    query: str = "",
    *,
    body: bytes = b"",
    headers: dict | None = None,
    remote: str = "127.0.0.1",
) -> Response:
    env = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path.encode("utf-8").decode("latin-1"),  # as a WSGI server passes it
        "QUERY_STRING": query,
        "SERVER_NAME": "test",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": remote,
        "CONTENT_LENGTH": str(len(body)) if body else "",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.url_scheme": "http",
        "wsgi.version": (1, 0),
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for k, v in (headers or {}).items():
        name = k.upper().replace("-", "_")
        env[name if name in ("CONTENT_LENGTH", "CONTENT_TYPE") else "HTTP_" + name] = v
    got = {}

    def start_response(status, hdrs, exc_info=None):
        got["status"] = int(status.split()[0])
        got["headers"] = {k.lower(): v for k, v in hdrs}

    chunks = app(env, start_response)
    data = b"".join(chunks)
    if hasattr(chunks, "close"):
        chunks.close()
    return Response(got["status"], got["headers"], data)


@dataclass
class FakeHub:
    """Stands in for the daemon: records applies, can fail them, reports canned stats."""

    config_dir: Path
    names: list[str] | None = None
    port: int | None = 51820
    fail_apply: str | None = None
    applied: list = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    counts: DeviceCounters = field(default_factory=DeviceCounters)

    def device_names(self) -> list[str]:
        return self.names if self.names is not None else store.list_devices(self.config_dir)

    def apply_now(self, name, changed=(), written=None):
        if self.fail_apply:
            raise ApplyError(self.fail_apply)
        self.applied.append((name, tuple(changed)))

    def listen_port(self, name):
        return self.port

    def peer_is_live(self, name, public_key):
        return public_key in self.stats.get(name, {})

    def peer_stats(self, name):
        return [PeerStats(k, *v) for k, v in self.stats.get(name, {}).items()]

    def counters(self, name):
        return self.counts


class FakeUapi:
    """A UAPI socket answering `get` with `snapshot` (which a test may change at any time)."""

    def __init__(self, run_dir: Path, name: str, snapshot: DeviceSnapshot) -> None:
        self.snapshot = snapshot
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = str(run_dir / f"{name}.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(8)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while not data.endswith(b"\n\n"):
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                if data.startswith(b"get=1"):
                    conn.sendall(format_get_response(self.snapshot))

    def close(self) -> None:
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
