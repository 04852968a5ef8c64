"""Reading and writing device files safely: the one path every writer takes.

The files are the source of truth and people edit them by hand while the daemon, the API and
the CLI edit them too. So every write is a read-modify-write under an exclusive lock, and the
new content reaches the file by rename from a fully written and fsynced temporary file in the
same directory: a reader sees the old file or the new one, never a mix, and a crash leaves one
of the two. Mode and owner of the file carry over (a new file is 0600: it holds a private key).

The lock is `flock` on the directory itself, which every process can take without leaving lock
files next to the configs (where a wg-quick user would trip over them).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from tether.config.editor import ConfigFile
from tether.config.errors import ConfigError
from tether.config.model import DeviceConfig

DEFAULT_CONFIG_DIR = "/etc/tetherctl"
DEVICE_NAME = re.compile(r"[a-zA-Z0-9_=+.-]{1,15}")
NEW_FILE_MODE = 0o600


def config_dir(explicit: str | None = None) -> Path:
    return Path(explicit or os.environ.get("TETHERCTL_CONFIG_DIR") or DEFAULT_CONFIG_DIR)


def check_device_name(name: str) -> str:
    """wg-quick's rule for interface names; it also keeps names safe to use as file stems."""
    if not DEVICE_NAME.fullmatch(name) or name in (".", ".."):
        raise ValueError(f"{name!r} is not a valid device name (1-15 of a-z A-Z 0-9 _ = + . -)")
    return name


def device_path(directory: str | os.PathLike, name: str) -> Path:
    return Path(directory) / f"{check_device_name(name)}.conf"


def list_devices(directory: str | os.PathLike) -> list[str]:
    """Device names for every `*.conf` with a valid stem, sorted."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    out = []
    for entry in names:
        if (
            entry.endswith(".conf")
            and DEVICE_NAME.fullmatch(entry[:-5])
            and entry[:-5] not in (".", "..")
        ):
            out.append(entry[:-5])
    return sorted(out)


@contextlib.contextmanager
def locked(path: str | os.PathLike) -> Iterator[None]:
    """Exclusive lock serializing every writer of files in `path`'s directory (processes and
    threads alike: each call opens its own descriptor, and flock locks per open file)."""
    directory = os.path.dirname(os.path.realpath(path)) or "."
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


def atomic_write(path: str | os.PathLike, data: bytes, *, mode: int | None = None) -> None:
    """Replace the file's content atomically. Call it with `locked(path)` held. The temporary
    file is created 0600 (mkstemp) and gets the old file's mode, or `mode` if given, before a
    byte is written, so the content is never readable by more than the result will be."""
    target = os.path.realpath(path)  # write through a symlink to the file it names
    directory = os.path.dirname(target) or "."
    try:
        st = os.stat(target)
        old_mode, uid, gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
    except FileNotFoundError:
        old_mode, uid, gid = NEW_FILE_MODE, None, None
    mode = old_mode if mode is None else mode
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, mode)
        if uid is not None and (uid, gid) != (os.geteuid(), os.getegid()):
            try:
                os.fchown(fd, uid, gid)
            except PermissionError:
                pass  # not ours to give away; the file stays readable only by us, never wider
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    try:
        os.rename(tmp, target)
    except BaseException:
        os.unlink(tmp)
        raise
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    except OSError as e:  # some filesystems refuse fsync on directories; the rename still stands
        if e.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(dfd)


def display_name(path: str | os.PathLike) -> str:
    return os.path.basename(os.fspath(path))


def load(path: str | os.PathLike, filename: str | None = None) -> ConfigFile:
    """Parse a device file; every problem, including an unreadable file, is a ConfigError."""
    name = filename or display_name(path)
    return ConfigFile.parse_bytes(_read(path, name), name)


def _read(path: str | os.PathLike, name: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(name, None, f"cannot read: {e.strerror or e}") from None


@dataclass(frozen=True)
class Written:
    """A file's bytes and its configuration as of those bytes (`DeviceConfig.frozen`): what a
    writer hands the daemon so that it need not parse the file it just wrote again
    (`Daemon.sync`'s `parsed`, used only while the file still holds exactly `data`)."""

    data: bytes
    config: DeviceConfig


class ParseCache:
    """The last parse of one file, reused while the file's bytes are unchanged.

    Parsing a 10,000-peer file takes a few hundred milliseconds; reading and comparing its bytes
    takes about one. Comparing content (not mtime) means a hand edit is never missed.
    """

    def __init__(self) -> None:
        self.data: bytes | None = None
        self.cfg: ConfigFile | None = None

    def get(self, path: str | os.PathLike, name: str) -> tuple[bytes, ConfigFile]:
        data = _read(path, name)
        if self.cfg is None or data != self.data:
            self.cfg = ConfigFile.parse_bytes(data, name)
            self.data = data
        return data, self.cfg

    def put(self, data: bytes, cfg: ConfigFile) -> None:
        self.data, self.cfg = data, cfg

    def drop(self) -> None:
        self.data = self.cfg = None

    def written(self) -> Written | None:
        """The cached bytes with a frozen copy of their configuration (None: nothing cached)."""
        if self.cfg is None or self.data is None:
            return None
        return Written(self.data, self.cfg.config.frozen())


def edit(
    path: str | os.PathLike,
    change: Callable[[ConfigFile], object],
    create: Callable[[], ConfigFile] | None = None,
    cache: ParseCache | None = None,
) -> object:
    """Read-modify-write one device file under the lock. `change` edits the ConfigFile in place
    and returns a result for the caller; the file is written only if its text changed. With
    `create`, a missing file is started from what it returns."""
    name = display_name(path)
    cache = cache or ParseCache()
    with locked(path):
        try:
            before, cfg = cache.get(path, name)
        except ConfigError:
            cache.drop()
            if create is None or os.path.exists(path):
                raise
            before, cfg = None, create()
        try:
            result = change(cfg)
        except BaseException:
            cache.drop()  # the cached object may be half-edited
            raise
        after = cfg.text().encode("utf-8")
        if after != before:
            try:
                atomic_write(path, after)
            except BaseException:
                cache.drop()
                raise
        cache.put(after, cfg)
        return result


def copy_private(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Copy a device file (it holds a private key) to `target`, which ends up mode 0600 and is
    never readable by others at any moment: read under the source's lock, written by
    atomic_write under the target's."""
    with locked(source), open(source, "rb") as f:
        data = f.read()
    with locked(target):
        atomic_write(target, data, mode=NEW_FILE_MODE)
