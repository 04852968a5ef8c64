"""Realistic device files (tests/config/corpus) with their expected parse results.

Each `NAME.conf` has a `NAME.json` next to it: either the model as plain strings or the exact
error a user would see. The expectations were generated once and then checked against the files
by hand, line by line; they are fixed data now, so a change in parsing shows up here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tether import keys
from tether.config import ConfigError, ConfigFile
from tether.config.exit_settings import EXIT_KEYS
from tether.config.model import INTERFACE_KEYS, PEER_KEYS

CORPUS = Path(__file__).parent / "corpus"
FILES = sorted(CORPUS.glob("*.conf"))


def summary(cfg: ConfigFile) -> dict:
    iface = cfg.config.interface
    out = {
        "public_key": keys.encode(iface.public_key),
        "listen_port": iface.listen_port,
        "addresses": [str(a) for a in iface.addresses],
        "own_addresses": [str(a) for a in iface.own_addresses],
        "dns": iface.dns,
        "mtu": iface.effective_mtu,
        "save_config": iface.save_config,
        "hooks": {
            k: getattr(iface, k)
            for k in ("pre_up", "post_up", "pre_down", "post_down")
            if getattr(iface, k)
        },
        "peers": [
            {
                "public_key": p.public_key_b64,
                "preshared_key": p.preshared_key is not None,
                "allowed_ips": [str(n) for n in p.allowed_ips],
                "endpoint": str(p.endpoint) if p.endpoint else None,
                "persistent_keepalive": p.persistent_keepalive,
                "line": p.line,
            }
            for p in cfg.config.peers
        ],
    }
    ex = cfg.config.exit
    if not ex.is_default:  # files without [Exit] (or with only defaults in it) say nothing
        out["exit"] = {
            "allow_destinations": [str(n) for n in ex.allow_destinations],
            "deny_destinations": [str(n) for n in ex.deny_destinations],
            "peer_to_peer": ex.peer_to_peer,
            "max_flows": ex.max_flows,
            "max_flows_per_peer": ex.max_flows_per_peer,
            "max_buffer": ex.max_buffer,
            "max_buffer_per_peer": ex.max_buffer_per_peer,
        }
        if ex.egress is not None:  # what logs show: never the password
            out["exit"]["egress"] = ex.egress.label
    for p, summarized in zip(cfg.config.peers, out["peers"], strict=True):
        if p.egress is not None:
            summarized["egress"] = p.egress.label
    if iface.fwmark is not None:
        out["fwmark"] = iface.fwmark
    if iface.table is not None:
        out["table"] = iface.table
    return out


def test_corpus_is_big_enough():
    assert len([f for f in FILES if not f.name.startswith("err-")]) >= 15


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_corpus_file(path: Path):
    expected = json.loads(path.with_suffix(".json").read_text())
    data = path.read_bytes()
    if "error" in expected:
        with pytest.raises(ConfigError) as info:
            ConfigFile.parse_bytes(data, path.name)
        assert str(info.value) == expected["error"]
        return
    cfg = ConfigFile.parse_bytes(data, path.name)
    assert summary(cfg) == expected
    assert cfg.text().encode("utf-8") == data


KEY_NAMES = {spec[0] for table in (INTERFACE_KEYS, PEER_KEYS, EXIT_KEYS) for spec in table.values()}
# errors about a line that is no key at all (the line itself is the one to fix)
LINE_ERRORS = ("is not a [Section]", "no key before '='", "NUL byte", "not valid UTF-8")


@pytest.mark.parametrize(
    "path", [f for f in FILES if f.name.startswith("err-")], ids=lambda p: p.stem
)
def test_an_error_about_a_key_points_at_that_keys_line(path: Path):
    """`file:line: Key: message` is the contract (DESIGN §3): the line is the offending key's
    own, never its section's header; only an error about a section (a missing required key,
    which has no line of its own, a second [Interface]) names the header."""
    message = json.loads(path.with_suffix(".json").read_text())["error"]
    m = re.match(r"^[^:]+:(\d+): (.*)$", message)
    if m is None:
        assert message.endswith(": no [Interface] section"), message  # the one with no line
        return
    lineno, text = int(m.group(1)), m.group(2)
    line = path.read_bytes().split(b"\n")[lineno - 1].decode("utf-8", "replace").strip()
    first = text.split()[0].rstrip(":")
    unknown = re.match(r"unknown key '([^']+)'", text)
    key = first if first in KEY_NAMES else unknown.group(1) if unknown else None
    if key is not None:
        assert line.split("=")[0].strip().lower() == key.lower(), (message, line)
    elif not any(s in text for s in LINE_ERRORS):
        assert line.startswith("["), (message, line)  # an error about the section itself
