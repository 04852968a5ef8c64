"""Removing self-service peers that never completed a handshake (pool protection).

Anyone may add a peer while self-service is open, so the address pool could be squatted by adds
that are never used. A self-service peer gets an expiry time when it is added
(`--api-peer-expiry`); the janitor looks at the running devices every few seconds and

- clears the expiry of every such peer that has completed a handshake (once used, it stays,
  and this survives restarts, after which the device's handshake times start from zero);
- removes, through the same locked file edit as `DELETE /peer/remove`, every one whose expiry
  has passed, that is live on a running device and has never completed a handshake.

In a fleet each host sees only its own device's handshakes, and the state is shared: the host a
peer's client uses clears its expiry in etcd at its next sweep, so the others wait two sweep
intervals past the expiry before they remove a peer (a host cut off from etcd for longer cannot
save a peer used only through it: the removal reaches it when etcd does).

Peers written by hand or added with the admin token have no expiry and are never touched, nor
is a peer whose file entry no longer has the addresses its owner entry names (someone replaced
it). `sweep(now)` is one pass, driven by a fake clock in tests; `JanitorThread` repeats it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from tether import keys
from tether.api.errors import PeerError
from tether.api.peers.ownership import owner_applies
from tether.api.peers.service import PeerService
from tether.api.state import StateError
from tether.device.hub import ApplyError

log = logging.getLogger("tether.api")


class Janitor:
    """Removes self-service peers that never completed a handshake within their expiry, so that
    strangers cannot fill the address pool with peers nobody uses."""

    def __init__(self, service: PeerService) -> None:
        self.service = service
        self._reported: dict[str, str] = {}  # device -> last problem logged (once each)
        # in a fleet, a peer may be used through another host, which clears the expiry in the
        # shared state at its next sweep: wait two of its sweeps past the expiry before removing
        expiry = service.self_service_expiry
        self.grace = 2 * interval_for(expiry) if service.shared and expiry > 0 else 0.0

    def sweep(self, now: float) -> list[tuple[str, str]]:
        """One pass over every device; returns the (device, base64 key) pairs removed."""
        removed = []
        for name in self.service.hub.device_names():
            try:
                removed += [(name, k) for k in self._sweep_device(name, now)]
                self._reported.pop(name, None)
            except (StateError, PeerError, ApplyError, OSError) as e:
                if self._reported.get(name) != str(e):
                    log.error("%s: expiring self-service peers: %s", name, e)
                self._reported[name] = str(e)
        return removed

    def _sweep_device(self, name: str, now: float) -> list[str]:
        registry = self.service.registry(name)
        expiring = {k: o for k, o in registry.read().owners.items() if o.expires is not None}
        if not expiring:
            return []
        live = {keys.encode(s.public_key): s for s in self.service.hub.peer_stats(name)}
        used = [k for k in expiring if k in live and live[k].last_handshake]
        if used:

            def keep(state) -> None:
                for key in used:
                    state.clear_expiry(key)

            registry.update(keep)
        removed = []
        for key, owner in expiring.items():
            if key in used or key not in live or owner.expires + self.grace > now:
                continue

            def still_expired(peer, current, owner=owner) -> bool:
                # unchanged since we looked (no handshake recorded, not replaced)
                return current == owner and owner_applies(current, peer)

            try:
                if self.service.remove(
                    name, keys.decode(key), client="expiry", authorize=still_expired
                ):
                    log.info(
                        "%s: self-service peer %s removed: no handshake within its expiry",
                        name,
                        key,
                    )
                    removed.append(key)
            except PeerError as e:
                if e.status != 403:  # 403: it changed meanwhile (handshake, replaced): keep it
                    raise
        return removed


class JanitorThread:
    """Runs `Janitor.sweep` every `interval` seconds in a daemon thread until `stop()`."""

    def __init__(
        self, janitor: Janitor, interval: float, clock: Callable[[], float] = time.time
    ) -> None:
        self.janitor = janitor
        self.interval = interval
        self.clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tetherctl-janitor", daemon=True)

    def start(self) -> JanitorThread:
        """Start sweeping; returns self so that a caller can keep the started thread in one
        line."""
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.janitor.sweep(self.clock())
            except Exception:  # never let one bad pass end the janitor
                log.exception("janitor pass failed")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop sweeping and wait for a pass in progress (not when called from the janitor
        itself)."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)


def interval_for(expiry: float) -> float:
    """How often to look: a tenth of the expiry, between half a second and a minute."""
    return min(60.0, max(0.5, expiry / 10))
