"""ApiSettings: the daemon's API options, checked before anything starts."""

from __future__ import annotations

import http.client
import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tether.api.settings import ApiSettings, UsageError, ensure_token_file, parse_duration

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
    assert "a-long-enough" not in repr(s) and "a-long-enough" not in str(s)
    handle = s.start(FakeHub(conf_dir))
    try:
        conn = http.client.HTTPConnection("127.0.0.1", handle.port, timeout=10)
        key = new_key()
        conn.request("POST", f"/peer/add/ipv4/{key}")
        r = conn.getresponse()
        assert r.status == 200 and b"Endpoint = 203.0.113.7:51820" in r.read()
        assert r.getheader("Tether-Peer-Secret")
        conn.request("DELETE", f"/peer/remove/{key}")
        r = conn.getresponse()
        assert r.status == 401 and r.read().startswith(b"removing a peer needs")
        conn.request(
            "DELETE",
            f"/peer/remove/{key}",
            headers={"Authorization": "Bearer a-long-enough-token-value"},
        )
        r = conn.getresponse()
        assert r.status == 200 and r.read() == b"peer removed\n"
        conn.close()
    finally:
        handle.stop()


def test_defaults():
    s = ApiSettings.from_options("127.0.0.1:0", public_ipv4="203.0.113.7")
    assert s.token is None and s.token_file is None  # loopback: no token, every caller trusted
    assert s.self_service == "open"
    assert (s.rate_limit.per_minute, s.rate_limit.burst) == (30, 10)
    assert (s.self_service_max, s.peer_expiry, s.quarantine) == (1000, 3600, 600)
    assert s.trusted_proxies == ()


@pytest.mark.parametrize(
    ("listen", "proxy"),
    [(":0", None), ("0.0.0.0:0", None), ("[::]:0", None), ("127.0.0.1:0", "127.0.0.1")],
)
def test_an_exposed_listener_gets_a_token_file(tmp_path, caplog, listen, proxy):
    caplog.set_level(logging.INFO)
    s = ApiSettings.from_options(
        listen, public_ipv4="203.0.113.7", config_dir=tmp_path, trusted_proxy=proxy
    )
    path = tmp_path / "api-token"
    assert s.token_file == str(path)
    token = path.read_text().strip()
    assert s.token == token and len(token) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert str(path) in caplog.text and token not in caplog.text
    again = ApiSettings.from_options(
        listen, public_ipv4="203.0.113.7", config_dir=tmp_path, trusted_proxy=proxy
    )
    assert again.token == token  # kept, not replaced


def test_the_token_file_is_0600_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        assert ensure_token_file(str(tmp_path / "api-token"))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "api-token").stat().st_mode) == 0o600
    assert not ensure_token_file(str(tmp_path / "api-token"))  # exists: left alone
    assert [p.name for p in tmp_path.iterdir()] == ["api-token"]  # no temporary file left


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"listen": "example.com:80"}, "must be an IP address"),
        ({"listen": ":9090", "device": ".."}, "not a valid device name"),
        ({"listen": ":9090", "public_ipv4": "::1"}, "not an IPv4"),
        ({"listen": ":9090", "token_file": "/nonexistent/token"}, "cannot read"),
        ({"listen": ":9090", "config_dir": "/nonexistent/dir"}, "cannot create the API token"),
        ({"listen": "127.0.0.1:1", "rate_limit": "fast"}, "--api-rate-limit"),
        ({"listen": "127.0.0.1:1", "trusted_proxy": "10.0.0.1/8"}, "--api-trusted-proxy"),
        ({"listen": "127.0.0.1:1", "trusted_proxy": "proxy.lan"}, "--api-trusted-proxy"),
        ({"listen": "127.0.0.1:1", "self_service": "maybe"}, "expected open, invite or off"),
        ({"listen": "127.0.0.1:1", "public_url": "ftp://x"}, "--api-public-url: .*https://"),
        ({"listen": "127.0.0.1:1", "public_url": "https://"}, "--api-public-url: .*no host"),
        ({"listen": "127.0.0.1:1", "public_url": "https://a:b@x"}, "user name or password"),
        ({"listen": "127.0.0.1:1", "public_url": "https://x/?a=1"}, "query or fragment"),
        ({"listen": "127.0.0.1:1", "public_url": "https://x:99999"}, "not a URL"),
        ({"listen": "127.0.0.1:1", "public_url": "https://x/ y"}, "without spaces"),
        ({"listen": "127.0.0.1:1", "public_url": "https://" + "x" * 600}, "longer than"),
        ({"listen": "127.0.0.1:1", "self_service_max": "-1"}, "--api-self-service-max"),
        ({"listen": "127.0.0.1:1", "self_service_max": "lots"}, "--api-self-service-max"),
        ({"listen": "127.0.0.1:1", "peer_expiry": "1 week"}, "--api-peer-expiry"),
        ({"listen": "127.0.0.1:1", "peer_expiry": "h"}, "--api-peer-expiry"),
        ({"listen": "127.0.0.1:1", "quarantine": "1m"}, "at least 300 s"),
        ({"listen": "127.0.0.1:1", "quarantine": "0"}, "at least 300 s"),
    ],
)
def test_bad_options(kwargs, message):
    listen = kwargs.pop("listen")
    with pytest.raises(ValueError, match=message):
        ApiSettings.from_options(listen, **{"public_ipv4": "203.0.113.7", **kwargs})


