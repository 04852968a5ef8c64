"""The `[Exit]` section through the real command line and a real daemon: `check` validates it,
`run` applies edits of it live, SaveConfig keeps it, and neither `tetherctl showconf` nor
`wg showconf` shows it."""

from __future__ import annotations

import subprocess
import sys

from tether import keys
from tether.appliance.daemon import Daemon
from tether.appliance.saveconfig import fold_running_state
from tether.cli.main import build_parser
from tether.cli.run import public_addresses
from tether.config import ConfigFile
from tether.device.state import PeerState, RunningState

from ..test_cli import CORPUS, run
from .daemon_harness import wait_for
from .test_daemon import peer, server_conf, write

EXIT = "[Exit]\nAllowDestinations = 192.168.7.0/24\nPeerToPeer = yes\nMaxFlows = 4096\n"
EXIT_WORDS = ("[Exit]", "AllowDestinations", "PeerToPeer", "MaxFlows", "192.168.7")


def test_check_validates_the_exit_section(tmp_path):
    out = run(
        "check", str(CORPUS / "exit-shared-lan.conf"), str(CORPUS / "exit-between-peers.conf")
    )
    assert out.returncode == 0, out.stderr
    bad = tmp_path / "bad.conf"
    bad.write_text((CORPUS / "exit-shared-lan.conf").read_text().replace("512M", "lots"))
    out = run("check", str(bad))
    assert out.returncode == 1
    assert out.stderr.decode().strip() == (
        f"{bad}:15: MaxBuffer: 'lots' is not a size (bytes, or a number with K, M, G or T)"
    )
    out = run("check", str(CORPUS / "err-exit-twice.conf"))
    assert out.returncode == 1 and b":10: a second [Exit] section (the first is on line 4)" in (
        out.stderr
    )


def test_saveconfig_keeps_the_exit_section_byte_for_byte():
    priv, a, b = keys.genkey(), keys.pubkey(keys.genkey()), keys.pubkey(keys.genkey())
    exit_block = "[exit]   # mine\nallowdestinations=192.168.7.0/24# lan\n  PeerToPeer = YES\n"
    text = server_conf(priv, 42001, peer(a, 2), extra=exit_block)
    cfg = ConfigFile.parse(text, "d.conf")
    state = RunningState(
        keys.decode(priv),
        42002,
        1420,
        [],
        {keys.decode(b): PeerState(None, 25, ["10.44.0.3/32"], ("192.0.2.1", 4500))},
    )
    fold_running_state(cfg, state)  # a's gone, b is new, the port moved
    after = cfg.text()
    assert exit_block in after and a not in after and b in after and "42002" in after
    assert ConfigFile.parse(after).config.exit == ConfigFile.parse(text).config.exit


def test_public_addresses_reach_the_exit(tmp_path):
    args = build_parser().parse_args(
        ["run", "--public-ipv4", "8.8.4.4", "--public-ipv6", "2001:4860:4860:0::8844"]
    )
    assert public_addresses(args) == ("8.8.4.4", "2001:4860:4860::8844")
    daemon = Daemon(tmp_path, public_addresses=public_addresses(args))
    assert daemon.inside_factory.keywords["public_addresses"] == ("8.8.4.4", "2001:4860:4860::8844")
    out = run("run", "--config-dir", str(tmp_path), "--public-ipv4", "not-an-address")
    assert out.returncode == 1
    assert b"not-an-address" in out.stderr and len(out.stderr.splitlines()) == 1


def test_exit_edits_go_live_and_never_show_in_showconf(daemon):
    dev = daemon.name("x")
    path = daemon.dir / f"{dev}.conf"
    priv, a = keys.genkey(), keys.pubkey(keys.genkey())
    write(path, server_conf(priv, 42061, peer(a, 2), extra=EXIT))
    daemon.start()
    daemon.wait_up(dev)

    def show(*argv):
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10, env=daemon.env)
        assert out.returncode == 0, out.stderr
        return out.stdout

    for text in (
        show(sys.executable, "-m", "tether", "showconf", dev, "--run-dir", "/var/run/wireguard"),
        show("wg", "showconf", dev),
    ):
        assert a in text and not any(w in text for w in EXIT_WORDS), text

    write(path, server_conf(priv, 42061, peer(a, 2), extra=EXIT.replace("yes", "no")))
    wait_for(lambda: daemon.logged(f"{dev}: applied set_exit"), 5, "[Exit] edit applied")
    # a bad [Exit]: the last good configuration keeps running, the error names the line
    write(path, server_conf(priv, 42061, peer(a, 2), extra=EXIT + "Egress = socks5://proxy\n"))
    wait_for(
        lambda: daemon.logged(
            f"{dev}.conf:10: Egress: the proxy's port is missing (expected direct or "
            "socks5://[user:pass@]host:port) (the last good configuration keeps running)"
        ),
        5,
        "error logged",
    )
    assert a in daemon.peers(dev)
    assert daemon.stop() == 0
