"""A real daemon on a temporary directory: edits apply live, bad ones never hurt."""

from __future__ import annotations

import os
import signal

from tether import keys

from .daemon_harness import wait_for


def server_conf(priv: str, port: int, peers: str = "", extra: str = "") -> str:
    return (
        f"# my device\n[Interface]\nPrivateKey = {priv}\nListenPort = {port}  # fixed\n"
        f"Address = 10.44.0.1/24\n{extra}\n{peers}"
    )


def peer(pub: str, host: int, extra: str = "") -> str:
    return f"# peer {host}\n[Peer]\nPublicKey = {pub}\nAllowedIPs = 10.44.0.{host}/32\n{extra}\n"


def write(path, text):
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)  # as editors and our own writer do


def test_edit_goes_live_bad_edit_keeps_last_good_fix_applies(daemon):
    dev = daemon.name("a")
    path = daemon.dir / f"{dev}.conf"
    priv = keys.genkey()
    a, b = keys.pubkey(keys.genkey()), keys.pubkey(keys.genkey())
    write(path, server_conf(priv, 42001, peer(a, 2)))
    daemon.start()
    daemon.wait_up(dev)
    assert set(daemon.peers(dev)) == {a}

    write(path, server_conf(priv, 42001, peer(a, 2) + peer(b, 3, "PersistentKeepalive = 25\n")))
    wait_for(lambda: b in daemon.peers(dev), 5, "peer b live")
    assert daemon.peers(dev)[b][7] == "25"

    # a bad edit: the running device keeps the last good config and one clear error is logged
    write(path, server_conf(priv, 42001, peer(a, 2) + peer(b, 3) + "AllowedIPs = 10.0.0.300/32\n"))
    wait_for(
        lambda: daemon.logged(
            f"{dev}.conf:17: AllowedIPs: '10.0.0.300/32' is not an IP "
            "network (the last good configuration keeps running)"
        ),
        5,
        "error logged",
    )
    assert set(daemon.peers(dev)) == {a, b}

    # fixed: applied, with the keepalive gone and a moved; b's line untouched
    write(path, server_conf(priv, 42001, peer(a, 9) + peer(b, 3)))
    wait_for(lambda: daemon.peers(dev).get(a, [""] * 4)[3] == "10.44.0.9/32", 5, "fix applied")
    assert daemon.peers(dev)[b][7] == "off"

    # a port that is in use: refused, old port kept
    import socket

    blocker = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    blocker.bind(("::", 0))
    taken = blocker.getsockname()[1]
    try:
        write(path, server_conf(priv, taken, peer(a, 9) + peer(b, 3)))
        wait_for(lambda: daemon.logged("cannot apply"), 5, "port error logged")
        assert daemon.dump(dev)[0][2] == "42001"
    finally:
        blocker.close()
    assert daemon.stop() == 0


def test_new_file_and_deleted_file_with_hooks_in_order(daemon, tmp_path):
    first = daemon.name("b")
    write(daemon.dir / f"{first}.conf", server_conf(keys.genkey(), 42011))
    daemon.start()
    daemon.wait_up(first)
    second = daemon.name("c")
    trace = tmp_path / "trace"
    hooks = "".join(
        f"{h} = echo {h} %i $INTERFACE >> {trace}\n"
        for h in ("PreUp", "PostUp", "PreDown", "PostDown")
    )
    path = daemon.dir / f"{second}.conf"
    write(path, server_conf(keys.genkey(), 42012, extra=hooks))
    wait_for(lambda: daemon.uapi_up(second), 5, "new device up")
    wait_for(lambda: trace.exists() and "PostUp" in trace.read_text(), 5, "PostUp ran")
    path.unlink()
    wait_for(lambda: not daemon.uapi_up(second), 5, "device down")
    wait_for(lambda: "PostDown" in trace.read_text(), 5, "PostDown ran")
    assert trace.read_text().split("\n") == [
        f"PreUp {second} {second}",
        f"PostUp {second} {second}",
        f"PreDown {second} {second}",
        f"PostDown {second} {second}",
        "",
    ]
    assert daemon.uapi_up(first)  # the other device never noticed


