"""`tetherctl run`: bring devices up from their files and keep them in line with the files.

One asyncio loop serves every device of the process (sockets, timers, UAPI sockets). The config
directory is watched; each change is parsed off the loop and applied as a minimal diff by the
reconciler, so peers that did not change keep their sessions. A file that does not parse, or a
change that cannot be applied (a port in use), leaves the last good configuration running and
is reported once with file and line; fixing the file applies it.

Bring-up and tear-down follow wg-quick: PreUp, device, PostUp; PreDown, SaveConfig, device down,
PostDown. A failing PreUp (or PostUp) aborts that device's bring-up with the hook's output in
the log, and the daemon carries on with the others.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import signal
from dataclasses import dataclass, field
from pathlib import Path

from tether import keys
from tether.appliance import hooks, notify
from tether.appliance.hub import DaemonHub
from tether.appliance.reconcile import reconcile
from tether.appliance.saveconfig import fold_running_state
from tether.appliance.watcher import watch_config_dir
from tether.config import store
from tether.config.editor import ConfigFile
from tether.config.errors import ConfigError
from tether.config.model import DeviceConfig
from tether.device.device import Device
from tether.device.exit_shell import ExitShell
from tether.device.uapi_server import UapiServer
from tether.device.udp import BindError

log = logging.getLogger("tether.daemon")


@dataclass
class Slot:
    """Everything the daemon knows about one device name."""

    name: str
    path: Path
    device: Device | None = None
    uapi: UapiServer | None = None
    applied: DeviceConfig | None = None  # the last configuration that is live
    applied_bytes: bytes | None = None
    error: str | None = None  # the problem reported last, so it is logged once
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def up(self) -> bool:
        return self.device is not None


class Daemon:
    def __init__(
        self,
        config_dir: Path,
        names: list[str] | None = None,
        *,
        run_dir: str = "/var/run/wireguard",
        watch: bool = True,
        hook_timeout: float = hooks.DEFAULT_TIMEOUT,
        inside_factory=None,
        allow_local: bool = False,
        api=None,
        public_addresses=(),
    ):
        """`api` is an ApiSettings (None: no API); `allow_local` lets the exit reach the host's
        loopback, link-local and own addresses, which it refuses by default, as it refuses
        `public_addresses` (the operator's --public-ipv4/-ipv6)."""
        if inside_factory is None:
            inside_factory = functools.partial(
                ExitShell, allow_local=allow_local, public_addresses=tuple(public_addresses)
            )
        self.api = api
        self._api_handle = None
        self.config_dir = Path(config_dir)
        self.names = list(names or [])
        self.run_dir = run_dir
        self.watch = watch
        self.hook_timeout = hook_timeout
        self.inside_factory = inside_factory
        self.slots: dict[str, Slot] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self.ready = asyncio.Event()

    # -- which files ---------------------------------------------------------------------------

    def device_names(self) -> list[str]:
        return self.names or store.list_devices(self.config_dir)

    def slot(self, name: str) -> Slot:
        slot = self.slots.get(name)
        if slot is None:
            slot = self.slots[name] = Slot(name, store.device_path(self.config_dir, name))
        return slot

    # -- reading a file ------------------------------------------------------------------------

    async def _read(self, slot: Slot) -> tuple[bytes, ConfigFile] | None:
        """Parse the file off the loop; None (after one log line) if it is missing or bad."""
        try:
            data = await asyncio.to_thread(slot.path.read_bytes)
        except FileNotFoundError:
            return None
        except OSError as e:
            self._report(slot, f"{slot.path}: cannot read: {e.strerror}")
            return None
        try:
            cfg = await asyncio.to_thread(ConfigFile.parse_bytes, data, slot.path.name)
        except ConfigError as e:
            running = " (the last good configuration keeps running)" if slot.up else ""
            self._report(slot, f"{e}{running}")
            return None
        return data, cfg

    def _report(self, slot: Slot, message: str) -> None:
        if message != slot.error:
            log.error("%s", message)
        slot.error = message

    # -- up, apply, down -----------------------------------------------------------------------

    async def sync(self, name: str) -> None:
        """Make device `name` match its file: bring it up, apply a change, or take it down."""
        slot = self.slot(name)
        async with slot.lock:
            if not slot.path.exists():
                if slot.up:
                    log.info("%s: %s was removed", name, slot.path)
                    await self._down(slot, save=False)
                return
            read = await self._read(slot)
            if read is None:
                return
            data, cfg = read
            if slot.up and data == slot.applied_bytes:
                return  # our own write (SaveConfig, API) or a touch without change
            if slot.up:
                self._apply(slot, data, cfg)
            else:
                await self._up(slot, data, cfg)

    def _apply(self, slot: Slot, data: bytes, cfg: ConfigFile) -> None:
        try:
            ops = reconcile(slot.device, slot.applied, cfg.config)
        except (BindError, OSError, ValueError) as e:
            self._report(
                slot,
                f"{slot.path.name}: cannot apply: {e} (the last good configuration keeps running)",
            )
            return
        slot.applied, slot.applied_bytes, slot.error = cfg.config, data, None
        if ops:
            log.info("%s: applied %s", slot.name, ", ".join(_describe(op) for op in ops))

    async def _up(self, slot: Slot, data: bytes, cfg: ConfigFile) -> None:
        iface = cfg.config.interface
        name = slot.name
        try:
            await self._hooks(slot, "PreUp", iface.pre_up)
            device = Device(
                name,
                private_key=iface.private_key,
                mtu=iface.effective_mtu,
                addresses=iface.addresses,
                inside_factory=self.inside_factory,
                exit_settings=cfg.config.exit,
            )
            device.start(self.loop, iface.listen_port or 0)
            uapi = UapiServer(device, self.run_dir)
            try:
                await uapi.start()
                reconcile(device, None, cfg.config)
            except BaseException:
                device.close()
                await uapi.close()
                raise
            slot.device, slot.uapi = device, uapi
            slot.applied, slot.applied_bytes, slot.error = cfg.config, data, None
            try:
                await self._hooks(slot, "PostUp", iface.post_up)
            except hooks.HookError:
                # wg-quick removes the interface when a PostUp fails; so do we (no down hooks)
                await self._close_device(slot)
                raise
        except (hooks.HookError, BindError, OSError, ValueError) as e:
            self._report(slot, f"{name}: not brought up: {e}")
            return
        log.info(
            "%s: up, public key %s, UDP port %d, %d peer(s), UAPI %s",
            name,
            keys.encode(iface.public_key),
            device.listen_port,
            len(cfg.config.peers),
            uapi.path,
        )

    async def _down(self, slot: Slot, *, save: bool = True) -> None:
        applied = slot.applied
        iface = applied.interface if applied is not None else None
        name = slot.name
        if iface is not None:
            await self._hooks(slot, "PreDown", iface.pre_down, stop_on_error=False)
            if save and iface.save_config:
                await self._save(slot)
            elif iface.save_config:
                log.info("%s: file removed, so SaveConfig does not write it back", name)
        await self._close_device(slot)
        if iface is not None:
            await self._hooks(slot, "PostDown", iface.post_down, stop_on_error=False)
        log.info("%s: down", name)

    async def _hooks(
        self, slot: Slot, phase: str, commands: list[str], *, stop_on_error: bool = True
    ) -> None:
        """Run a phase's hooks off the loop, so other devices keep being served meanwhile."""
        if commands:
            await asyncio.to_thread(
                hooks.run_hooks,
                phase,
                commands,
                slot.name,
                config_file=str(slot.path),
                timeout=self.hook_timeout,
                stop_on_error=stop_on_error,
            )

    async def _close_device(self, slot: Slot) -> None:
        if slot.uapi is not None:
            await slot.uapi.close()
        if slot.device is not None:
            slot.device.close()
        slot.device = slot.uapi = None
        slot.applied = slot.applied_bytes = None

    async def _save(self, slot: Slot) -> None:
        state = slot.device.running_state()

        def write() -> bytes:
            def change(cfg: ConfigFile) -> bytes:
                fold_running_state(cfg, state)
                return cfg.text().encode("utf-8")

            return store.edit(slot.path, change)

        try:
            slot.applied_bytes = await asyncio.to_thread(write)
            log.info("%s: SaveConfig wrote the running configuration to %s", slot.name, slot.path)
        except (ConfigError, OSError) as e:
            log.error("%s: SaveConfig could not write %s: %s", slot.name, slot.path, e)

    # -- what the API calls ----------------------------------------------------------------------

    async def apply_now(self, name: str) -> None:
        """Apply the file as it is now (after an edit by the API), before answering the user."""
        await self.sync(name)
        slot = self.slots.get(name)
        if slot is None or not slot.up:
            raise RuntimeError(slot.error if slot and slot.error else f"{name} is not running")
        if slot.error:
            raise RuntimeError(slot.error)

    # -- the main loop ---------------------------------------------------------------------------

    async def sync_all(self) -> None:
        wanted = set(self.device_names())
        for name in sorted(wanted | set(n for n, s in self.slots.items() if s.up)):
            await self.sync(name)

    async def run(self) -> int:
        self.loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.loop.add_signal_handler(sig, self._stop.set)
        self.loop.add_signal_handler(signal.SIGHUP, self._reload.set)
        if self.names:
            missing = [n for n in self.names if not store.device_path(self.config_dir, n).exists()]
            if missing and len(missing) == len(self.names):
                log.error(
                    "no such device file: %s",
                    ", ".join(str(store.device_path(self.config_dir, n)) for n in missing),
                )
                return 1
        await self.sync_all()
        up = [s.name for s in self.slots.values() if s.up]
        if not up and not self.watch:
            return 1
        if self.api is not None:
            try:
                self._api_handle = await asyncio.to_thread(self.api.start, DaemonHub(self))
            except OSError as e:
                log.error("peer API: cannot listen on %s: %s", self.api, e)
                await self._shutdown()
                return 1
            log.info("peer API listening on %s", self.api)
        notify.ready(self._status())
        self.ready.set()
        tasks = [asyncio.create_task(self._stop.wait()), asyncio.create_task(self._reloads())]
        if self.watch:
            tasks.append(asyncio.create_task(self._watch()))
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await self._shutdown()
        return 0

    async def _shutdown(self) -> None:
        notify.stopping()
        if self._api_handle is not None:
            await asyncio.to_thread(self._api_handle.stop)
            self._api_handle = None
        for slot in list(self.slots.values()):
            if slot.up:
                async with slot.lock:
                    await self._down(slot)

    def stop(self) -> None:
        self._stop.set()

    async def _reloads(self) -> None:
        while True:
            await self._reload.wait()
            self._reload.clear()
            notify.reloading()
            log.info("SIGHUP: re-reading %s", self.config_dir)
            for slot in self.slots.values():
                slot.applied_bytes = None  # re-apply even unchanged files
            await self.sync_all()
            notify.ready(self._status())

    async def _watch(self) -> None:
        async for names in watch_config_dir(self.config_dir, self.names or None, self._stop):
            if names is None:
                await self.sync_all()  # the watch is live now: catch what came before it
                continue
            for name in sorted(names):
                await self.sync(name)
            notify.status(self._status())

    def _status(self) -> str:
        up = sorted(s.name for s in self.slots.values() if s.up)
        bad = sorted(s.name for s in self.slots.values() if s.error)
        text = f"{len(up)} device(s) up" + (f": {', '.join(up)}" if up else "")
        if bad:
            text += f"; problems: {', '.join(bad)}"
        return text


def _describe(op) -> str:
    if op.name in ("set_peer", "remove_peer"):
        return f"{op.name} {keys.encode(op.args[0])[:8]}…"
    return op.name
