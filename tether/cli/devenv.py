"""`<config dir>/<device>.env`: per-device daemon options, in systemd EnvironmentFile syntax.

The original tool kept a device's public addresses and log level in the CLI process (`add
--ipv4=... --log=v`). Here a device lives in its file and is run by a daemon, usually the
systemd unit `tetherctl@<device>`, which reads `EnvironmentFile=-/etc/tetherctl/%i.env`; so those
settings are written there as TETHERCTL_ variables, where the unit, `tetherctl up` and the `peer`
commands all find them. Lines we do not set are kept as they are.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

from tether.config import store

_ASSIGN = re.compile(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=(.*)")


def path(config_dir: str | os.PathLike, name: str) -> Path:
    return Path(config_dir) / f"{store.check_device_name(name)}.env"


def read(config_dir: str | os.PathLike, name: str) -> dict[str, str]:
    try:
        text = path(config_dir, name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    out: dict[str, str] = {}
    for line in text.splitlines():
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


def update(config_dir: str | os.PathLike, name: str, values: dict[str, str | None]) -> None:
    """Set (or, with None, delete) variables, keeping every other line; written atomically
    under the config directory's lock, mode 0600 for a new file."""
    target = path(config_dir, name)
    with store.locked(target):
        try:
            lines = target.read_text(encoding="utf-8").splitlines()
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
