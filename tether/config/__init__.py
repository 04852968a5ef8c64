"""Configuration: wg-quick's file format, extended as DESIGN.md §3 says, with lossless editing.

Layers, lowest first: `document` (lines, byte-exact), `values` (value syntax), `model` (typed
Interface/Peer and validation; the `[Exit]` section's model is in `exit_settings`), `editor`
(edits that keep both in step), `store` (locked atomic reads and writes on disk).
"""

from tether.config.document import Document
from tether.config.editor import ConfigFile
from tether.config.errors import ConfigError
from tether.config.exit_settings import ExitSettings
from tether.config.model import DEFAULT_MTU, DeviceConfig, Interface, Peer, parse_text, render
from tether.config.values import Endpoint

__all__ = [
    "DEFAULT_MTU",
    "ConfigError",
    "ConfigFile",
    "DeviceConfig",
    "Document",
    "Endpoint",
    "ExitSettings",
    "Interface",
    "Peer",
    "parse_text",
    "render",
]
