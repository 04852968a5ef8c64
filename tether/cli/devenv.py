"""`<config dir>/<device>.env`: per-device daemon options, in systemd EnvironmentFile syntax.

The original tool kept a device's public addresses and log level in the CLI process (`add
--ipv4=... --log=v`). Here a device lives in its file and is run by a daemon, usually the
systemd unit `tetherctl@<device>`, which reads `EnvironmentFile=-/etc/tetherctl/%i.env`; so those
settings are written there as TETHERCTL_ variables, where the unit, `tetherctl up` and the `peer`
commands all find them. Lines we do not set are kept as they are.

`lookup` is the one place an option's value is looked up outside argparse: the command line,
then the process environment, then this file, so that every command (today's `peer` commands,
the original's `up`, `start-api`, `default-builder`, ...) resolves an option the same way.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from pathlib import Path

from tether.config import store

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ASSIGN = re.compile(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=(.*)")


def env_name(option: str) -> str:
    """The variable behind an option, whatever its spelling: `--public-ipv4`, `public-ipv4` and
    `public_ipv4` are all TETHERCTL_PUBLIC_IPV4 (and the original's `--api_url` is
    TETHERCTL_API_URL), so a command never writes a variable's name by hand."""
    return "TETHERCTL_" + option.lstrip("-").upper().replace("-", "_")


def lookup(
    option: str, given: str | None = None, device_env: Mapping[str, str] | None = None
) -> str | None:
    """An option's value from the first place that has one: the command line (`given`), the
    process environment (what the shell or a unit's EnvironmentFile set), then the device's
    `<dname>.env` (`device_env`, as `read` returns it). None when no place has one; an empty
    value counts as none, as systemd's `VAR=` unsets an option."""
    if given is not None and given != "":
        return given
    name = env_name(option)
    return os.environ.get(name) or (device_env or {}).get(name) or None


def take(option: str) -> str | None:
    """A secret option's value from the process environment, removed from it: hooks and
    other children this process starts inherit the environment (empty counts as none)."""
    return os.environ.pop(env_name(option), None) or None


def path(config_dir: str | os.PathLike, name: str) -> Path:
    """The device's variables file (`<config dir>/<name>.env`); ValueError on a bad name."""
    return Path(config_dir) / f"{store.check_device_name(name)}.env"


def read(config_dir: str | os.PathLike, name: str) -> dict[str, str]:
    """The file's assignments as systemd reads them (quotes removed, comments skipped); an
    absent or unreadable file is empty, as `EnvironmentFile=-` treats it."""
    try:
        text = path(config_dir, name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    out: dict[str, str] = {}
    for line in _lines(text):
        if line.lstrip().startswith(("#", ";")):
            continue
        m = _ASSIGN.fullmatch(line)
        if not m:
            continue
        value = m.group(2).strip()
        try:
            parts = shlex.split(value, comments=False)
            value = parts[0] if len(parts) == 1 else value
        except ValueError:
            pass
        out[m.group(1)] = value
    return out


def _lines(text: str) -> list[str]:
    """The file's lines as systemd splits them: at line feeds only (str.splitlines would also
    split at form feeds and Unicode separators, which a quoted value may hold)."""
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    return lines[:-1] if lines and lines[-1] == "" else lines


def update(config_dir: str | os.PathLike, name: str, values: dict[str, str | None]) -> None:
    """Set (or, with None, delete) variables, keeping every other line; written atomically
    under the config directory's lock, mode 0600 for a new file. A name or value that one
    `NAME=value` line cannot hold (a line break, a NUL, a name that is no variable name) is a
    ValueError before anything is written."""
    for key, value in values.items():
        if not _NAME.fullmatch(key):
            raise ValueError(f"{key!r} is not an environment variable name")
        if value is not None and ("\n" in value or "\r" in value or "\0" in value):
            raise ValueError(f"{key}: a value must be one line without NUL bytes")
    target = path(config_dir, name)
    with store.locked(target):
        try:
            lines = _lines(target.read_text(encoding="utf-8"))
        except FileNotFoundError:
            lines = []
        pending = dict(values)
        out = []
        for line in lines:
            m = _ASSIGN.fullmatch(line)
            if m and m.group(1) in pending:
                value = pending.pop(m.group(1))
                if value is not None:
                    out.append(f"{m.group(1)}={shlex.quote(value)}")
                continue
            out.append(line)
        out.extend(f"{k}={shlex.quote(v)}" for k, v in pending.items() if v is not None)
        store.atomic_write(target, ("\n".join(out) + "\n").encode("utf-8") if out else b"")
