"""ApiSettings: the daemon's API options, checked before anything starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tether.api.settings import ApiSettings

from .support import FakeHub, new_key

REPO = Path(__file__).resolve().parents[2]


def test_from_options_and_start(tmp_path, conf_dir):
    token = tmp_path / "token"
    token.write_text("a-long-enough-token-value\n")
    os.chmod(token, 0o600)
    s = ApiSettings.from_options(
        "127.0.0.1:0",
        device="bywg0",
        public_ipv4="203.0.113.7",
        public_ipv6="2001:db8::7",
        token_file=str(token),
    )
    assert (s.host, s.port, s.device, s.public.ipv4) == ("127.0.0.1", 0, "bywg0", "203.0.113.7")
    assert "a-long-enough" not in repr(s)
    handle = s.start(FakeHub(conf_dir))
    try:
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", handle.port, timeout=10)
        conn.request("POST", f"/peer/add/ipv4/{new_key()}")
        first = conn.getresponse()
        assert first.status == 401 and first.read() == b"missing or wrong API token\n"
        conn.request(
            "POST",
            f"/peer/add/ipv4/{new_key()}",
            headers={"Authorization": "Bearer a-long-enough-token-value"},
        )
        r = conn.getresponse()
        assert r.status == 200 and b"Endpoint = 203.0.113.7:51820" in r.read()
        conn.close()
    finally:
        handle.stop()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"listen": "example.com:80"}, "must be an IP address"),
        ({"listen": ":9090", "device": ".."}, "not a valid device name"),
        ({"listen": ":9090", "public_ipv4": "::1"}, "not an IPv4"),
        ({"listen": ":9090", "token_file": "/nonexistent/token"}, "cannot read"),
    ],
)
def test_bad_options(kwargs, message):
    listen = kwargs.pop("listen")
    with pytest.raises(ValueError, match=message):
        ApiSettings.from_options(listen, **kwargs)


def test_run_refuses_bad_api_options_with_one_line(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tether",
            "run",
            "--config-dir",
            str(tmp_path),
            "--api-listen",
            "x.y:1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)},
    )
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and "must be an IP address" in out.stderr
