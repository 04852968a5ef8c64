"""`tetherctl run`: bring devices up from their files and keep them in line with the files.

One asyncio loop serves every device of the process (sockets, timers, UAPI sockets). The config
directory is watched; each change is parsed off the loop and applied as a minimal diff by the
reconciler, so peers that did not change keep their sessions. A file that does not parse, or a
change that cannot be applied (a port in use), leaves the last good configuration running and
is reported once with file and line; fixing the file applies it.

Bring-up and tear-down follow wg-quick: PreUp, device, PostUp; PreDown, SaveConfig, device down,
PostDown. A failing PreUp (or PostUp) aborts that device's bring-up with the hook's output in
the log, and the daemon carries on with the others.

Failures are sorted by what they take down. One device's problem (a bad file, a port in use, a
failing hook) is that device's and is logged. An error escaping one callback of the loop (one
datagram, one timer tick, one UAPI connection) is logged with its traceback, rate-limited, and
serving goes on: the next datagram or tick runs the same code afresh, and one bad packet must not
let a stranger restart every device. But when something the whole process relies on ends (the
config watcher, the SIGHUP reloader, the API server's thread) or memory runs out, the daemon
logs `fatal: <reason>`, shuts down in order and exits with status 1, so that a supervisor
(systemd's Restart=on-failure) starts it afresh instead of leaving it running deaf.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from tether import keys
from tether.api import registry as api_registry
from tether.appliance import hooks, notify
from tether.appliance.hub import DaemonHub
from tether.appliance.reconcile import allowed_ips_changed, describe, reconcile
from tether.appliance.saveconfig import fold_running_state
from tether.appliance.watcher import WatchLost, watch_config_dir
from tether.config import filemode, store
from tether.config.editor import ConfigFile
from tether.config.errors import ConfigError
from tether.config.model import DeviceConfig
from tether.device.change import DeviceChange
from tether.device.device import Device
from tether.device.exit import ExitShell
from tether.device.uapi.server import UapiServer
from tether.device.udp import BindError

log = logging.getLogger("tether.daemon")

# An error escaping a loop callback is logged with its traceback at most this often per origin.
LOOP_ERROR_INTERVAL = 60.0


@dataclass
class Slot:
    """Everything the daemon knows about one device name."""

    name: str
    path: Path
    device: Device | None = None
    uapi: UapiServer | None = None
    applied: DeviceConfig | None = None  # the last configuration that is live
    applied_bytes: bytes | None = None
    generation: int | None = None  # the device's generation right after `applied` went live
    error: str | None = None  # the problem reported last, so it is logged once
    mode_checked: bool = False  # the file's permissions were looked at (warned once per start)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def up(self) -> bool:
        """Whether the device runs (the API addresses only devices that are up)."""
        return self.device is not None


class Daemon:
    """`tetherctl run`: one process, one loop, every device of a config directory kept in line
    with its file (see the module docstring)."""

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
        fleet=None,
    ):
        """`api` is an ApiSettings (None: no API); `allow_local` lets the exit reach the host's
        loopback, link-local and own addresses, which it refuses by default, as it refuses
        `public_addresses` (the operator's --public-ipv4/-ipv6). `fleet`: a
        `tether.api.fleet.device.Fleet` whose peers are rendered into the files (--fleet-etcd)."""
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
        self._registries: dict = {}  # device name -> tether.api.registry.FileRegistry
        # device name -> (bytes, parse) the API wrote last (`offer`): what `_read` uses instead
        # of parsing the file again when the watcher sees the API's write before `apply_now`
        self.offered: dict[str, tuple] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()
        self.ready = asyncio.Event()
        self.fatal: str | None = None  # why the daemon stopped on its own (exit status 1)
        self._loop_errors: dict[tuple, tuple[float, int]] = {}
        self.fleet = fleet
        self.fleet_runner = None  # tether.appliance.fleet.FleetRunner, once serving

    # -- which files ---------------------------------------------------------------------------

    def device_names(self) -> list[str]:
        """The devices this daemon serves: those named on the command line, else every file."""
        return self.names or store.list_devices(self.config_dir)

    def slot(self, name: str) -> Slot:
        """The slot of a device name, made on first use (a name is known before it is up)."""
        slot = self.slots.get(name)
        if slot is None:
            slot = self.slots[name] = Slot(name, store.device_path(self.config_dir, name))
        return slot

    # -- reading a file ------------------------------------------------------------------------

    async def _read(self, slot: Slot, parsed=None) -> tuple[bytes, ConfigFile] | None:
        """Parse the file off the loop; None (after one log line) if it is missing or bad.
        `parsed`: (bytes, an object with `.config`) its writer already has: used when the file
        still holds those bytes (the fleet's renderer, the API; a 10,000-peer parse costs
        ~0.5 s); so is the API's last `offer`."""
        try:
            data, mode = await asyncio.to_thread(_read_file, slot.path)
        except FileNotFoundError:
            return None
        except OSError as e:
            self._report(slot, f"{slot.path}: cannot read: {e.strerror}")
            return None
        if not slot.mode_checked:
            slot.mode_checked = True
            warning = filemode.exposure_warning(slot.path, mode)
            if warning:
                log.warning("%s", warning)
        for known in (parsed, self.offered.get(slot.name)):
            if known is not None and known[0] == data:
                return data, known[1]
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

    async def sync(self, name: str, parsed=None) -> None:
        """Make device `name` match its file: bring it up, apply a change, or take it down.
        `parsed`: see `_read`."""
        slot = self.slot(name)
        async with slot.lock:
            if not slot.path.exists():
                if slot.up:
                    log.info("%s: %s was removed", name, slot.path)
                    await self._down(slot, save=False)
                return
            if parsed is None and self.fleet_runner is not None:
                parsed = self.fleet_runner.rendered(name)  # the watcher may see it first
            read = await self._read(slot, parsed)
            if read is None:
                return
            data, cfg = read
            if slot.up and data == slot.applied_bytes:
                return  # our own write (SaveConfig, API) or a touch without change
            if self.fleet_runner is not None:
                self.fleet_runner.file_changed(name, data)  # a hand edit of a rendered block?
            if slot.up:
                before = slot.applied
                change = self._apply(slot, data, cfg)
                if before is not None and slot.applied is cfg.config:
                    await asyncio.to_thread(self._released, name, before, cfg.config, change)
            else:
                await self._up(slot, data, cfg)
                if self.fleet_runner is not None and slot.up:
                    self.fleet_runner.ensure(name)

    def _apply(self, slot: Slot, data: bytes, cfg: ConfigFile) -> DeviceChange:
        try:
            change = reconcile(slot.device, slot.applied, cfg.config, since=slot.generation)
        except (BindError, OSError, ValueError) as e:
            self._report(
                slot,
                f"{slot.path.name}: cannot apply: {e} (the last good configuration keeps running)",
            )
            return DeviceChange()
        slot.applied, slot.applied_bytes, slot.error = cfg.config, data, None
        slot.generation = slot.device.generation
        if change:
            log.info("%s: applied %s", slot.name, ", ".join(describe(change)))
        return change

    def _released(
        self, name: str, before: DeviceConfig, after: DeviceConfig, change: DeviceChange
    ) -> None:
        """Peers that left the file (by any means) lose their API owner entry and the
        addresses a peer no longer routes enter quarantine (tether.api.registry). Runs off
        the loop; `change` (the reconciler's) names the peers whose AllowedIPs changed."""
        reg = self._registries.get(name)
        if reg is None:
            reg = self._registries[name] = api_registry.FileRegistry(
                api_registry.state_path(self.config_dir, name)
            )
        quarantine = getattr(self.api, "quarantine", api_registry.DEFAULT_QUARANTINE)
        try:
            changed = allowed_ips_changed(change)
            api_registry.record_file_change(
                reg, before, after, now=time.time(), quarantine=quarantine, changed=changed
            )
        except (ValueError, OSError) as e:  # StateError is a ValueError
            log.error("%s: released addresses not recorded: %s", name, e)

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
            slot.generation = device.generation
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
            await self._down_hooks(slot, "PreDown", iface.pre_down)
            if save and iface.save_config:
                await self._save(slot)
            elif iface.save_config:
                log.info("%s: file removed, so SaveConfig does not write it back", name)
        await self._close_device(slot)
        if iface is not None:
            await self._down_hooks(slot, "PostDown", iface.post_down)
        log.info("%s: down", name)

    async def _down_hooks(self, slot: Slot, phase: str, commands: list[str]) -> None:
        """Down hooks report their own failures (spawn errors included) and carry on; whatever
        else goes wrong around them (no thread to run them in) must not stop the tear-down."""
        try:
            await self._hooks(slot, phase, commands, stop_on_error=False)
        except Exception as e:
            log.error("%s: %s hooks not run: %s", slot.name, phase, e)

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
        state = slot.device.snapshot()

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

    def offer(self, name: str, parsed: tuple) -> None:
        """(bytes, parse) of device `name`'s file as the API just wrote it (any thread: one
        dict store); see `_read`."""
        self.offered[name] = parsed

    async def apply_now(self, name: str) -> None:
        """Apply the file as it is now (after an edit by the API), before answering the user
        (what the API wrote, it `offer`ed first: see `_read`)."""
        await self.sync(name)
        slot = self.slots.get(name)
        if slot is None or not slot.up:
            raise RuntimeError(slot.error if slot and slot.error else f"{name} is not running")
        if slot.error:
            raise RuntimeError(slot.error)

    # -- the main loop ---------------------------------------------------------------------------

    async def sync_all(self) -> None:
        """`sync` every device that has a file or is up (startup, SIGHUP, a fresh watch)."""
        wanted = set(self.device_names())
        for name in sorted(wanted | set(n for n, s in self.slots.items() if s.up)):
            await self.sync(name)

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT (status 0), or until something the whole process needs
        fails (status 1, after `fatal: <reason>` in the log and an orderly shutdown)."""
        self.loop = asyncio.get_running_loop()
        previous_handler = self.loop.get_exception_handler()
        self.loop.set_exception_handler(self._on_loop_error)
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.loop.add_signal_handler(sig, self._stop.set)
        self.loop.add_signal_handler(signal.SIGHUP, self._reload.set)
        try:
            problem = self._startup_problem()
            if problem is not None:
                log.error("%s", problem)
                return 1
            try:
                status = await self._serve()
            except Exception as e:
                self.fail(f"unexpected error: {type(e).__name__}: {e}", e)
                status = 1
            finally:
                await self._shutdown()
            return 1 if self.fatal is not None else status
        finally:
            self.loop.set_exception_handler(previous_handler)

    def _startup_problem(self) -> str | None:
        if not self.config_dir.is_dir():
            return f"config directory {self.config_dir} does not exist or is not a directory"
        if self.names:
            missing = [n for n in self.names if not store.device_path(self.config_dir, n).exists()]
            if missing and len(missing) == len(self.names):
                return "no such device file: " + ", ".join(
                    str(store.device_path(self.config_dir, n)) for n in missing
                )
        return None

    async def _serve(self) -> int:
        await self.sync_all()
        if not self.watch and not any(s.up for s in self.slots.values()):
            return 1
        if self.fleet is not None:
            from tether.appliance.fleet import FleetRunner  # the etcd client: only for fleets

            self.fleet_runner = FleetRunner(self, self.fleet)
            await self.fleet_runner.start(self.device_names())
        if self.api is not None:
            try:
                self._api_handle = await asyncio.to_thread(self.api.start, DaemonHub(self))
            except OSError as e:
                log.error("peer API: cannot listen on %s: %s", self.api, e)
                return 1
            # set before looking at `failed`: a failure in between is seen by one or the other
            self._api_handle.on_failure = self._api_failed
            if self._api_handle.failed is not None:
                self._api_failed(self._api_handle.failed)
            log.info("peer API listening on %s", self.api)
        notify.ready(self._status())
        self.ready.set()
        tasks = [asyncio.create_task(self._supervise("the SIGHUP reloader", self._reloads()))]
        if self.watch:
            tasks.append(asyncio.create_task(self._supervise("the config watcher", self._watch())))
        try:
            await self._stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return 0

    # -- failures that end the process -----------------------------------------------------------

    def fail(self, reason: str, error: BaseException | None = None) -> None:
        """Something the whole process needs cannot go on: log why (with the traceback of an
        unexpected error) and stop; `run()` then returns 1. The first reason is the one kept."""
        if self.fatal is None:
            self.fatal = reason
            log.critical("fatal: %s; stopping (exit status 1)", reason, exc_info=error)
            notify.status(f"fatal: {reason}")
        self._stop.set()

    async def _supervise(self, what: str, work) -> None:
        """Run a background task that must last as long as the daemon: its end is fatal."""
        try:
            await work
        except asyncio.CancelledError:
            raise
        except WatchLost as e:
            self.fail(str(e))
        except Exception as e:
            self.fail(f"{what} failed: {type(e).__name__}: {e}", e)
        else:
            if not self._stop.is_set():
                self.fail(f"{what} ended unexpectedly")

    def _api_failed(self, error: BaseException) -> None:
        """Called from the API server's thread when its loop dies."""
        try:
            self.loop.call_soon_threadsafe(
                self.fail, f"the peer API server stopped: {type(error).__name__}: {error}"
            )
        except RuntimeError:
            pass  # the loop is closed: the daemon has finished anyway

    def _on_loop_error(self, loop, context: dict) -> None:
        """An exception escaped a callback of the loop (a device's socket reader or timer, the
        UAPI server's accept). Logged with its traceback, at most once a minute per origin (a
        stranger's packets must not fill the disk), and serving goes on; out of memory is fatal."""
        error = context.get("exception")
        message = context.get("message") or "unexpected error in the event loop"
        if isinstance(error, MemoryError):
            self.fail(f"{message}: out of memory", error)
            return
        origin = _origin(error) if error is not None else (message,)
        now = time.monotonic()
        last, suppressed = self._loop_errors.get(origin, (None, 0))
        if last is not None and now - last < LOOP_ERROR_INTERVAL:
            self._loop_errors[origin] = (last, suppressed + 1)
            return
        if len(self._loop_errors) >= 1024:
            self._loop_errors.clear()
        self._loop_errors[origin] = (now, 0)
        more = f" ({suppressed} more from there since the last report)" if suppressed else ""
        log.error("%s%s; serving goes on", message, more, exc_info=error)

    async def _shutdown(self) -> None:
        notify.stopping()
        if self._api_handle is not None:
            await asyncio.to_thread(self._api_handle.stop)
            self._api_handle = None
        if self.fleet_runner is not None:
            await self.fleet_runner.close()
            self.fleet_runner = None
        for slot in list(self.slots.values()):
            if slot.up:
                async with slot.lock:
                    await self._down(slot)

    def stop(self) -> None:
        """Ask `run()` to shut down in order and return 0 (tests, and the signal handlers)."""
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
                log.debug("watching %s for changes", self.config_dir)
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


def _read_file(path: Path) -> tuple[bytes, int]:
    """The file's bytes and the mode of that very file (not of one renamed over it since)."""
    with open(path, "rb") as f:
        return f.read(), os.fstat(f.fileno()).st_mode


def _origin(error: BaseException) -> tuple:
    """Where an exception came from (type, innermost file and line): what rate-limits its log."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return (type(error).__name__,)
    return (type(error).__name__, tb.tb_frame.f_code.co_filename, tb.tb_lineno)
