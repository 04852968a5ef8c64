"""Datagrams before segments (`ExitShell.receive_packets`): in a batch from the tunnel, ICMP and
UDP packets are handed to the exit and sent to the host before the batch's TCP segments are
worked on, each class in its own order; their answers are read every `ANSWER_POLL` segments and
sent at once (`InsideContext.send_now`), and leave ahead of the TCP segments of a collection.

A ping next to an upload used to wait for every segment ahead of it in the batch, and its reply
for the rest of the batch and the encryption of what it produced."""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.device.exit.shell import ANSWER_POLL
from tether.netstack.wire import (
    PROTO_TCP,
    build_echo,
    build_ipv4,
    build_ipv6,
    build_udp_packet,
    fragment_ipv6,
    is_datagram,
    parse_ip,
    parse_udp,
)
from tether.netstack.wire.tcp import ACK, build_segment

from .support import PEER_KEY, FakeDevice, QuietInside, run
from .test_device_collect import CLIENT_IP, DEVICE_IP, WALL, exchange, ip4, reflecting_device

PEER4 = bytes([10, 7, 0, 2])
PEER6 = bytes.fromhex("fd000007000000000000000000000002")
LO4 = bytes([127, 0, 0, 1])
LO6 = bytes(15) + b"\x01"


def tcp4(dst: bytes = LO4, port: int = 9, seq: int = 1) -> bytes:
    return build_ipv4(
        PEER4, dst, PROTO_TCP, build_segment(PEER4, dst, 5000, port, seq, 1, ACK, 512)
    )


class Recorder:
    """Wraps the exit's `receive_packet` (the real one still runs): what it was handed, in
    order, and what the test's `on_segment(i)` noted when the i-th TCP packet came."""

    def __init__(self, shell, on_segment=None) -> None:
        self.delivered: list[bytes] = []
        self.notes: list = []
        self._real = shell.exit.receive_packet
        self._on_segment = on_segment
        self._segments = 0
        shell.exit.receive_packet = self

    def __call__(self, peer_key, packet, now) -> None:
        self.delivered.append(bytes(packet))
        if not is_datagram(packet):
            self._segments += 1
            if self._on_segment is not None:
                self._on_segment(self._segments, self.notes)
        self._real(peer_key, packet, now)


# -- the order ---------------------------------------------------------------------------------

PACKETS = st.one_of(
    st.builds(lambda s: tcp4(seq=s), st.integers(0, 1 << 31)),
    st.builds(lambda p: build_udp_packet(PEER4, LO4, 4000 + p, 53, b"q"), st.integers(0, 99)),
    st.builds(lambda p: build_udp_packet(PEER6, LO6, 4000 + p, 53, b"q"), st.integers(0, 99)),
    st.builds(lambda s: build_echo(PEER4, LO4, 7, s, b"ping", reply=False), st.integers(0, 999)),
    st.builds(
        lambda n: build_ipv6(PEER6, LO6, 0, bytes([17, 0, 1, 4, 0, 0, 0, 0]) + bytes(n)),
        st.integers(8, 40),
    ),  # fmt: skip
    st.binary(max_size=30),  # anything at all: the exit drops it, in its place
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(PACKETS, max_size=40))
def test_datagrams_come_first_and_every_class_keeps_its_order(batch):
    """Refused destinations (the host's loopback): no socket is opened, only the order is seen."""
    delivered, refused = delivered_order(batch)
    datagrams = [p for p in batch if is_datagram(p)]
    segments = [p for p in batch if not is_datagram(p)]
    assert delivered == datagrams + segments
    assert refused <= len(batch)


def delivered_order(batch: list[bytes]) -> tuple[list[bytes], int]:
    """The order in which one batch from the peer reaches the exit, and how many of its packets
    the exit refused."""
    loop = asyncio.new_event_loop()
    dev = FakeDevice(loop)
    try:
        shell = dev.start()
        seen = Recorder(shell)
        shell.receive_packets([(PEER_KEY, p) for p in batch], time.monotonic())
        return seen.delivered, shell.exit.refusals().get(PEER_KEY, 0)
    finally:
        dev.close()
        loop.close()


