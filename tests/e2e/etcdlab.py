"""Real etcd servers for the fleet tests (Debian's `etcd-server`), started and removed by the test.

`EtcdCluster(tmp, members=1|3)` runs the members on loopback (or inside a test's network
namespace, `ns=`), each with its own data directory and ports, and can stop (SIGTERM or kill),
start again and compact. Everything started is ended by pid in `close()`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest


def require_etcd() -> None:
    """Skip (fail in CI) unless the Debian etcd binaries are there."""
    missing = [t for t in ("etcd", "etcdctl") if shutil.which(t) is None]
    if missing:
        message = f"fleet test cannot run: {', '.join(missing)} not installed (etcd-server)"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI is set: a failure, not a skip)")
        pytest.skip(message)


def make_tls(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and one certificate it signed for 127.0.0.1 (server and client use), by openssl."""
    ca_key, ca, key, csr, cert = (
        folder / n for n in ("ca.key", "ca.pem", "k.pem", "c.csr", "c.pem")
    )
    ext = folder / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n")

    def ssl_cmd(*argv: str) -> None:
        subprocess.run(["openssl", *argv], check=True, capture_output=True, timeout=60)

    ssl_cmd("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key),
            "-out", str(ca), "-days", "2", "-subj", "/CN=test etcd CA")  # fmt: skip
    ssl_cmd("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
            "-subj", "/CN=127.0.0.1")  # fmt: skip
    ssl_cmd("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
            "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext))  # fmt: skip
    return ca, cert, key


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class EtcdCluster:
    def __init__(
        self,
        tmp: Path,
        members: int = 1,
        *,
        host: str = "127.0.0.1",
        ns: str | None = None,
        tls: tuple[Path, Path, Path] | None = None,
    ):
        """`tls`: (CA, certificate, key) files; the members then serve https and require a
        client certificate from that CA (the same certificate serves as the tests' own)."""
        require_etcd()
        self.tmp, self.host, self.ns, self.tls = tmp, host, ns, tls
        self.scheme = "https" if tls else "http"
        self.names = [f"m{i}" for i in range(members)]
        self.client_ports = {n: free_port() for n in self.names}
        self.peer_ports = {n: free_port() for n in self.names}
        self.procs: dict[str, subprocess.Popen] = {}
        self.initial = ",".join(f"{n}=http://{host}:{self.peer_ports[n]}" for n in self.names)
        for n in self.names:
            self.start(n)
        self.wait_healthy()

    def url(self, name: str) -> str:
        return f"{self.scheme}://{self.host}:{self.client_ports[name]}"

    @property
    def urls(self) -> str:
        return ",".join(self.url(n) for n in self.names)

    def start(self, name: str) -> None:
        listen = "0.0.0.0" if self.ns else self.host
        argv = [
            "etcd",
            "--name", name,
            "--data-dir", str(self.tmp / f"etcd-{name}"),
            "--listen-client-urls", f"{self.scheme}://{listen}:{self.client_ports[name]}",
            "--advertise-client-urls", self.url(name),
            "--listen-peer-urls", f"http://{listen}:{self.peer_ports[name]}",
            "--initial-advertise-peer-urls", f"http://{self.host}:{self.peer_ports[name]}",
            "--initial-cluster", self.initial,
            "--initial-cluster-state", "new",
            "--initial-cluster-token", f"t{os.getpid()}{id(self)}",
        ]  # fmt: skip
        if self.tls:
            ca, cert, key = self.tls
            argv += ["--cert-file", str(cert), "--key-file", str(key),
                     "--trusted-ca-file", str(ca), "--client-cert-auth"]  # fmt: skip
        if self.ns:
            argv = ["ip", "netns", "exec", self.ns, *argv]
        log = open(self.tmp / f"etcd-{name}.log", "ab")  # noqa: SIM115 (the child keeps it)
        self.procs[name] = subprocess.Popen(
            argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
        )
        log.close()

    def stop(self, name: str | None = None, *, kill: bool = False) -> None:
        for n in [name] if name else list(self.procs):
            proc = self.procs.pop(n, None)
            if proc is None or proc.poll() is not None:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)

    def restart(self) -> None:
        for n in self.names:
            if n not in self.procs:
                self.start(n)
        self.wait_healthy()

    def ctl(self, *argv: str) -> subprocess.CompletedProcess:
        """etcdctl against the first member (plain http on loopback: the auth tests' cluster)."""
        return subprocess.run(
            ["etcdctl", "--endpoints", self.url(self.names[0]), *argv],
            capture_output=True, text=True, timeout=20, env=dict(os.environ, ETCDCTL_API="3"),
        )  # fmt: skip

    def enable_auth(self, user: str, password: str) -> None:
        """Add `user` (etcd's first user must be root) and turn authentication on."""
        assert self.ctl("user", "add", f"{user}:{password}").returncode == 0
        assert self.ctl("auth", "enable").returncode == 0

    def _post(self, name: str, path: str, body: dict) -> dict:
        if self.ns:  # the members listen inside a test's namespace: ask from there
            done = subprocess.run(
                ["ip", "netns", "exec", self.ns, "curl", "-sf", "--max-time", "2",
                 "-X", "POST", self.url(name) + path, "-d", json.dumps(body)],
                capture_output=True,
                timeout=10,
            )  # fmt: skip
            if done.returncode != 0:
                raise OSError(f"curl exit {done.returncode}")
            return json.loads(done.stdout)
        req = urllib.request.Request(
            self.url(name) + path, json.dumps(body).encode(), method="POST"
        )
        context = None
        if self.tls:
            context = ssl.create_default_context(cafile=str(self.tls[0]))
            context.load_cert_chain(str(self.tls[1]), str(self.tls[2]))
        with urllib.request.urlopen(req, timeout=2, context=context) as r:
            return json.loads(r.read())

    def call(self, path: str, body: dict) -> dict:
        """POST to the first member that answers (tests' own reads and writes)."""
        last = None
        for n in self.names:
            if n in self.procs:
                try:
                    return self._post(n, path, body)
                except OSError as e:
                    last = e
        raise OSError(f"no etcd member answered: {last}")

    def wait_healthy(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.call("/v3/kv/put", {"key": "X2hlYWx0aA==", "value": ""})
                return
            except OSError:
                if time.monotonic() > deadline:
                    logs = "".join(
                        (self.tmp / f"etcd-{n}.log").read_text()[-2000:] for n in self.names
                    )
                    raise TimeoutError(f"etcd not healthy: {logs}") from None
                time.sleep(0.1)

    def revision(self) -> int:
        return int(self.call("/v3/kv/range", {"key": "AA=="})["header"]["revision"])

    def compact(self, revision: int | None = None) -> None:
        rev = revision or self.revision()
        self.call("/v3/kv/compaction", {"revision": str(rev), "physical": True})

    def close(self) -> None:
        self.stop(kill=True)
