"""Fuzz target: the device-file parser and the lossless editor.

Any input must either parse or raise ConfigError. A file that parses must come back byte for
byte from its document, survive a render/parse round trip, and stay valid under an edit.
Run: `make fuzz TARGET=config SECONDS=300` (see fuzz/README.md).
"""

from __future__ import annotations

import ipaddress
import sys

from tether.config import ConfigError, ConfigFile
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


def main() -> None:
    import atheris

    atheris.instrument_all()  # coverage feedback from the already-imported parser
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