def test_failing_preup_aborts_that_device_only(daemon):
    good, bad = daemon.name("d"), daemon.name("e")
    write(daemon.dir / f"{good}.conf", server_conf(keys.genkey(), 42021))
    write(
        daemon.dir / f"{bad}.conf",
        server_conf(keys.genkey(), 42022, extra="PreUp = echo refusing; exit 3\n"),
    )
    daemon.start()
    daemon.wait_up(good)
    wait_for(
        lambda: daemon.logged(
            f"{bad}: not brought up: PreUp hook `echo refusing; exit 3` "
            "exited with status 3: refusing"
        ),
        5,
        "hook failure logged",
    )
    assert not daemon.uapi_up(bad)
    assert daemon.logged("refusing")


def test_saveconfig_writes_runtime_changes_back_keeping_comments(daemon, tmp_path):
    dev = daemon.name("f")
    path = daemon.dir / f"{dev}.conf"
    a, c = keys.pubkey(keys.genkey()), keys.pubkey(keys.genkey())
    original = server_conf(keys.genkey(), 42031, peer(a, 2), extra="SaveConfig = true\n")
    write(path, original)
    daemon.start()
    daemon.wait_up(dev)
    import subprocess

    def wg(*args):
        subprocess.run(["wg", "set", dev, *args], check=True, timeout=10)

    wg("peer", a, "allowed-ips", "10.44.0.2/32,10.45.0.0/16", "persistent-keepalive", "15")
    wg("peer", c, "allowed-ips", "10.44.0.3/32", "endpoint", "127.0.0.1:40000")
    daemon.signal(signal.SIGTERM)
    assert daemon.proc.wait(20) == 0
    text = path.read_text()
    assert text.startswith("# my device\n[Interface]\n")
    assert "ListenPort = 42031  # fixed\n" in text and "# peer 2\n" in text
    assert "AllowedIPs = 10.44.0.2/32, 10.45.0.0/16\nPersistentKeepalive = 15\n" in text
    assert (
        f"[Peer]\nPublicKey = {c}\nAllowedIPs = 10.44.0.3/32\nEndpoint = 127.0.0.1:40000\n"
    ) in text
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_sighup_reapplies_and_runtime_drift_is_corrected(daemon):
    dev = daemon.name("g")
    path = daemon.dir / f"{dev}.conf"
    a = keys.pubkey(keys.genkey())
    write(path, server_conf(keys.genkey(), 42041, peer(a, 2)))
    daemon.start()
    daemon.wait_up(dev)
    import subprocess

    stray = keys.pubkey(keys.genkey())
    subprocess.run(["wg", "set", dev, "peer", stray, "allowed-ips", "10.44.0.99/32"], check=True)
    assert stray in daemon.peers(dev)
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: stray not in daemon.peers(dev), 5, "file re-applied on SIGHUP")
    assert a in daemon.peers(dev)


def test_show_and_showconf_match_wg(daemon):
    import subprocess
    import sys

    dev = daemon.name("h")
    a, b = keys.pubkey(keys.genkey()), keys.pubkey(keys.genkey())
    write(
        daemon.dir / f"{dev}.conf",
        server_conf(
            keys.genkey(),
            42051,
            peer(a, 2, "PersistentKeepalive = 21\nEndpoint = 127.0.0.1:9\n")
            + peer(b, 3, f"PresharedKey = {keys.genpsk()}\n"),
        ),
    )
    daemon.start()
    daemon.wait_up(dev)

    def run(*argv):
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, env=daemon.env)
        assert out.returncode == 0, out.stderr
        return out.stdout

    ours = run(sys.executable, "-m", "tether", "showconf", dev, "--run-dir", "/var/run/wireguard")
    assert ours == run("wg", "showconf", dev)
    ours = run(sys.executable, "-m", "tether", "show", dev, "--run-dir", "/var/run/wireguard")
    assert ours == run("wg", "show", dev)