def test_invite_mode_and_the_public_url_of_invite_links():
    s = ApiSettings.from_options(
        "127.0.0.1:0",
        self_service="invite",
        public_url="https://vpn.example.org/tether/",
        public_ipv4="203.0.113.7",
    )
    assert s.self_service == "invite"
    assert s.join_base() == "https://vpn.example.org/tether"
    with pytest.raises(UsageError, match="expected open, invite or off"):
        ApiSettings.from_options("127.0.0.1:1", self_service="invites")
    plain = ApiSettings.from_options(":9090", public_ipv4="203.0.113.7", config_dir="/tmp")
    assert plain.join_base() == "http://203.0.113.7:9090"
    named = ApiSettings.from_options(
        "127.0.0.1:0", public_ipv4="203.0.113.7", public_domain="vpn.example.org"
    )
    assert named.join_base(port=4711) == "http://vpn.example.org:4711"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0),
        ("90", 90),
        ("90s", 90),
        ("15m", 900),
        ("1h30m", 5400),
        ("2d", 172800),
        ("1.5h", 5400),
    ],
)
def test_durations(text, seconds):
    assert parse_duration(text, "--x", 7) == seconds
    assert parse_duration(None, "--x", 7) == 7


def run_tetherctl(tmp_path, *args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "tether", "run", "--config-dir", str(tmp_path), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), **(env or {})},
    )


def test_an_unknown_self_service_mode_is_a_one_line_usage_error(tmp_path):
    for args, env in (
        (["--api-self-service", "invites"], None),
        ([], {"TETHERCTL_API_SELF_SERVICE": "closed"}),
    ):
        out = run_tetherctl(tmp_path, "--api-listen", "127.0.0.1:1", *args, env=env)
        assert out.returncode == 2, out.stderr
        assert out.stderr.count("\n") == 1 and "expected open, invite or off" in out.stderr


def test_every_api_option_reads_its_environment_variable(tmp_path, monkeypatch):
    from tether.cli import main, run

    env = {
        "TETHERCTL_API_LISTEN": "127.0.0.1:0",
        "TETHERCTL_API_SELF_SERVICE": "off",
        "TETHERCTL_API_RATE_LIMIT": "12:4",
        "TETHERCTL_API_TRUSTED_PROXY": "127.0.0.1, ::1",
        "TETHERCTL_API_SELF_SERVICE_MAX": "7",
        "TETHERCTL_API_PEER_EXPIRY": "2h",
        "TETHERCTL_API_ADDRESS_QUARANTINE": "30m",
        "TETHERCTL_API_PUBLIC_URL": "https://vpn.example.org",
        "TETHERCTL_PUBLIC_IPV4": "203.0.113.7",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = main.build_parser().parse_args(["run", "--config-dir", str(tmp_path)])
    s = run.api_settings(args)
    assert s.self_service == "off"
    assert (s.rate_limit.per_minute, s.rate_limit.burst) == (12, 4)
    assert [str(n) for n in s.trusted_proxies] == ["127.0.0.1/32", "::1/128"]
    assert (s.self_service_max, s.peer_expiry, s.quarantine) == (7, 7200, 1800)
    assert s.token_file == str(tmp_path / "api-token")  # a proxy exposes it: token on
    assert s.public_url == "https://vpn.example.org"


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
