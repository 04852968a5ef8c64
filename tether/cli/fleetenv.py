"""The fleet a device is in, for shell commands (`tetherctl invite ...`, `peer remove`).

A fleet host's invites, owners and quarantined addresses live in etcd, and its fleet peers are
rendered from etcd: a shell command that edited `<device>.state.json` or the device file would
make a join link no host knows, or "remove" a peer the renderer brings back. So a command on a
device whose daemon runs with `--fleet-etcd` (TETHERCTL_FLEET_ETCD in the environment or in
`<device>.env`, looked up as every option is: `devenv.lookup`) works on etcd instead, with the
same fleet options the daemon reads. It runs no watcher: it reads the device's keys once, and
again after each of its own commits.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tether.api.errors import Unavailable
from tether.cli import devenv


def device_fleet(config_dir: Path, name: str | None):
    """The device's Fleet (a `tether.api.fleet.device.Fleet` without watcher), or None when the
    device is not in one; ValueError for a bad fleet option."""
    if not name:
        return None
    env = devenv.read(config_dir, name)

    def get(option: str) -> str | None:
        return devenv.lookup(option, None, env)

    urls = get("fleet_etcd")
    if not urls:
        return None
    return make_fleet(urls, get, get("fleet_etcd_password"), watched=False)


def make_fleet(urls: str, get: Callable[[str], str | None], password: str | None, **kwargs):
    """A `Fleet` from `--fleet-etcd` URLs and the other fleet options as `get(dest)` gives them
    (the daemon: its parsed arguments; a shell command: `devenv.lookup`); `kwargs` go to Fleet.
    ValueError with a one-line message for a bad option."""
    from tether.api.fleet.device import Fleet  # the etcd client: only for fleets
    from tether.api.fleet.options import fleet_options  # (requests & co., ~0.1 s)

    options = fleet_options(
        urls,
        prefix=get("fleet_prefix"),
        cacert=get("fleet_etcd_cacert"),
        cert=get("fleet_etcd_cert"),
        key=get("fleet_etcd_key"),
        user=get("fleet_etcd_user"),
        password_file=get("fleet_etcd_password_file"),
        password_env=password,
    )
    return Fleet(options, **kwargs)


def registry(fleet) -> Callable:
    """PeerService's `registry`: the device's state in etcd, read once when first needed."""
    from tether.api.fleet.etcd import EtcdUnavailable  # only for fleets (requests & co.)
    from tether.api.fleet.registry import EtcdRegistry  # only for fleets

    def make(name: str):
        dev = fleet.device(name)
        if not dev.mirror.loaded:
            try:
                dev.load()
            except EtcdUnavailable as e:
                raise Unavailable(f"device {name} is in a fleet: {e}") from None
        return EtcdRegistry(dev)

    return make
