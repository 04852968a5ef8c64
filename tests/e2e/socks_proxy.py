"""An upstream SOCKS5 proxy for the egress tests and bench: Debian's dante-server (`danted`) in a
`proxy` namespace of the lab, between the exit and inet, so that inet sees the proxy's address
for proxied flows and the exit's for direct ones:

    exit ns  198.18.5.1 ── 198.18.5.2:1080  proxy ns (danted)  198.18.6.1 ── 198.18.6.2  inet ns
    exit ns  198.18.2.1 ─────────────────────────────────────────────────── 198.18.2.2  inet ns

danted runs as a process of the test with its own config and pid file, and authenticates with
`socksmethod: username` against a user that exists only for it: danted runs in a private mount
namespace (`unshare --mount`) where a passwd and a shadow file of its own (root, nobody and
that user) are bind-mounted over the real ones. Nothing on the host changes; killing the
process group removes it all.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

from .netlab import NetLab, require, wait_for

DANTED = "/usr/sbin/danted"
PROXY, PROXY_OUT = "198.18.5.2", "198.18.6.1"  # where the exit reaches it, what inet sees
EXIT_TO_PROXY = "198.18.5.1"
PORT = 1080
USER, PASSWORD = "tproxy", "s3cret#pw"  # '#' is percent-encoded in the Egress URL
EGRESS = f"socks5://{USER}:s3cret%23pw@{PROXY}:{PORT}"

DANTED_CONF = """\
logoutput: stderr
internal: {internal} port = {port}
external: {external}
socksmethod: username
clientmethod: none
user.privileged: root
user.unprivileged: nobody
client pass {{ from: 0.0.0.0/0 to: 0.0.0.0/0 }}
socks pass {{ from: 0.0.0.0/0 to: 0.0.0.0/0 command: connect udpassociate bindreply udpreply
    log: connect disconnect error }}
"""


def require_dante() -> None:
    require("ip", "unshare", "openssl")
    if not Path(DANTED).exists():
        require("danted")  # skips (fails in CI) naming the missing tool


class Dante:
    """The proxy namespace, its links, and danted (started by `start`, stopped by `stop`)."""

    def __init__(self, lab: NetLab, tmp: Path, exit_ns: str, inet_ns: str) -> None:
        require_dante()
        self.lab, self.tmp = lab, tmp / "dante"
        self.tmp.mkdir()
        self.ns = lab.netns("p")
        lab.link(exit_ns, self.ns, [f"{EXIT_TO_PROXY}/24"], [f"{PROXY}/24"])
        _, inet_side = lab.link(self.ns, inet_ns, [f"{PROXY_OUT}/24"], ["198.18.6.2/24"])
        # the proxy reaches inet's usual address (the one clients use) across its own link, and
        # inet answers from that address (an unbound UDP server's reply takes the route's source)
        lab.sh("ip", "-n", self.ns, "route", "add", "198.18.2.0/24", "via", "198.18.6.2")
        lab.sh("ip", "-n", inet_ns, "route", "replace", "198.18.6.0/24", "dev", inet_side,
               "src", "198.18.2.2")  # fmt: skip
        self.conf = self.tmp / "danted.conf"
        self.conf.write_text(DANTED_CONF.format(internal=PROXY, port=PORT, external=PROXY_OUT))
        self.log = self.tmp / "danted.log"
        self._users()
        self.proc: subprocess.Popen | None = None

    def _users(self) -> None:
        digest = subprocess.run(
            ["openssl", "passwd", "-6", "-stdin"],
            input=PASSWORD,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        # only the users danted needs (root, nobody) and ours: no copy of the host's hashes
        self.passwd = self.tmp / "passwd"
        self.passwd.write_text(
            "root:x:0:0:root:/root:/bin/sh\n"
            "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
            f"{USER}:x:64999:64999::/nonexistent:/usr/sbin/nologin\n"
        )
        self.shadow = self.tmp / "shadow"
        self.shadow.touch(mode=0o600)
        self.shadow.write_text(
            f"root:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n"
            f"{USER}:{digest}:19000:0:99999:7:::\n"
        )

    def start(self) -> None:
        mark = self.log.read_text().count(" running") if self.log.exists() else 0
        script = (
            f"mount --bind {self.passwd} /etc/passwd && mount --bind {self.shadow} /etc/shadow"
            f" && exec {DANTED} -f {self.conf} -p {self.tmp / 'danted.pid'}"
        )
        self.proc = self.lab.spawn(self.ns, "unshare", "--mount", "sh", "-c", script, log=self.log)
        wait_for(
            lambda: self.log.read_text().count(" running") > mark or self.proc.poll() is not None,
            15,
            "danted",
        )
        assert self.proc.poll() is None, self.log.read_text()

    def stop(self) -> None:
        """Stop danted at once (all its processes): the proxy is gone."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None


def uplink_counters(lab: NetLab, exit_ns: str) -> None:
    """Count, in the exit namespace, every packet the host sends toward inet's own subnet (the
    exit's direct way out): `sent_directly` reads the count."""
    for tool, net in (("iptables", "198.18.2.0/24"), ("ip6tables", "fd18:2::/64")):
        lab.ns_sh(exit_ns, tool, "-w", "-A", "OUTPUT", "-d", net, check=True)


def sent_directly(lab: NetLab, exit_ns: str) -> int:
    total = 0
    for tool in ("iptables", "ip6tables"):
        out = lab.ns_sh(exit_ns, tool, "-w", "-nvxL", "OUTPUT", check=True).stdout
        for line in out.splitlines()[2:]:
            fields = line.split()
            if fields:
                total += int(fields[0])
    return total
