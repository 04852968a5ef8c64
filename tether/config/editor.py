"""Programmatic edits of a device file that keep the model and the text in step.

Every writer (the API adding a peer, SaveConfig, the CLI) goes through `ConfigFile`: each edit
changes the model and the smallest set of lines in the document, so the user's comments, blank
lines, key spellings and order survive, and the result never needs re-parsing to be trusted.
Values are rendered from already-validated model objects, which is why an edit cannot produce
a file that fails to parse.
"""

from __future__ import annotations

import dataclasses

import tether.config.model as m
from tether import keys
from tether.config.document import Document, Section
from tether.config.errors import ConfigError


class ConfigFile:
    def __init__(self, doc: Document, config: m.DeviceConfig):
        self.doc = doc
        self.config = config
        peer_sections = [s for s in doc.sections if s.name == "peer"]
        self._sections: dict[bytes, Section] = {
            p.public_key: s for p, s in zip(config.peers, peer_sections, strict=True)
        }
        self._peers: dict[bytes, m.Peer] = {p.public_key: p for p in config.peers}

    @classmethod
    def parse(cls, text: str, filename: str = "<config>") -> ConfigFile:
        doc, config = m.parse_text(text, filename)
        return cls(doc, config)

    @classmethod
    def parse_bytes(cls, data: bytes, filename: str = "<config>") -> ConfigFile:
        doc, config = m.parse_bytes(data, filename)
        return cls(doc, config)

    def text(self) -> str:
        return self.doc.text()

    @property
    def interface_section(self) -> Section:
        for section in self.doc.sections:
            if section.name == "interface":
                return section
        raise AssertionError("a parsed device file always has an [Interface]")

    # -- peers -------------------------------------------------------------------------------

    def peer(self, public_key: bytes) -> m.Peer | None:
        return self._peers.get(public_key)

    def add_peer(self, peer: m.Peer, comment: str | None = None) -> None:
        if peer.public_key in self._peers:
            raise ConfigError(
                self.doc.filename,
                self._peers[peer.public_key].line,
                f"PublicKey {keys.encode(peer.public_key)} is already a peer",
            )
        comments = [comment] if comment else []
        section = self.doc.append_section("Peer", m.peer_pairs(peer), comments)
        self._sections[peer.public_key] = section
        self._peers[peer.public_key] = peer
        self.config.peers.append(peer)

    def remove_peer(self, public_key: bytes) -> bool:
        """Remove the peer and the comment block glued above it; False when there is none."""
        peer = self._peers.pop(public_key, None)
        if peer is None:
            return False
        self.doc.remove_section(self._sections.pop(public_key))
        self.config.peers.remove(peer)
        return True

    def update_peer(self, public_key: bytes, **changes) -> m.Peer:
        """Change some of a peer's settings (endpoint, allowed_ips, persistent_keepalive,
        preshared_key); lines of settings that did not change are left alone. The peer is
        replaced by a new object (returned), never changed in place, so a list of peers someone
        took from this file before (the daemon's applied configuration) stays as it was."""
        peer = self._peers.get(public_key)
        if peer is None:
            raise KeyError(keys.encode(public_key))
        new = dataclasses.replace(peer, **changes)
        section = self._sections[public_key]
        for key_lower, (canonical, _parser, _rep) in m.PEER_KEYS.items():
            if key_lower == "publickey":
                continue
            old_values = _rendered(m.peer_pairs(peer), canonical)
            new_values = _rendered(m.peer_pairs(new), canonical)
            if old_values != new_values:
                self.doc.set_pair_lines(section, key_lower, canonical, new_values)
        self._peers[public_key] = new
        peers = self.config.peers
        peers[next(i for i, p in enumerate(peers) if p is peer)] = new
        return new

    # -- interface ---------------------------------------------------------------------------

    def update_interface(self, **changes) -> m.Interface:
        """Change [Interface] settings such as listen_port or private_key in place."""
        iface = self.config.interface
        new = dataclasses.replace(iface, **changes)
        section = self.interface_section
        for key_lower, (canonical, _parser, _rep) in m.INTERFACE_KEYS.items():
            old_values = _rendered(m.interface_pairs(iface), canonical)
            new_values = _rendered(m.interface_pairs(new), canonical)
            if old_values != new_values:
                self.doc.set_pair_lines(section, key_lower, canonical, new_values)
        for field in dataclasses.fields(m.Interface):
            setattr(iface, field.name, getattr(new, field.name))
        return iface


def _rendered(pairs: list[tuple[str, str]], key: str) -> list[str]:
    return [value for k, value in pairs if k == key]
