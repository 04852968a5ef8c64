"""What a device hands decrypted packets to: the `Inside` protocol, and what makes one.

A device is the WireGuard side of a tunnel; its inside is whatever the peers' IP packets are
for (tetherctl's exit, `ExitShell`; a test's recorder). The two meet only here:

- the device feeds the inside (`receive_packets`, `handle_timer`, configuration) and, in the
  same turn, collects what it produced (`take_packets`, `next_timer`);
- the inside gets an `InsideContext` when it is made, never the device: the event loop for its
  own sockets, the device's settings, and `wake()`, its one way to say "host-side input arrived
  (a socket became readable or writable): collect my packets and my next timer soon".

So input is handled where it arrives: the inside runs the host actions packets cause inside
`receive_packets`, and its socket callbacks run theirs before calling `wake()`. No method named
`take_*` writes to a host socket.

Packets arrive as the batch one read of the device's socket decrypted to (the contract sketch
had one `receive_packet` per packet): the exit does its per-connection work (host writes, ACK
decisions, segments to send) once per batch, as GRO does in a kernel, which a call per packet
would turn into one host write and one ACK decision per segment.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from tether.config.egress import Egress
from tether.config.exit_settings import ExitSettings

__all__ = ["Inside", "InsideContext", "InsideFactory"]


class Inside(Protocol):
    """The device's view of its inside; every method runs on the device's loop thread."""

    def receive_packets(
        self, packets: list[tuple[bytes, bytes]], now: float, queue_delay: float | None = None
    ) -> None:
        """Decrypted (peer public key, IP packet) pairs, in arrival order; the inside runs the
        host actions they cause before returning. `queue_delay`: how long the first of them
        waited in the device's socket queue (seconds; None when unknown): the standing queue
        in front of the device, which the exit keeps short by the windows it offers."""

    def poll(self) -> bool:
        """Read, now, the host input that small latency-sensitive packets answer (the exit:
        echo replies and UDP flows, exit/datagrams.py) and run what it caused, without
        `wake()`; True if there was any. The device calls it before each read of its socket
        and collects at once when it returns True, so an answer never waits behind a batch
        of bulk traffic from the tunnel."""

    def take_packets(self) -> list[bytes]:
        """IP packets toward peers (the device routes them by destination); cleared."""

    def next_timer(self) -> float | None:
        """When `handle_timer` is next due (monotonic seconds), or None."""

    def handle_timer(self, now: float) -> None:
        """The clock reached `next_timer()` (an early or extra call does nothing harmful)."""

    def forget_peer(self, peer_key: bytes, now: float, keep=None) -> None:
        """The peer was removed or lost addresses: end what the inside holds for its source
        addresses, all of them, or those `keep(source_address_bytes)` rejects."""

    def set_addresses(self, addresses) -> None:
        """The device's own tunnel addresses (ip_interface objects) changed."""

    def set_mtu(self, mtu: int) -> None:
        """The tunnel MTU changed."""

    def set_exit(self, settings: ExitSettings) -> None:
        """The device file's `[Exit]` section changed."""

    def set_peer_egress(self, per_peer: Mapping[bytes, Egress]) -> None:
        """The peers' own `Egress` keys (public key → Egress), all of them, for new flows."""

    def egress_status(self) -> Mapping[str, bool]:
        """Whether each upstream proxy in use works, by its label (a copy; for metrics)."""

    def counters(self) -> Mapping[str, int]:
        """Gauges and counters for metrics, a copy (the exit: `udp_flows`, `tcp_flows`)."""

    def refusals(self) -> dict[bytes, int]:
        """Packets refused by policy, per peer public key (a copy)."""

    def close(self) -> None:
        """The device is going away: release every host resource."""


@dataclass(frozen=True)
class InsideContext:
    """What an inside is made with instead of the whole device."""

    loop: asyncio.AbstractEventLoop
    # "I have packets for peers or a new timer": the device then collects take_packets() and
    # next_timer() once, soon (call_soon, coalesced); safe to call many times.
    wake: Callable[[], None]
    mtu: int
    addresses: tuple
    exit_settings: ExitSettings | None
    name: str = ""  # the device's, for log lines
    # "Send these packets toward peers now": encrypted and written before it returns, for an
    # answer that came back while the inside is still working on a batch (None: the inside
    # leaves them for take_packets). Not for bulk: every call is a write of its own.
    send_now: Callable[[list[bytes]], None] | None = None


InsideFactory = Callable[[InsideContext], Inside]
