"""The API's hub for processes without the daemon in them: `tetherctl peer ...`, the REPL's
`start-api`.

The hub interface (`DeviceHub`) and its values are in `tether.device.hub`, below both the API
and the appliance. There are two implementations:
- the appliance's `DaemonHub` (in `tether.appliance`), which applies through the daemon's own
  reconciler and knows every counter;
- `FileOnlyHub` here. With a run directory it reads the running device (in another process)
  through its UAPI socket, and `apply_now` waits until the daemon's watcher has applied the
  change; without a running device it only edits files.

Every method may be called from several WSGI worker threads at once.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Collection
from pathlib import Path

from tether.config import store
from tether.config.errors import ConfigError
from tether.device.hub import ApplyError, DeviceCounters, PeerStats
from tether.device.uapi import client as uapi_client
from tether.device.uapi.protocol import DeviceSnapshot, PeerSnapshot, UapiError

__all__ = ["FileOnlyHub", "live_snapshot"]


class FileOnlyHub:
    """A hub for processes that edit files while the daemon, if any, runs elsewhere.

    `run_dir` is where UAPI sockets are (`/var/run/wireguard` by default); None disables every
    look at running devices. `live_timeout` bounds how long `apply_now` waits for another
    process's watcher to apply a change.
    """

    def __init__(
        self,
        config_dir: str | Path,
        run_dir: str | None = None,
        *,
        live_timeout: float = 5.0,
        poll_interval: float = 0.05,
    ) -> None:
        self._config_dir = Path(config_dir)
        self._caches: dict[str, store.ParseCache] = {}
        self._lock = threading.Lock()  # guards the caches (one parse of a file at a time)
        self.run_dir = run_dir
        self.live_timeout = live_timeout
        self.poll_interval = poll_interval

    @property
    def config_dir(self) -> Path:
        return self._config_dir

    def device_names(self) -> list[str]:
        return store.list_devices(self._config_dir)

    def _parsed(self, name: str):
        """The file's current parse, reused while its bytes are unchanged (a 10,000-peer file
        takes a few hundred milliseconds to parse; this is called on every request)."""
        with self._lock:
            cache = self._caches.setdefault(name, store.ParseCache())
            return cache.get(store.device_path(self._config_dir, name), f"{name}.conf")[1]

    def _live(self, name: str) -> dict[bytes, PeerSnapshot] | None:
        snap = self._snapshot(name)
        return None if snap is None else {p.public_key: p for p in snap.peers}

    def _snapshot(self, name: str) -> DeviceSnapshot | None:
        return None if self.run_dir is None else live_snapshot(self.run_dir, name)

    def apply_now(self, name: str, changed: Collection[bytes] = (), written=None) -> None:
        if not changed or self._live(name) is None:
            return  # no running device: the file is all there is
        deadline = time.monotonic() + self.live_timeout
        while True:
            try:
                cfg = self._parsed(name)
                wanted = {k: cfg.peer(k) for k in changed}
            except ConfigError:
                raise ApplyError(f"device {name}: its file is invalid") from None
            live = self._live(name)
            if live is None:
                return  # the device went down meanwhile; the file stands
            if all(_matches(live.get(k), wanted.get(k)) for k in changed):
                return
            if time.monotonic() >= deadline:
                raise ApplyError(
                    f"device {name} is running but did not apply the change within "
                    f"{self.live_timeout:g} s (is its daemon watching the file?)"
                )
            time.sleep(self.poll_interval)

    def listen_port(self, name: str) -> int | None:
        snap = self._snapshot(name)
        return snap.listen_port if snap is not None and snap.listen_port else None

    def peer_is_live(self, name: str, public_key: bytes) -> bool:
        live = self._live(name)
        return live is not None and public_key in live

    def peer_stats(self, name: str) -> list[PeerStats]:
        live = self._live(name)
        if live is None:
            return []
        return [
            PeerStats(p.public_key, p.rx_bytes, p.tx_bytes, _handshake_time(p))
            for p in live.values()
        ]

    def counters(self, name: str) -> DeviceCounters:
        return DeviceCounters()  # the UAPI protocol carries no device-wide counters


def _matches(live, wanted) -> bool:
    """A changed peer is applied when the device has it with the file's AllowedIPs, or when
    both agree that it is gone."""
    if wanted is None:
        return live is None
    return live is not None and set(live.allowed_ips) == set(wanted.allowed_ips)


def _handshake_time(p: PeerSnapshot) -> float | None:
    if not p.last_handshake_time_sec:
        return None
    return p.last_handshake_time_sec + p.last_handshake_time_nsec / 1e9


def live_snapshot(run_dir: str, name: str) -> DeviceSnapshot | None:
    """What the running device `name` reports over its UAPI socket; None when no device of that
    name answers (no socket, refused, garbage: all mean "not running" to a file editor)."""
    path = os.path.join(run_dir, f"{name}.sock")
    if not os.path.exists(path):
        return None
    try:
        return uapi_client.get(path)
    except (OSError, UapiError, ValueError):
        return None