# -- the datagrams' host sends leave first, their answers mid-batch -----------------------------


class UdpEchoServer:
    """A loopback UDP server in a thread that answers each datagram upper-cased, `delay` after
    it came (as a loaded machine schedules the thread late), and stops by itself after
    `seconds`."""

    def __init__(self, seconds: float = 10.0, delay: float = 0.0) -> None:
        self.delay = delay
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.got = threading.Event()
        self._end = time.monotonic() + seconds
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop and time.monotonic() < self._end:
            try:
                data, source = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            self.got.set()
            time.sleep(self.delay)
            self.sock.sendto(data.upper(), source)

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        self.sock.close()


@contextlib.asynccontextmanager
async def exit_and_echo_server(send_now: bool = True, delay: float = 0.0):
    """An exit shell (loopback allowed) on a FakeDevice, and a UdpEchoServer: yields
    (device, shell, server, a UDP query packet to the server)."""
    server = UdpEchoServer(delay=delay)
    dev = FakeDevice(asyncio.get_running_loop())
    try:
        shell = dev.start(allow_local=True, send_now=send_now)
        yield dev, shell, server, build_udp_packet(PEER4, LO4, 4000, server.port, b"query")
    finally:
        dev.close()
        server.close()


def readable(shell) -> bool:
    """Wait (at most 2 s) until one of the exit's UDP host sockets has a datagram to read."""
    socks = [f.handle for f in shell._live if isinstance(f.handle, socket.socket)]
    return select.select(socks, [], [], 2.0)[0] != []


def held_until_answered(server: UdpEchoServer, shell, then=None):
    """An `on_segment` that holds the exit's work on the first segment until the server has
    the query and its answer is in the flow's host socket (waited for, not slept for: on a
    loaded machine the server's thread answers late); `then(notes)` on every segment."""

    def note(i, notes):
        if i == 1:
            answered = server.got.wait(2.0) and readable(shell)
            notes.append(answered)
        if then is not None:
            then(notes)

    return note


SERVER_DELAYS = pytest.mark.parametrize("delay", [0.0, 0.1])


@SERVER_DELAYS
def test_a_datagrams_host_send_leaves_before_the_segments_are_worked_on(delay):
    async def main():
        async with exit_and_echo_server(delay=delay) as (dev, shell, server, query):
            seen = Recorder(shell, held_until_answered(server, shell))
            batch = [(PEER_KEY, tcp4(seq=1)), (PEER_KEY, tcp4(seq=2)), (PEER_KEY, query)]
            shell.receive_packets(batch, time.monotonic())
            # At the first segment, the query behind it in the batch was at the server already.
            assert seen.delivered[0] == query and seen.notes == [True]

    run(main())


@SERVER_DELAYS
def test_an_answer_that_comes_back_mid_batch_is_sent_at_once(delay):
    async def main():
        async with exit_and_echo_server(delay=delay) as (dev, shell, server, query):
            sent = []
            seen = Recorder(shell, held_until_answered(server, shell, lambda _: sent.append(
                len(dev.sent_now))))  # fmt: skip
            segments = 4 * ANSWER_POLL
            batch = [(PEER_KEY, query)] + [(PEER_KEY, tcp4(seq=s)) for s in range(segments)]
            shell.receive_packets(batch, time.monotonic())
            assert seen.notes == [True]
            # Sent by the poll after the ANSWER_POLL-th segment, before the next was handed over.
            assert sent[ANSWER_POLL - 1] == 0 and sent[ANSWER_POLL] == 1
            ((answer,),) = dev.sent_now
            assert bytes(parse_udp(parse_ip(answer)).payload) == b"QUERY"
            rest = shell.take_packets()  # the segments' RSTs; the answer is not sent twice
            assert answer not in rest and len(rest) == segments

    run(main())


