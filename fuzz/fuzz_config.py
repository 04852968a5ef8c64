"""Fuzz target: the device-file parser and the lossless editor.

Any input must either parse or raise ConfigError. A file that parses must come back byte for
byte from its document, survive a render/parse round trip, and stay valid under an edit; its
`[Exit]` section must hold only valid settings (positive limits, a per-peer limit no larger than
its total) and come through the edits line for line; an `Egress` (in `[Exit]` or a `[Peer]`)
must be direct or a proxy with a real port and RFC 1929-sized credentials, whose password shows
in no repr, label or error.
Run: `make fuzz TARGET=config SECONDS=300` (see fuzz/README.md).
"""

from __future__ import annotations

import ipaddress
import sys

from tether.config import ConfigError, ConfigFile
from tether.config.document import PAIR
from tether.config.egress import parse_egress
from tether.config.exit_settings import DEFAULT_MAX_BUFFER, DEFAULT_MAX_FLOWS
from tether.config.model import Peer, parse_text, render

_NEW_PEER = bytes(range(1, 33))


def TestOneInput(data: bytes) -> None:
    try:
        cfg = ConfigFile.parse_bytes(data, "fuzz.conf")
    except ConfigError:
        return
    text = cfg.text()
    if text.encode("utf-8") != data:
        raise AssertionError("document did not give the file back byte for byte")
    _check_exit(cfg.config.exit)
    for egress in [cfg.config.exit.egress, *(p.egress for p in cfg.config.peers)]:
        _check_egress(egress)
    exit_lines = _exit_lines(cfg)
    _, again = parse_text(render(cfg.config))
    if again != cfg.config:
        raise AssertionError("render/parse round trip changed the model")
    if cfg.peer(_NEW_PEER) is None and cfg.config.interface.public_key != _NEW_PEER:
        cfg.add_peer(Peer(_NEW_PEER, allowed_ips=[ipaddress.ip_network("10.0.0.1/32")]))
    cfg.update_interface(listen_port=12345)
    if cfg.config.peers:
        cfg.remove_peer(cfg.config.peers[0].public_key)
    _, edited = parse_text(cfg.text())
    if edited != cfg.config:
        raise AssertionError("edited text and edited model disagree")
    if _exit_lines(cfg) != exit_lines:
        raise AssertionError("an edit changed the [Exit] section")


def _check_exit(ex) -> None:
    for limit in (ex.max_flows, ex.max_flows_per_peer, ex.max_buffer, ex.max_buffer_per_peer):
        if limit is not None and limit < 1:
            raise AssertionError(f"a limit of {limit} was accepted")
    if (ex.max_flows_per_peer or 0) > (ex.max_flows or DEFAULT_MAX_FLOWS):
        raise AssertionError("MaxFlowsPerPeer above MaxFlows was accepted")
    if (ex.max_buffer_per_peer or 0) > (ex.max_buffer or DEFAULT_MAX_BUFFER):
        raise AssertionError("MaxBufferPerPeer above MaxBuffer was accepted")


def _check_egress(egress) -> None:
    if egress is None or egress.is_direct:
        return
    if not egress.host or not 1 <= egress.port <= 65535:
        raise AssertionError(f"a proxy without host or port was accepted: {egress!r}")
    if parse_egress(egress.to_text()) != egress:
        raise AssertionError("an Egress value does not read back as itself")
    creds = egress.credentials
    if creds is None:
        return
    user, password = creds
    if not (1 <= len(user) <= 255 and 1 <= len(password) <= 255):
        raise AssertionError("credentials outside RFC 1929's 1-255 bytes were accepted")
    written = egress.to_text().rpartition("@")[0].partition(":")[2]  # the password, encoded
    if f":{written}@" in repr(egress) + egress.label or f":{egress.password}@" in repr(egress):
        raise AssertionError("the password shows in repr or label")


def _exit_lines(cfg: ConfigFile) -> list[str]:
    """The [Exit] header and its lines up to its last Key = Value (a comment block after that
    belongs to the next peer and leaves with it), line endings aside."""
    for section in cfg.doc.sections:
        if section.name == "exit":
            lines = [section.header, *section.body]
            while len(lines) > 1 and lines[-1].kind != PAIR:
                lines.pop()
            return [line.raw.rstrip("\r\n") for line in lines]
    return []


def main() -> None:
    import atheris

    atheris.instrument_all()  # coverage feedback from the already-imported parser
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
