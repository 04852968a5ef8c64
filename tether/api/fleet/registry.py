"""The API state of a fleet device (owners, quarantined addresses, invites) in etcd: the
`Registry` of `api/registry.py` over a `FleetDevice`, so that the routes, the invites and the
janitor work unchanged whichever store holds the state.

`read()` is the mirror's state (no round trip; what the last watch response said). `update()`
applies the change to a snapshot's copy and commits the difference as one transaction guarded by
the device's serial key (`device.py`), so a use of an invite is counted once however many hosts
redeem it at the same moment. `locked` means nothing here: no host-local lock protects etcd.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from tether.api.fleet.device import FleetDevice
from tether.api.fleet.layout import state_diff
from tether.api.state import DeviceState

T = TypeVar("T")


class EtcdRegistry:
    """See the module docstring."""

    def __init__(self, device: FleetDevice) -> None:
        self.device = device

    def read(self) -> DeviceState:
        """The state as the mirror has it (Unavailable before the first read from etcd)."""
        return self.device.snapshot().state

    def update(self, change: Callable[[DeviceState], T], *, locked: bool = False) -> T:
        """Apply `change` atomically with respect to every host (Unavailable when etcd does
        not answer)."""

        def build(snap):
            state = snap.state.copy()
            result = change(state)
            if not state.changed:
                return result, None, None
            return result, [], state_diff(self.device.layout, snap.state, state)

        return self.device.transact(build)[0]
