"""Who may read a device file: it holds the device's private key.

wg-quick warns (and carries on) when a config file is world accessible; tetherctl does the same
for any permission of group or others, from the daemon (once per file per start), `tetherctl
check` and `tetherctl up`. It never refuses: the operator may have reasons (a group that runs
backups), and refusing would take a working device down over a warning.
"""

from __future__ import annotations

import os
import stat

EXPOSED_BITS = stat.S_IRWXG | stat.S_IRWXO


def exposure_warning(path: str | os.PathLike, mode: int | None = None) -> str | None:
    """The warning line for `path` if group or others have any permission on it, else None.
    `mode` is the file's st_mode when the caller already has it (None: stat the file)."""
    if mode is None:
        try:
            mode = os.stat(path).st_mode
        except OSError:
            return None  # a missing or unreadable file is reported by whoever reads it
    if not mode & EXPOSED_BITS:
        return None
    return (
        f"Warning: `{os.fspath(path)}' is accessible by group or others "
        f"(mode {stat.S_IMODE(mode):04o}); it holds a private key: chmod 600 it"
    )
