"""Hostile input of the fleet: values anyone with write access to etcd may put under the prefix,
the --fleet-* options, and etcd's own authentication."""

from __future__ import annotations

import base64
import json
import os

import pytest

from tether import keys
from tether.api.fleet.device import Fleet, FleetOptions
from tether.api.fleet.etcd import EtcdOptions, EtcdUnavailable
from tether.api.fleet.layout import DEFAULT_PREFIX

from ..api.support import call, new_key
from ..e2e.netlab import wait_for
from ..test_cli import run
from .hosts import NAME, PRIVATE, Host


def put(etcd, key: bytes, value: bytes) -> None:
    etcd.call(
        "/v3/kv/put",
        {"key": base64.b64encode(key).decode(), "value": base64.b64encode(value).decode()},
    )


def peer_json(key: str, *nets: str, **extra) -> bytes:
    doc = {"public_key": key, "allowed_ips": list(nets), "preshared_key": None, "comment": ""}
    return json.dumps({**doc, **extra}).encode()


def test_hostile_values_in_etcd_are_skipped_with_a_log_line(tmp_path, etcd, caplog):
    a = Host(tmp_path, "a", etcd.urls)
    try:
        root = f"{DEFAULT_PREFIX}{NAME}/".encode()
        k1, k2, k3, k4 = (new_key() for _ in range(4))
        hostile = {
            root + b"peers/" + k1.encode(): b"{not json",
            root + b"peers/" + k2.encode(): peer_json(k2, "0.0.0.0/0"),  # every address
            root + b"peers/" + k3.encode(): peer_json(k4, "10.77.0.50/32"),  # name != key
            root + b"peers/" + k4.encode(): peer_json(k4, "10.77.0.51/32", extra="x"),
            root + b"peers/\xff\xfe": b"{}",
            root + b"peers/x": b"\x00" * 5000,
            root + b"addresses/10.77.0.9/32": b'{"peer": "nope"}',
            root + b"owners/" + k1.encode(): b'{"secret_sha256": "zz"}',
            root + b"invites/" + b"a" * 64: b"[1, 2, 3]",
            root + b"released/10.77.0.99/32": b'{"released": -1}',
            root + b"peers/" + keys.pubkey(keys.genkey()).encode(): b'{"public_key": ' * 3000,
        }
        for key, value in hostile.items():
            put(etcd, key, value)
        good = new_key()
        r = call(a.app, "POST", f"/peer/add/any/{good}")
        assert r.status == 200, r.text
        text = a.path.read_text()
        assert good in text
        for k in (k1, k2, k3, k4):
            assert k not in text
        assert "0.0.0.0/0" not in text
        wait_for(lambda: caplog.text.count("(skipped)") >= 9, 2, "one log line per bad value")
        assert "not a JSON value" in caplog.text and "unknown field" in caplog.text
        assert "differs from the key's name" in caplog.text
        # a bad value replaced by a good one is used; deleting it is seen too
        put(etcd, root + b"peers/" + k2.encode(), peer_json(k2, "10.77.0.60/32"))
        put(etcd, root + b"addresses/10.77.0.60/32", json.dumps({"peer": k2}).encode())
        wait_for(lambda: k2 in a.peers(), 2, "the repaired value")
        assert a.sync._threads[0].is_alive() and a.sync._threads[1].is_alive()
    finally:
        a.close()


def test_values_that_parse_but_would_hijack_addresses_are_not_rendered(tmp_path, etcd, caplog):
    a = Host(tmp_path, "a", etcd.urls)
    try:
        first = new_key()
        assert call(a.app, "POST", f"/peer/add/any/{first}").status == 200
        root = f"{DEFAULT_PREFIX}{NAME}/".encode()
        thief, own = new_key(), keys.pubkey(PRIVATE)
        put(etcd, root + b"peers/" + thief.encode(), peer_json(thief, "10.77.0.2/32"))
        put(etcd, root + b"peers/" + own.encode(), peer_json(own, "10.77.0.70/32"))
        wait_for(lambda: "belongs to another peer" in caplog.text, 2, "the refusal logged")
        wait_for(lambda: "device's own public key" in caplog.text, 2, "the refusal logged")
        peers = a.peers()
        assert peers[first] == ["10.77.0.2/32"] and thief not in peers and own not in peers
    finally:
        a.close()