@SERVER_DELAYS
def test_a_far_ends_answer_is_sent_at_once_from_a_batch_of_segments_alone(delay):
    """The far end of a call answers some milliseconds after its query left, in the middle of a
    later batch that holds only TCP segments (an upload): read and sent by the first poll after
    it came, as the flow is open (`Exit.awaits_datagrams`)."""

    async def main():
        async with exit_and_echo_server(delay=delay) as (dev, shell, server, query):
            shell.receive_packets([(PEER_KEY, query)], time.monotonic())  # the flow opens
            assert shell.take_packets() == []
            sent = []
            seen = Recorder(shell, held_until_answered(server, shell, lambda _: sent.append(
                len(dev.sent_now))))  # fmt: skip
            segments = 4 * ANSWER_POLL
            shell.receive_packets(
                [(PEER_KEY, tcp4(seq=s)) for s in range(segments)], time.monotonic()
            )
            assert seen.notes == [True]
            assert sent[ANSWER_POLL - 1] == 0 and sent[ANSWER_POLL] == 1
            ((answer,),) = dev.sent_now
            assert bytes(parse_udp(parse_ip(answer)).payload) == b"QUERY"

    run(main())


@SERVER_DELAYS
def test_without_send_now_the_answer_leaves_first_in_the_collection(delay):
    async def main():
        async with exit_and_echo_server(send_now=False, delay=delay) as (dev, shell, server, query):
            Recorder(shell, held_until_answered(server, shell))
            batch = [(PEER_KEY, tcp4(seq=s)) for s in range(3)] + [(PEER_KEY, query)]
            shell.receive_packets(batch, time.monotonic())
            out = shell.take_packets()
            assert dev.sent_now == [] and len(out) == 4
            # Read by the poll after the batch, and ahead of the TCP segments it produced.
            assert bytes(parse_udp(parse_ip(out[0])).payload) == b"QUERY"

    run(main())


def count_polls(shell) -> list:
    polls: list = []
    real = shell.poll
    shell.poll = lambda: polls.append(1) or real()
    return polls


def test_a_batch_without_datagrams_costs_no_poll():
    async def main():
        dev = FakeDevice(asyncio.get_running_loop())
        try:
            shell = dev.start(allow_local=True)
            polls = count_polls(shell)
            shell.receive_packets(
                [(PEER_KEY, tcp4(seq=s)) for s in range(4 * ANSWER_POLL)], time.monotonic()
            )
            assert polls == []
        finally:
            dev.close()

    run(main())


# -- the device's send_now ----------------------------------------------------------------------


class SendsNow(QuietInside):
    """Answers each packet through `send_now` while still inside `receive_packets`, and notes
    whether the client's socket had the datagram before it returned."""

    client_sock: socket.socket | None = None

    def __init__(self, context) -> None:
        super().__init__(context)
        self.before_return: list[bool] = []

    def receive_packets(self, packets, now, queue_delay=None):
        for _peer_key, packet in packets:
            self.context.send_now([packet[:12] + packet[16:20] + packet[12:16] + packet[20:]])
            ready = select.select([self.client_sock], [], [], 2.0)[0]
            self.before_return.append(bool(ready))


def test_the_devices_send_now_encrypts_and_sends_before_the_inside_returns():
    async def main():
        async with reflecting_device(SendsNow) as (device, client, client_sock, device_addr):
            inside = device.inside
            inside.client_sock = client_sock
            client.send_packet(ip4(CLIENT_IP, DEVICE_IP, b"ping"), time.monotonic(), WALL)
            answers = await exchange(client, client_sock, device_addr)
            assert answers == [(device.public_key, ip4(DEVICE_IP, CLIENT_IP, b"ping"))]
            assert inside.before_return == [True]
            device.close()
            inside.context.send_now([ip4(DEVICE_IP, CLIENT_IP, b"late")])  # closed: nothing

    run(main())


