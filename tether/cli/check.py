"""`tetherctl check`: validate device files the way the daemon will, without running anything.

Arguments are file paths or device names (looked up in the config directory); none means every
device in the directory. Each problem is printed as `file:line: message`, and the exit status
is 1 if any file is bad, so it fits in a pre-commit hook or an ExecStartPre=. A file that group
or others may read gets wg-quick's warning on stderr (it holds a private key) but still passes.
"""

from __future__ import annotations

import os
import sys

from tether import keys
from tether.config import filemode, store
from tether.config.errors import ConfigError


def register(sub) -> None:
    """Add `tetherctl check` to the top-level parser."""
    p = sub.add_parser(
        "check",
        help="validate device files; errors as file:line",
        description=__doc__.splitlines()[0],
    )
    p.add_argument("targets", nargs="*", metavar="FILE|DEVICE")
    p.add_env_option(
        "--config-dir",
        metavar="DIR",
        help=f"where device files live (default {store.DEFAULT_CONFIG_DIR})",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    p.set_defaults(func=cmd_check)


def _resolve(target: str, directory) -> str:
    if os.sep in target or target.endswith(".conf") or os.path.exists(target):
        return target
    return str(store.device_path(directory, target))


def cmd_check(args) -> int:
    """Parse every target as the daemon would; 1 if any is bad, with one error line each."""
    directory = store.config_dir(args.config_dir)
    targets = args.targets or [
        str(store.device_path(directory, n)) for n in store.list_devices(directory)
    ]
    if not targets:
        print(f"tetherctl: no device files (*.conf) in {directory}", file=sys.stderr)
        return 1
    bad = 0
    for target in targets:
        try:
            path = _resolve(target, directory)
        except ValueError as e:
            print(f"{target}: {e}", file=sys.stderr)
            bad += 1
            continue
        try:
            cfg = store.load(path, filename=path)
        except ConfigError as e:
            print(e, file=sys.stderr)
            bad += 1
            continue
        warning = filemode.exposure_warning(path)
        if warning:
            print(warning, file=sys.stderr)
        if not args.quiet:
            iface = cfg.config.interface
            print(
                f"{path}: ok: public key {keys.encode(iface.public_key)}, "
                f"{len(cfg.config.peers)} peer(s)"
            )
    return 1 if bad else 0
