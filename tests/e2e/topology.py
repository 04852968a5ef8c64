"""DESIGN.md §6: client ↔ exit ↔ inet, made by the test and removed with it.

    client ns(s): wireguard-go, default routes into the tunnel   198.18.1N.2 (client N)
    exit ns:      tetherctl run (our device + exit)              198.18.1N.1, 198.18.2.1
    inet ns:      servers standing in for the Internet           198.18.2.2 / fd18:2::2

`inet` has no route to the tunnel subnets and the clients none to `inet` except through
WireGuard, so an answer can only arrive if our exit proxied it. 198.18.0.0/15 (benchmarking) and
fd18:2::/64 (a ULA) are refused by the exit's defaults, so the device file opens the `inet`
subnets in its `[Exit]` section, as an operator sharing a LAN would (`EXIT_SECTION`).
"""

from __future__ import annotations

import sys
from pathlib import Path

from tether import keys

from .netlab import NetLab, require, wait_for

TOOLS = Path(__file__).parent / "tools"
INET4, INET6 = "198.18.2.2", "fd18:2::2"
PORT = 51820
TUNNEL4, TUNNEL6 = "10.99.0", "fd99::"
EXIT_SECTION = "[Exit]\nAllowDestinations = 198.18.2.0/24, fd18:2::/64\n"


class Topology:
    def __init__(
        self,
        lab: NetLab,
        tmp: Path,
        *,
        clients: int = 1,
        http_files: dict | None = None,
        daemon_args: tuple = (),
        exit_extra: str = "",
        peer_extra: dict[int, str] | None = None,
        prepare=None,
    ):
        """`exit_extra`: more lines for the device's [Exit] section (e.g. `PeerToPeer = yes`);
        `peer_extra`: more lines for client i's [Peer] section; `prepare(topology)`: called once
        exit and inet exist, before the daemon starts (e.g. a proxy namespace between them)."""
        require("wireguard-go", "wg", "ip", "ping", "curl")
        self.lab, self.tmp = lab, tmp
        self.exit_ns = lab.netns("x")
        self.inet_ns = lab.netns("i")
        lab.link(
            self.exit_ns,
            self.inet_ns,
            ["198.18.2.1/24", "fd18:2::1/64"],
            [f"{INET4}/24", f"{INET6}/64"],
        )
        # the servers
        www = tmp / "www"
        www.mkdir()
        for name, data in (http_files or {}).items():
            (www / name).write_bytes(data)
        ready = tmp / "inet.ready"
        lab.spawn(
            self.inet_ns,
            sys.executable,
            str(TOOLS / "inet_servers.py"),
            str(www),
            str(ready),
            log=tmp / "inet.log",
        )
        wait_for(ready.exists, 15, "inet servers")
        if prepare is not None:
            prepare(self)
        # our device
        self.dev = lab.name("tx")
        self.server_priv = keys.genkey()
        self.server_pub = keys.pubkey(self.server_priv)
        self.clients = []
        peers = ""
        for i in range(clients):
            priv = keys.genkey()
            host = i + 2
            self.clients.append({"priv": priv, "pub": keys.pubkey(priv), "host": host})
            peers += (
                f"\n[Peer]\nPublicKey = {keys.pubkey(priv)}\n"
                f"AllowedIPs = {TUNNEL4}.{host}/32, {TUNNEL6}{host:x}/128\n"
                + (peer_extra or {}).get(i, "")
            )
        self.config_dir = tmp / "conf"
        self.config_dir.mkdir()
        self.path = self.config_dir / f"{self.dev}.conf"
        self.path.write_text(
            f"[Interface]\nPrivateKey = {self.server_priv}\nListenPort = {PORT}\n"
            f"Address = {TUNNEL4}.1/24, {TUNNEL6}1/64\n\n{EXIT_SECTION}{exit_extra}{peers}"
        )
        self.log = tmp / "tetherctl.log"
        self.daemon = lab.tetherctl(
            self.exit_ns, self.config_dir, self.dev, log=self.log, args=daemon_args
        )
        wait_for(
            lambda: (
                Path(f"/var/run/wireguard/{self.dev}.sock").exists()
                or self.daemon.poll() is not None
            ),
            20,
            "tetherctl up",
        )
        assert self.daemon.poll() is None, self.log.read_text()
        # the clients
        for i, client in enumerate(self.clients):
            host = client["host"]
            conf = (
                f"[Interface]\nPrivateKey = {client['priv']}\n\n[Peer]\n"
                f"PublicKey = {self.server_pub}\nAllowedIPs = 0.0.0.0/0, ::/0\n"
                f"Endpoint = {self.exit_side(i)}:{PORT}\nPersistentKeepalive = 25\n"
            )
            self.add_client(i, conf, [f"{TUNNEL4}.{host}/24", f"{TUNNEL6}{host:x}/64"], client)

    @staticmethod
    def exit_side(i: int) -> str:
        """The exit's address on client i's link (each client has its own link and subnet)."""
        return f"198.18.{10 + i}.1"

    def add_client(self, i: int, wg_conf: str, addresses: list[str], client: dict) -> dict:
        """A wireguard-go client in its own namespace, all its traffic routed into the tunnel."""
        lab = self.lab
        ns = lab.netns(f"c{i}")
        client["ns"] = ns
        if client not in self.clients:
            self.clients.append(client)
        lab.link(ns, self.exit_ns, [f"198.18.{10 + i}.2/24"], [f"{self.exit_side(i)}/24"])
        ifname = lab.name(f"w{i}")
        client["if"] = ifname
        lab.wireguard_go(ns, ifname, wg_conf, addresses)
        lab.sh("ip", "-n", ns, "route", "add", "default", "dev", ifname)
        if any(":" in a for a in addresses):
            lab.sh("ip", "-n", ns, "-6", "route", "add", "default", "dev", ifname)
        return client

    def client_sh(self, *argv: str, client: int = 0, timeout: float = 120, check: bool = False):
        return self.lab.ns_sh(self.clients[client]["ns"], *argv, timeout=timeout, check=check)

    def check(self, *argv: str, client: int = 0, timeout: float = 180):
        return self.client_sh(
            sys.executable, str(TOOLS / "client_checks.py"), *argv, client=client, timeout=timeout
        )
