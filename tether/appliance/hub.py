"""The API's view of the daemon (`tether.api.hub.DeviceHub`), safe to call from WSGI threads.

Every call crosses into the daemon's event loop with `run_coroutine_threadsafe` and waits for
the answer, so devices are only ever touched from the loop thread. `apply_now` runs the same
`sync` the file watcher runs: when it returns, the file the API just wrote is what the device
runs, which is what lets a 200 from `POST /peer/add` mean "in the file and live".
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from pathlib import Path

from tether.api.hub import ApplyError, DeviceCounters, PeerStats

CALL_TIMEOUT = 30.0


class DaemonHub:
    def __init__(self, daemon) -> None:
        self.daemon = daemon
        self.loop: asyncio.AbstractEventLoop = daemon.loop

    def _call(self, fn):
        """Run `fn` on the daemon's loop thread and return its result."""

        async def run():
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(CALL_TIMEOUT)

    @property
    def config_dir(self) -> Path:
        return self.daemon.config_dir

    def device_names(self) -> list[str]:
        return self._call(lambda: sorted(n for n, s in self.daemon.slots.items() if s.up))

    def apply_now(self, name: str, changed: Collection[bytes] = ()) -> None:
        future = asyncio.run_coroutine_threadsafe(self.daemon.apply_now(name), self.loop)
        try:
            future.result(CALL_TIMEOUT)
        except RuntimeError as e:
            raise ApplyError(str(e).splitlines()[0]) from None
        except TimeoutError:
            raise ApplyError(f"{name}: the device did not apply the change in time") from None

    def _device(self, name: str):
        slot = self.daemon.slots.get(name)
        return slot.device if slot is not None and slot.up else None

    def listen_port(self, name: str) -> int | None:
        return self._call(lambda: getattr(self._device(name), "listen_port", None))

    def peer_is_live(self, name: str, public_key: bytes) -> bool:
        def check():
            device = self._device(name)
            return device is not None and public_key in device.core.peers

        return self._call(check)

    def peer_stats(self, name: str) -> list[PeerStats]:
        def stats():
            device = self._device(name)
            if device is None:
                return []
            return [
                PeerStats(key, p.rx_bytes, p.tx_bytes, p.last_handshake_wall)
                for key, p in device.core.peers.items()
            ]

        return self._call(stats)

    def counters(self, name: str) -> DeviceCounters:
        def counters():
            device = self._device(name)
            if device is None:
                return DeviceCounters()
            stats = device.core.stats
            flows, refused = {}, {}
            exit_ = getattr(device.inside, "exit", None)
            if exit_ is not None:
                flows = {"udp": len(exit_.udp.flows), "tcp": len(exit_.tcp.flows)}
                peers = device.core.peers
                refused = {k: n for k, n in exit_.refusals().items() if k in peers}
            return DeviceCounters(
                handshakes=stats.handshakes_completed,
                drops=dict(stats.drops),
                exit_flows=flows,
                exit_refused=refused,
            )

        return self._call(counters)