@pytest.mark.parametrize("with_datagram", [True, False])
def test_what_a_peer_can_make_one_batch_cost_is_bounded(with_datagram):
    """An attacker's batches of a datagram and many segments, or of segments alone while its
    UDP flow is open (`Exit.awaits_datagrams`): without an answer, one poll per ANSWER_POLL
    segments and one after; with the host flooding the flow, one poll and one `send_now` (the
    poll reads a bounded batch from each socket), however long the batch."""

    async def main():
        flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        flood.bind(("127.0.0.1", 0))
        dev = FakeDevice(asyncio.get_running_loop())
        try:
            shell = dev.start(allow_local=True)
            segments = 8 * ANSWER_POLL
            query = build_udp_packet(PEER4, LO4, 4000, flood.getsockname()[1], b"query")
            batch = [(PEER_KEY, query)] + [(PEER_KEY, tcp4(seq=s)) for s in range(segments)]
            if not with_datagram:
                shell.receive_packets(batch[:1], time.monotonic())  # the flow opens
                batch = batch[1:]
            polls = count_polls(shell)
            shell.receive_packets(batch, time.monotonic())  # nobody answers
            assert len(polls) == segments // ANSWER_POLL + 1 and dev.sent_now == []

            _, source = flood.recvfrom(100)
            for _ in range(500):  # more than one poll reads from a socket
                flood.sendto(b"x" * 100, source)
            # In the flow's socket before the batch (loopback may deliver from ksoftirqd later).
            assert readable(shell)
            del polls[:]
            shell.receive_packets(batch, time.monotonic())
            assert len(polls) == 1 and len(dev.sent_now) == 1
            assert 0 < len(dev.sent_now[0]) <= 64
        finally:
            dev.close()
            flood.close()

    run(main())


def test_an_ipv6_udp_flow_is_not_reordered_around_its_fragmented_datagrams():
    """A UDP flow over IPv6 whose big datagrams the client fragmented (every piece names the
    fragment header first) and whose small ones it did not: one flow, so one class, or the
    small datagram behind a big one would reach the host first."""
    big = build_udp_packet(PEER6, LO6, 4000, 53, bytes(3000))
    small = build_udp_packet(PEER6, LO6, 4000, 53, b"after")
    pieces = fragment_ipv6(big, 1280, 7)
    assert len(pieces) > 1
    batch = [*pieces, small, tcp4()]
    delivered, _ = delivered_order(batch)
    assert delivered[: len(pieces) + 1] == [*pieces, small]


# -- the exit's clock ----------------------------------------------------------------------------


class ClockWatch:
    """Wraps the exit's `receive_packet`: whether each packet was handed a `now` no earlier
    than the exit's clock (what the host side fed it last), as the exit requires."""

    def __init__(self, shell) -> None:
        self.steps_back: list[float] = []
        self._exit = shell.exit
        self._real = shell.exit.receive_packet
        shell.exit.receive_packet = self

    def __call__(self, peer_key, packet, now) -> None:
        if now < self._exit._now:
            self.steps_back.append(self._exit._now - now)
        self._real(peer_key, packet, now)


def test_the_exits_clock_does_not_step_back_after_a_mid_batch_poll():
    """The poll fed the exit an answer stamped later than the batch: the segments after it
    are handed a fresh clock."""

    async def main():
        async with exit_and_echo_server() as (dev, shell, server, query):
            shell.receive_packets([(PEER_KEY, query)], time.monotonic())  # the flow opens
            assert server.got.wait(2.0) and readable(shell)
            watch = ClockWatch(shell)
            batch = [(PEER_KEY, tcp4(seq=s)) for s in range(2 * ANSWER_POLL)]
            shell.receive_packets(batch, time.monotonic())
            assert len(dev.sent_now) == 1 and watch.steps_back == []

    run(main())


def test_the_exits_clock_does_not_step_back_after_the_datagrams_host_sends():
    """A datagram's host send fails (the destination refused the one before it): the error is
    fed to the exit stamped after the batch's clock, before the segments are worked on."""

    async def main():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]  # closed: the host answers port unreachable
        dev = FakeDevice(asyncio.get_running_loop())
        try:
            shell = dev.start(allow_local=True)
            query = build_udp_packet(PEER4, LO4, 4000, port, b"query")
            shell.receive_packets([(PEER_KEY, query)], time.monotonic())
            assert readable(shell)  # the refusal is pending on the flow's socket
            watch = ClockWatch(shell)
            batch = [(PEER_KEY, query)] + [(PEER_KEY, tcp4(seq=s)) for s in range(2)]
            shell.receive_packets(batch, time.monotonic())
            assert watch.steps_back == []
        finally:
            dev.close()

    run(main())
