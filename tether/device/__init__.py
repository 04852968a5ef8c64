"""The device IO shell: a WireGuard device on a UDP socket and an asyncio loop, the inside it
hands decrypted packets to (the exit's shell), and the UAPI socket that `wg` talks to.

What other layers may use, by module (`__all__` names modules rather than re-exporting their
contents, so that importing the hub's types never imports sockets and the exit):
- `device`: Device, with one entry point `apply(DeviceChange)` and one view `snapshot()`;
- `change`, `state`: those two values;
- `inside`: the Inside protocol, InsideContext, InsideFactory;
- `exit` (a subpackage): ExitShell, the exit's Inside (`shell`), and its upstream proxies
  (`egress`, `proxy`);
- `hub`: the API's DeviceHub interface and its values, below both API and appliance;
- `uapi` (a subpackage): `protocol` (the UAPI text codec), `adapter` (its mapping onto a
  device's entry point and view), `client` (what `tetherctl show` uses), `server` (the socket);
- `udp`: BindError (a listen port in use).
"""

__all__ = [
    "change",
    "device",
    "exit",
    "hub",
    "inside",
    "state",
    "uapi",
    "udp",
]
