"""The API's view of the daemon (`tether.device.hub.DeviceHub`), safe to call from WSGI threads.

Every call crosses into the daemon's event loop with `run_coroutine_threadsafe` and waits for
the answer, so devices are only ever touched from the loop thread. `apply_now` runs the same
`sync` the file watcher runs: when it returns, the file the API just wrote is what the device
runs, which is what lets a 200 from `POST /peer/add` mean "in the file and live". Everything
else is read from the device's one public view, `Device.snapshot()` (and its listen port).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection
from pathlib import Path

from tether.device.hub import ApplyError, DeviceCounters, PeerStats
from tether.wireguard.stats import DROP_PREFIX

__all__ = ["CALL_TIMEOUT", "DaemonHub"]

CALL_TIMEOUT = 30.0


class DaemonHub:
    """The `DeviceHub` of a running daemon: the devices it serves, applied through its own
    reconciler (see the module docstring)."""

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
        """See DeviceHub: the daemon's config directory."""
        return self.daemon.config_dir

    def device_names(self) -> list[str]:
        """See DeviceHub: the devices that are up."""
        return self._call(lambda: sorted(n for n, s in self.daemon.slots.items() if s.up))

    def apply_now(self, name: str, changed: Collection[bytes] = (), written=None) -> None:
        """See DeviceHub: the daemon's own `sync` of that file, awaited (with `written`, a
        10,000-peer file the API just wrote is not parsed again)."""
        if written is not None:  # what the daemon's read uses, whoever syncs first (watcher)
            self.daemon.offer(name, (written.data, written))
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

    def _snapshot(self, name: str):
        device = self._device(name)
        return None if device is None else device.snapshot()

    def listen_port(self, name: str) -> int | None:
        """See DeviceHub: the port the device is bound to."""
        return self._call(lambda: getattr(self._device(name), "listen_port", None))

    def peer_is_live(self, name: str, public_key: bytes) -> bool:
        """See DeviceHub: whether the device's snapshot has the peer."""
        state = self._call(lambda: self._snapshot(name))
        return state is not None and public_key in state.peers

    def peer_stats(self, name: str) -> list[PeerStats]:
        """See DeviceHub: transfer figures from the device's snapshot."""
        state = self._call(lambda: self._snapshot(name))
        if state is None:
            return []
        return [
            PeerStats(key, p.rx_bytes, p.tx_bytes, p.last_handshake)
            for key, p in state.peers.items()
        ]

    def counters(self, name: str) -> DeviceCounters:
        """See DeviceHub: handshakes and drops from the protocol core, open flows and
        refusals (of peers still configured) from the exit, all from one snapshot."""
        state = self._call(lambda: self._snapshot(name))
        if state is None:
            return DeviceCounters()
        drops = {
            key[len(DROP_PREFIX) :]: count
            for key, count in state.counters.items()
            if key.startswith(DROP_PREFIX) and count
        }
        flows = {}
        if "udp_flows" in state.inside or "tcp_flows" in state.inside:
            flows = {
                "udp": state.inside.get("udp_flows", 0),
                "tcp": state.inside.get("tcp_flows", 0),
            }
        refused = {k: n for k, n in state.refusals.items() if k in state.peers}
        return DeviceCounters(
            handshakes=state.counters.get("handshakes_completed", 0),
            drops=drops,
            exit_flows=flows,
            exit_refused=refused,
            egress_up=dict(state.egress_up),
            queue_delay=state.queue_delay,
        )