@pytest.mark.parametrize(
    "args,message",
    [
        (("--fleet-etcd", "ftp://127.0.0.1:2379"), "expected http(s)://HOST:PORT"),
        (("--fleet-etcd", "http://127.0.0.1"), "expected http(s)://HOST:PORT"),
        (("--fleet-etcd", "http://u:p@127.0.0.1:1"), "credentials go in"),
        (("--fleet-etcd", ","), "at least one"),
        (("--fleet-etcd", "http://127.0.0.1:1", "--fleet-prefix", "nope"), "--fleet-prefix"),
        (("--fleet-etcd", "http://127.0.0.1:1", "--fleet-prefix", "/a b/"), "--fleet-prefix"),
        (("--fleet-prefix", "/x/"), "needs --fleet-etcd"),
        (("--fleet-etcd", "http://127.0.0.1:1", "--fleet-etcd-user", "root"), "needs a password"),
        (
            ("--fleet-etcd", "http://[::1]:1,http://etcd.example:2379", "--fleet-etcd-user", "r"),
            "http://etcd.example:2379 is plain http to another machine",
        ),
        (
            ("--fleet-etcd", "http://127.0.0.1:1", "--fleet-etcd-cacert", "/nonexistent"),
            "cannot read",
        ),
        (
            ("--fleet-etcd", "http://127.0.0.1:1", "--fleet-etcd-cert", "/etc/hostname"),
            "go together",
        ),
        (
            ("--fleet-etcd", "http://127.0.0.1:1", "--fleet-etcd-password-file", "/etc/hostname"),
            "needs --fleet-etcd-user",
        ),
    ],
)
def test_bad_fleet_options_are_one_line_errors(cli_env, args, message):
    r = run("run", *args, env=cli_env)
    err = r.stderr.decode()
    assert r.returncode == 1, err
    assert message in err and err.count("\n") == 1, err


def test_password_file_readable_by_others_is_refused_and_never_echoed(cli_env, tmp_path):
    secret = "s3cret-password-value"
    pw = tmp_path / "pw"
    pw.write_text(secret + "\n")
    pw.chmod(0o644)
    args = ("--fleet-etcd", "http://127.0.0.1:1", "--fleet-etcd-user", "root")
    r = run("run", *args, "--fleet-etcd-password-file", str(pw), env=cli_env)
    assert r.returncode == 1 and b"readable by others" in r.stderr
    assert secret.encode() not in r.stderr + r.stdout
    assert secret not in repr(EtcdOptions(("http://x:1",), user="root", password=secret))


def test_user_and_password_against_etcd_with_auth(tmp_path, etcd):
    url = etcd.url(etcd.names[0])
    etcd.enable_auth("root", "rootpw")
    good = Fleet(FleetOptions(EtcdOptions((url,), user="root", password="rootpw")))
    assert good.etcd.txn([], [])[0]
    dev = good.device(NAME)
    dev.load()
    bad = Fleet(FleetOptions(EtcdOptions((url,), user="root", password="wrong")))
    with pytest.raises(EtcdUnavailable) as e:
        bad.device(NAME).load()
    assert "wrong" not in str(e.value)
    anonymous = Fleet(FleetOptions(EtcdOptions((url,))))
    with pytest.raises(EtcdUnavailable):
        anonymous.device(NAME).load()
    etcd.ctl("--user", "root:rootpw", "auth", "disable")


def test_tls_with_client_certificates(tmp_path):
    from ..e2e.etcdlab import EtcdCluster, make_tls

    ca, cert, key = make_tls(tmp_path)
    etcd = EtcdCluster(tmp_path, tls=(ca, cert, key))
    try:
        url = etcd.url(etcd.names[0])
        assert url.startswith("https://")
        good = Fleet(
            FleetOptions(EtcdOptions((url,), cacert=str(ca), cert=str(cert), key=str(key)))
        )
        assert good.etcd.txn([], [])[0]
        good.device(NAME).load()
        for options in (
            EtcdOptions((url,), cacert=str(ca)),  # no client certificate: refused
            EtcdOptions((url,)),  # the server's certificate is not trusted
        ):
            with pytest.raises(EtcdUnavailable):
                Fleet(FleetOptions(options)).device(NAME).load()
    finally:
        etcd.close()


def test_the_password_leaves_the_environment_hooks_inherit(monkeypatch):
    import argparse

    from tether.cli.run import fleet

    monkeypatch.setenv("TETHERCTL_FLEET_ETCD_PASSWORD", "s3cret")
    options = dict(fleet_prefix=None, fleet_etcd_cacert=None, fleet_etcd_cert=None)
    options.update(fleet_etcd_key=None, fleet_etcd_password_file=None)
    args = argparse.Namespace(fleet_etcd="http://localhost:1", fleet_etcd_user="root", **options)
    shared = fleet(args)
    assert shared.etcd.options.password == "s3cret"
    assert "TETHERCTL_FLEET_ETCD_PASSWORD" not in os.environ
