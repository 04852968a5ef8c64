"""The `[Exit]` section (DESIGN.md §3a): what a device's peers may reach through its exit.

The section is tetherctl's own and belongs to the server's file only: nothing that describes the
device to WireGuard (`wg showconf`, the UAPI, client configs) carries it. It is optional and
appears at most once; a file without it gets the defaults, which are what an exit offered to
strangers needs (see `tether.netstack.exit.policy` for the refusal list).

`Egress` (tether.config.egress) says how the exit's flows leave the host: directly, or through
an upstream SOCKS5 proxy; a `[Peer]` may override it for that peer.

The limit keys are parsed and checked here (positive, a per-peer limit no larger than its total);
`None` in the model means "the default", so a later change of a default reaches every file that
did not name the key.
"""

from __future__ import annotations

from dataclasses import dataclass

import tether.config.values as v
from tether.config.egress import Egress, parse_egress
from tether.config.errors import ConfigError

DEFAULT_MAX_FLOWS = 16384  # all peers together; also bounded by the descriptor limit
DEFAULT_MAX_FLOWS_PER_PEER = 1024  # TCP and UDP flows of one peer
DEFAULT_MAX_BUFFER = 1 << 30  # TCP buffer memory of the whole device
DEFAULT_MAX_BUFFER_PER_PEER = 128 << 20
FLOWS_MAX = 1 << 20  # the descriptor limit's ceiling (device.exit.host.raise_nofile_limit)


def _parse_flows(value: str) -> int:
    return v.parse_count(value, FLOWS_MAX)


# lower-case key -> (canonical spelling, parser, repeatable), as in the model's tables
EXIT_KEYS = {
    "allowdestinations": ("AllowDestinations", v.parse_network, True),
    "denydestinations": ("DenyDestinations", v.parse_network, True),
    "peertopeer": ("PeerToPeer", v.parse_yes_no, False),
    "maxflows": ("MaxFlows", _parse_flows, False),
    "maxflowsperpeer": ("MaxFlowsPerPeer", _parse_flows, False),
    "maxbuffer": ("MaxBuffer", v.parse_size, False),
    "maxbufferperpeer": ("MaxBufferPerPeer", v.parse_size, False),
    "egress": ("Egress", parse_egress, False),
}
EXIT_LIST_KEYS = {"allowdestinations", "denydestinations"}

# (per-peer key, total key, default total, how a value is shown)
_PAIRS = (
    ("maxflowsperpeer", "maxflows", DEFAULT_MAX_FLOWS, str),
    ("maxbufferperpeer", "maxbuffer", DEFAULT_MAX_BUFFER, v.format_size),
)


@dataclass(frozen=True)
class ExitSettings:
    """The parsed section; the defaults are a file without one. Limits: None = the default."""

    allow_destinations: tuple[v.IPNetwork, ...] = ()
    deny_destinations: tuple[v.IPNetwork, ...] = ()
    peer_to_peer: bool = False
    max_flows: int | None = None
    max_flows_per_peer: int | None = None
    max_buffer: int | None = None
    max_buffer_per_peer: int | None = None
    egress: Egress | None = None  # None: not written (direct); a [Peer]'s Egress overrides it

    @property
    def is_default(self) -> bool:
        return self == _DEFAULT


_DEFAULT = ExitSettings()


def make_exit(f: dict, where: dict, lineno: int, fn: str) -> ExitSettings:
    """The model of one parsed section; a per-peer limit above its total is an error on the
    per-peer key's line (the total being the one given, or its default)."""
    for per_peer, total, default, show in _PAIRS:
        if per_peer not in f:
            continue
        limit = f.get(total, default)
        if f[per_peer] > limit:
            per_name, total_name = EXIT_KEYS[per_peer][0], EXIT_KEYS[total][0]
            given = f" (line {where[total]})" if total in f else " (its default)"
            raise ConfigError(
                fn,
                where[per_peer],
                f"{per_name}: {show(f[per_peer])} is more than {total_name} = {show(limit)}{given}",
            )
    return ExitSettings(
        allow_destinations=tuple(f.get("allowdestinations", ())),
        deny_destinations=tuple(f.get("denydestinations", ())),
        peer_to_peer=f.get("peertopeer", False),
        max_flows=f.get("maxflows"),
        max_flows_per_peer=f.get("maxflowsperpeer"),
        max_buffer=f.get("maxbuffer"),
        max_buffer_per_peer=f.get("maxbufferperpeer"),
        egress=f.get("egress"),
    )


def exit_pairs(s: ExitSettings) -> list[tuple[str, str]]:
    """The section's lines for a fresh file (keys that hold their default are left out)."""
    pairs: list[tuple[str, str]] = []
    if s.allow_destinations:
        pairs.append(("AllowDestinations", ", ".join(str(n) for n in s.allow_destinations)))
    if s.deny_destinations:
        pairs.append(("DenyDestinations", ", ".join(str(n) for n in s.deny_destinations)))
    if s.peer_to_peer:
        pairs.append(("PeerToPeer", "yes"))
    for key, value, show in (
        ("MaxFlows", s.max_flows, str),
        ("MaxFlowsPerPeer", s.max_flows_per_peer, str),
        ("MaxBuffer", s.max_buffer, v.format_size),
        ("MaxBufferPerPeer", s.max_buffer_per_peer, v.format_size),
    ):
        if value is not None:
            pairs.append((key, show(value)))
    if s.egress is not None:
        pairs.append(("Egress", s.egress.to_text()))
    return pairs
