"""HTTPS for the peer API: the README's nginx server block in front of a real `tetherctl run`.

nginx (Debian's nginx-light, installed by scripts/install-system-deps) runs on a loopback port
with a private prefix, config, pid and log, and a self-signed certificate made here. The test
checks over HTTPS that adds and owner removals work, that the client address reaches the rate
limiter through X-Forwarded-For, and that a forged X-Forwarded-For, through the proxy or sent
directly to the API, changes nothing. Everything listens on 127.0.0.0/8 only.
"""

from __future__ import annotations

import datetime
import http.client
import ipaddress
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tether import keys

from .netlab import require

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(key_path, 0o600)
    return cert_path, key_path


def readme_server_block() -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(r"```nginx\n(server \{.*?\n\})\n```", text, re.S)
    assert match, "README: the nginx server block is missing"
    return match.group(1)


def nginx_config(directory: Path, https_port: int, api_port: int, cert: Path, key: Path) -> Path:
    block = readme_server_block()
    for old, new in (
        ("listen 443 ssl;", f"listen 127.0.0.1:{https_port} ssl;"),
        ("listen [::]:443 ssl;", ""),
        ("/etc/letsencrypt/live/vpn.example.org/fullchain.pem", str(cert)),
        ("/etc/letsencrypt/live/vpn.example.org/privkey.pem", str(key)),
        ("http://127.0.0.1:9090", f"http://127.0.0.1:{api_port}"),
    ):
        assert old in block, f"README's server block changed: {old!r} not found"
        block = block.replace(old, new)
    temp = "\n".join(
        f"    {kind}_temp_path {directory}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf = directory / "nginx.conf"
    conf.write_text(
        f"daemon off;\nmaster_process off;\npid {directory}/nginx.pid;\n"
        f"error_log {directory}/error.log info;\n"
        "events { worker_connections 64; }\n"
        f"http {{\n    access_log off;\n{temp}\n{block}\n}}\n"
    )
    return conf


def wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text() if log.exists() else "exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}: {log.read_text() if log.exists() else ''}")


def stop(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture
def stack(tmp_path):
    require("nginx")
    conf = tmp_path / "conf"
    conf.mkdir()
    dev = conf / "tls0.conf"
    dev.write_text(
        f"[Interface]\nPrivateKey = {keys.genkey()}\nAddress = 10.66.0.1/24\nListenPort = 0\n"
    )
    os.chmod(dev, 0o600)
    api_port, https_port = free_port(), free_port()
    daemon_log = tmp_path / "daemon.log"
    procs: list[subprocess.Popen] = []
    try:
        with open(daemon_log, "wb") as out:
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "tether",
                        "run",
                        "--config-dir",
                        str(conf),
                        "--run-dir",
                        str(tmp_path / "run"),
                        "--api-listen",
                        f"127.0.0.1:{api_port}",
                        "--api-trusted-proxy",
                        "127.0.0.1",
                        "--api-rate-limit",
                        "1:3",
                        "--public-ipv4",
                        "203.0.113.7",
                    ],
                    stdout=out,
                    stderr=out,
                    env=dict(os.environ, PYTHONPATH=str(REPO)),
                )
            )
        wait_port(api_port, procs[0], daemon_log)
        cert, key = self_signed(tmp_path)
        nginx_dir = tmp_path / "nginx"
        nginx_dir.mkdir()
        config = nginx_config(nginx_dir, https_port, api_port, cert, key)
        nginx_log = nginx_dir / "error.log"
        procs.append(
            subprocess.Popen(
                ["nginx", "-p", str(nginx_dir), "-c", str(config), "-e", str(nginx_log)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        wait_port(https_port, procs[1], nginx_log)
        token = (conf / "api-token").read_text().strip()  # a trusted proxy turned it on
        yield {"https": https_port, "api": api_port, "cert": cert, "token": token, "dev": dev}
    finally:
        for proc in reversed(procs):
            stop(proc)


def https(stack, method, path, source, headers=None):
    ctx = ssl.create_default_context(cafile=str(stack["cert"]))
    conn = http.client.HTTPSConnection(
        "127.0.0.1", stack["https"], context=ctx, timeout=15, source_address=(source, 0)
    )
    try:
        conn.request(method, path, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.getheader("Tether-Peer-Secret"), r.read().decode()
    finally:
        conn.close()


def direct(stack, method, path, source, headers=None):
    conn = http.client.HTTPConnection(
        "127.0.0.1", stack["api"], timeout=15, source_address=(source, 0)
    )
    try:
        conn.request(method, path, headers=headers or {})
        r = conn.getresponse()
        r.read()
        return r.status
    finally:
        conn.close()


def test_api_over_https_behind_nginx(stack):
    # adds work over HTTPS, and the owner can remove with the secret (3 requests: the burst)
    status, secret, text = https(stack, "POST", "/peer/new/ipv4", "127.0.0.5")
    assert status == 200 and "PrivateKey = " in text and secret
    pub = text.split('"')[1]
    assert pub in stack["dev"].read_text()
    status, _, _ = https(stack, "GET", f"/peer/config/ipv4/{pub}", "127.0.0.5")
    assert status == 200
    auth = {"Authorization": f"Bearer {secret}"}
    assert https(stack, "DELETE", f"/peer/remove/{pub}", "127.0.0.5", auth)[0] == 200
    assert pub not in stack["dev"].read_text()
    # the limiter saw 127.0.0.5 (from X-Forwarded-For), not nginx's 127.0.0.1 ...
    assert https(stack, "POST", "/peer/new/ipv4", "127.0.0.5")[0] == 429
    # ... so another client is still served
    assert https(stack, "POST", "/peer/new/ipv4", "127.0.0.6")[0] == 200
    # a client forging X-Forwarded-For through the proxy is still itself
    forged = {"X-Forwarded-For": "127.0.0.99"}
    assert https(stack, "GET", "/healthz", "127.0.0.6")[0] == 200  # not a peer route
    codes = [
        https(stack, "GET", f"/peer/config/ipv4/{pub}", "127.0.0.6", forged)[0] for _ in range(3)
    ]
    assert codes == [404, 404, 429], codes
    # the admin (the token file the trusted proxy turned on) is never limited
    admin = {"Authorization": f"Bearer {stack['token']}"}
    for _ in range(4):
        assert https(stack, "GET", "/peers", "127.0.0.5", admin)[0] == 200
    assert https(stack, "GET", "/metrics", "127.0.0.5")[0] == 401
    # a direct, untrusted client's X-Forwarded-For is ignored too
    path = f"/peer/config/ipv4/{pub}"
    for i in range(3):
        assert direct(stack, "GET", path, "127.0.0.7", {"X-Forwarded-For": f"10.9.9.{i}"}) == 404
    assert direct(stack, "GET", path, "127.0.0.7", {"X-Forwarded-For": "10.9.9.200"}) == 429
