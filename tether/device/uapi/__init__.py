"""The UAPI socket that `wg` talks to (wireguard-go's cross-platform userspace interface):
`protocol` is the text codec (sans-IO), `adapter` maps a parsed `set` onto the device's one
entry point and a `get` onto its one view, `server` serves the socket on the device's loop, and
`client` is the other end (`tetherctl show`, the API's view of a daemon in another process).
"""

__all__ = ["adapter", "client", "protocol", "server"]
