"""The WireGuard protocol, sans-IO: messages, Noise handshakes, cookies, sessions, replay
windows, timers, cryptokey routing and the device core that ties them together.

Other layers use the device core (`core`: WireGuardCore, its PeerStatus views) and the names of
its counters (`stats`); the other modules are its parts. `__all__` names those modules rather
than re-exporting their contents, so that importing one part never imports the whole package.
"""

__all__ = ["core", "stats"]
