"""Watching the config directory: which devices' files changed.

watchfiles (inotify underneath) reports every create, write, rename and delete; editors that save
through a temporary file and a rename, and our own atomic writes, show up as several events on
different names. A short debounce folds such a burst into one batch, and only `<device>.conf`
names count, so temp files, backups and swap files are ignored. Whatever the events were, the
daemon re-reads the named file and compares it with what is running, so a missed or duplicated
event can never leave the device wrong for longer than the next event.

inotify watches the directory itself: once it is removed or moved away, nothing more is ever
reported, even for a directory recreated at the same path. Rather than carry on deaf, the
watch raises WatchLost, which the daemon treats as fatal (exit status 1, so a supervisor
restarts it and the restart says what is wrong).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import watchfiles

from tether.config.store import DEVICE_NAME

DEBOUNCE_MS = 50
STEP_MS = 10
# awatch yields (empty) after this much quiet; the first such yield proves the watch is live
STARTUP_PROBE_MS = 200


class WatchLost(RuntimeError):
    """The config directory cannot be watched (any more): missing, removed or moved away."""


def device_of(path: str, directory: Path) -> str | None:
    """The device a changed path belongs to: a `<name>.conf` directly in the directory with a
    valid device name; None for anything else (editor swap files, subdirectories)."""
    p = Path(path)
    if p.parent != directory or p.suffix != ".conf":
        return None
    stem = p.name[:-5]
    return stem if DEVICE_NAME.fullmatch(stem) and stem not in (".", "..") else None


async def watch_config_dir(
    directory: Path, only: list[str] | None, stop: asyncio.Event
) -> AsyncIterator[set[str] | None]:
    """Yields sets of changed device names. The first item is None, as soon as the watch is in
    place: a file written between the daemon's first scan and that moment produced no event, so
    the caller rescans everything then."""
    directory = Path(directory).resolve()
    wanted = set(only) if only else None
    started = False
    changes_of = watchfiles.awatch(
        directory,
        debounce=DEBOUNCE_MS,
        step=STEP_MS,
        stop_event=stop,
        recursive=False,
        watch_filter=None,
        rust_timeout=STARTUP_PROBE_MS,
        yield_on_timeout=True,
    )
    try:
        async with contextlib.aclosing(changes_of):
            async for changes in changes_of:
                if not started:
                    started = True
                    yield None
                names = set()
                for change, path in changes:
                    if change == watchfiles.Change.deleted and Path(path) == directory:
                        raise WatchLost(
                            f"config directory {directory} was removed or moved away; "
                            "its files can no longer be watched"
                        )
                    name = device_of(path, directory)
                    if name is not None and (wanted is None or name in wanted):
                        names.add(name)
                if names:
                    yield names
    except FileNotFoundError:
        raise WatchLost(f"config directory {directory} does not exist; cannot watch it") from None
