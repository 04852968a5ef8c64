"""The original's peer commands: `tetherctl peer add|remove|config` in its option spelling.

They share everything with the `peer` commands (same file edits, allocation, rendering and
waiting for the daemon), so that a peer added either way is the same peer; only the option
names and the sticky --dname are the original's.
"""

from __future__ import annotations

import sys

from tether.api.peers.service import PeerService, parse_public_key
from tether.cli import peer as peercmd
from tether.cli.original.session import (
    Command,
    Session,
    config_dir,
    device_name,
    emit,
    run_dir,
)


def _service(args, session: Session, need_public: bool = True) -> tuple[str, PeerService]:
    name = device_name(args, session)
    _, service = peercmd.make_service(
        config_dir(args, session),
        run_dir(session),
        name,
        need_public=need_public,
        source="tetherctl add-peer",
    )
    return name, service


def _warn(warning: str | None) -> None:
    if warning:
        print(f"tetherctl: warning: {warning}", file=sys.stderr)


def cmd_add_peer(args, session: Session) -> None:
    """Add --pub_key with the next free addresses; prints the client config once the running
    daemon has applied it (or a warning that it has not)."""
    name, service = _service(args, session)
    text, warning = peercmd.add_peer(service, name, args.pub_key, args.endpoint_type)
    emit(session, text)
    _warn(warning)


def cmd_remove_peer(args, session: Session) -> None:
    """Remove --pub_key; a peer that is not there is no error (the original's idempotence)."""
    name, service = _service(args, session, need_public=False)
    removed, warning = peercmd.remove_peer(service, name, args.pub_key)
    emit(session, "peer removed" if removed else "no such peer (nothing to remove)")
    _warn(warning)


def cmd_get_peer_config(args, session: Session) -> None:
    """A peer's client config again (without its private key, which only the client has)."""
    name, service = _service(args, session)
    device = peercmd.resolve_device(service, name)
    emit(session, service.config(device, parse_public_key(args.pub_key), args.endpoint_type))


COMMANDS = (
    Command(
        "add-peer",
        cmd_add_peer,
        "add a peer; prints its client config",
        ("dname", "config", "endpoint_type"),
        required=("pub_key",),
    ),
    Command(
        "remove-peer",
        cmd_remove_peer,
        "remove a peer (no error if absent)",
        ("dname", "config"),
        required=("pub_key",),
    ),
    Command(
        "get-peer-config",
        cmd_get_peer_config,
        "print a peer's client config",
        ("dname", "config", "endpoint_type"),
        required=("pub_key",),
    ),
)
