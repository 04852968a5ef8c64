"""Fleet hosts without the daemon: a config dir, a Fleet, the watcher and renderer of
`tether.appliance.fleet` and the API app over a FakeHub, so that service, registry, watch and
renderer are tested together against a real etcd in milliseconds."""

from __future__ import annotations

from pathlib import Path

from tether import keys
from tether.api.fleet.device import Fleet, FleetOptions
from tether.api.fleet.etcd import EtcdOptions
from tether.api.http.app import make_app
from tether.api.peers.clientconf import PublicEndpoints
from tether.appliance.fleet import DeviceFleetSync
from tether.config import store

from ..api.support import FakeHub, call, new_key, write_device
from ..e2e.netlab import wait_for

PUBLIC = PublicEndpoints(ipv4="203.0.113.7")
NAME = "fl0"
PRIVATE = keys.genkey()


def device_text(subnet: str = "10.77.0", prefix: int = 24) -> str:
    return (
        f"# the shared [Interface]\n[Interface]\nPrivateKey = {PRIVATE}\nListenPort = 51820\n"
        f"Address = {subnet}.1/{prefix}\n"
    )


class Host:
    def __init__(self, tmp: Path, label: str, urls: str, text: str | None = None, **app_kw):
        self.dir = tmp / label
        self.dir.mkdir()
        self.path = write_device(self.dir, NAME, text or device_text())
        self.fleet = Fleet(FleetOptions(EtcdOptions(tuple(urls.split(",")))))
        self.hub = FakeHub(self.dir)
        self.applied = 0

        def apply(parsed) -> None:
            self.applied += 1

        self.sync = DeviceFleetSync(self.path, self.fleet.device(NAME), NAME, apply)
        self.sync.start()
        assert self.sync.loaded.wait(10), "the first read from etcd"
        self.app = make_app(self.hub, public=PUBLIC, rate_limit=None, fleet=self.fleet, **app_kw)
        self.service = self.app.tether_service

    @property
    def dev(self):
        return self.fleet.device(NAME)

    def peers(self) -> dict[str, list[str]]:
        cfg = store.load(self.path)
        return {p.public_key_b64: [str(n) for n in p.allowed_ips] for p in cfg.config.peers}

    def close(self) -> None:
        self.sync.close()


def add_seen(a: Host, b: Host, within: float = 3.0) -> str:
    """A new peer added through `a`'s API (anyone may: self-service), returned once `b`'s file
    has it (the fleet carried it over within `within` seconds)."""
    key = new_key()
    assert call(a.app, "POST", f"/peer/add/any/{key}").status == 200
    wait_for(lambda: key in b.peers(), within, "the peer added on a reaches b")
    return key
