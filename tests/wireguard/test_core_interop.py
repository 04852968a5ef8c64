"""Interop of our sans-IO handshake and transport keys with a real wireguard-go.

Each test makes its own network namespace with a wireguard-go interface (10.77.0.1/24) in it, and
a UDP socket of ours bound to 127.0.0.1 inside that namespace, so no packet leaves loopback of a
namespace the test created. We are the peer 10.77.0.2. The kernel in the namespace answers our
ICMP echo through wireguard-go, which is the proof that both sides derived the same keys.

Needs root, wireguard-go, wg and ip. The "ping" from inside the namespace is a raw ICMP socket
created there, so iputils is not needed. Without them the tests skip, unless CI is set, where
a missing prerequisite is a failure.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tether import keys
from tether.netstack.wire import checksum
from tether.wireguard.constants import MESSAGE_INITIATION, MESSAGE_RESPONSE, MESSAGE_TRANSPORT
from tether.wireguard.cookie import CookieChecker, CookieGenerator
from tether.wireguard.crypto import tai64n
from tether.wireguard.messages import (
    MessageError,
    message_type,
    parse_initiation,
    parse_response,
    parse_transport,
)
from tether.wireguard.noise import (
    InitiationGuard,
    LocalIdentity,
    PeerKeys,
    create_initiation,
    open_initiation,
)

pytestmark = pytest.mark.e2e

WG_ADDR = bytes([10, 77, 0, 1])
OUR_ADDR = bytes([10, 77, 0, 2])
WG_PORT = 51820
CLONE_NEWNET = 0x40000000
UAPI_DIR = Path("/var/run/wireguard")
_serial = itertools.count()


def _require_prerequisites() -> None:
    missing = [tool for tool in ("wireguard-go", "wg", "ip") if shutil.which(tool) is None]
    reasons = (["not running as root"] if os.geteuid() != 0 else []) + [
        f"{tool} not installed" for tool in missing
    ]
    if reasons:
        message = "wireguard-go interop test cannot run: " + "; ".join(reasons)
        if os.environ.get("CI"):
            pytest.fail(message + " (CI is set, so this is a failure, not a skip)")
        pytest.skip(message)


def _run(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def _socket_in_netns(netns: str, kind: int, proto: int = 0) -> socket.socket:
    """A socket created inside `netns`. setns(CLONE_NEWNET) only moves the calling thread, so a
    throwaway thread does it; the socket keeps its namespace after the thread is gone."""
    libc = ctypes.CDLL(None, use_errno=True)
    result: dict[str, object] = {}

    def worker() -> None:
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns: {os.strerror(err)}")
            finally:
                os.close(fd)
            result["sock"] = socket.socket(socket.AF_INET, kind, proto)
        except BaseException as exc:  # handed to the test thread below
            result["error"] = exc

    thread = threading.Thread(target=worker, name=f"setns-{netns}")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["sock"]  # type: ignore[return-value]


class WireGuardGo:
    """wireguard-go in a fresh namespace, configured with us as its only peer."""

    def __init__(self, tmp_path: Path) -> None:
        n = next(_serial)
        self.netns = f"twgi{os.getpid()}{n}"
        self.ifname = f"twi{os.getpid()}{n}"[:15]
        self.log_path = tmp_path / "wireguard-go.log"
        self.proc: subprocess.Popen | None = None
        self.sock: socket.socket | None = None
        self.private = keys.generate_private()
        self.public = keys.public_from_private(self.private)
        self.key_file = tmp_path / "wg.key"

    def start(self, our_public: bytes) -> None:
        _run("ip", "netns", "add", self.netns)
        _run("ip", "-n", self.netns, "link", "set", "lo", "up")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, "wireguard-go", "-f", self.ifname],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "LOG_LEVEL": "debug"},
                start_new_session=True,
            )
        deadline = time.monotonic() + 10
        while not (UAPI_DIR / f"{self.ifname}.sock").exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"wireguard-go did not come up:\n{self.log()}")
            time.sleep(0.02)
        fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(keys.encode(self.private) + "\n")
        self.wg("set", self.ifname, "private-key", str(self.key_file),
                "listen-port", str(WG_PORT),
                "peer", keys.encode(our_public), "allowed-ips", "10.77.0.2/32")  # fmt: skip
        _run("ip", "-n", self.netns, "addr", "add", "10.77.0.1/24", "dev", self.ifname)
        _run("ip", "-n", self.netns, "link", "set", self.ifname, "up")
        self.sock = _socket_in_netns(self.netns, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))

    def wg(self, *args: str) -> str:
        return _run("ip", "netns", "exec", self.netns, "wg", *args)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Undo everything, by pid first and then by name, tolerating half-done setups."""
        if self.sock is not None:
            self.sock.close()
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=5)
        if Path(f"/run/netns/{self.netns}").exists():
            pids = subprocess.run(
                ["ip", "netns", "pids", self.netns], capture_output=True, text=True
            )
            for pid in pids.stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)
        (UAPI_DIR / f"{self.ifname}.sock").unlink(missing_ok=True)

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, ("127.0.0.1", WG_PORT))

    def receive(self, wanted_type: int, timeout: float = 5.0) -> bytes | None:
        """The next datagram of `wanted_type` from wireguard-go, or None after `timeout`."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                data, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                return None
            if addr != ("127.0.0.1", WG_PORT):
                continue
            try:
                if message_type(data) == wanted_type:
                    return data
            except MessageError:
                continue
        return None


@pytest.fixture
def wggo(tmp_path):
    _require_prerequisites()
    us = LocalIdentity(keys.generate_private())
    peer = WireGuardGo(tmp_path)
    try:
        peer.start(us.spub)
        peer.us = us
        peer.keys = PeerKeys(us, peer.public)
        peer.checker = CookieChecker(us.spub)
        peer.generator = CookieGenerator(peer.public)
        yield peer
    finally:
        peer.stop()


def ipv4_icmp(src: bytes, dst: bytes, icmp_type: int, ident: int, seq: int, data: bytes) -> bytes:
    icmp = bytearray(struct.pack("!BBHHH", icmp_type, 0, 0, ident, seq) + data)
    struct.pack_into("!H", icmp, 2, checksum(icmp))
    header = bytearray(
        struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), seq, 0x4000, 64, 1, 0, src, dst)
    )
    struct.pack_into("!H", header, 10, checksum(header))
    return bytes(header + icmp)


def parse_ipv4_icmp(packet: bytes) -> tuple[bytes, bytes, int, int, int, bytes]:
    """(src, dst, type, ident, seq, data) after checking both checksums; drops WG padding."""
    assert packet[0] == 0x45 and packet[9] == 1, packet[:20].hex()
    total = struct.unpack_from("!H", packet, 2)[0]
    assert checksum(packet[:20]) == 0
    icmp = packet[20:total]
    assert checksum(icmp) == 0
    icmp_type, _, _, ident, seq = struct.unpack_from("!BBHHH", icmp)
    return packet[12:16], packet[16:20], icmp_type, ident, seq, icmp[8:]


def pad16(packet: bytes) -> bytes:
    return packet + bytes(-len(packet) % 16)


def open_transport(keypair, data: bytes) -> bytes:
    receiver, counter = parse_transport(data)
    assert receiver == keypair.local_index
    return keypair.open(counter, memoryview(data)[16:])


def test_we_initiate_and_ping_through_wireguard_go(wggo):
    init_msg, handshake = create_initiation(wggo.keys, tai64n(time.time()))
    wggo.send(wggo.generator.add_macs(init_msg.pack(), time.monotonic()))
    wire = wggo.receive(MESSAGE_RESPONSE)
    assert wire is not None, f"no handshake response from wireguard-go:\n{wggo.log()}"
    assert wggo.checker.check_mac1(wire)
    response = parse_response(wire)
    assert response.receiver == init_msg.sender
    keypair = handshake.consume_response(response)

    payload = b"tetherctl interop " + os.urandom(8)
    echo = ipv4_icmp(OUR_ADDR, WG_ADDR, 8, 0x7E7E, 1, payload)
    wggo.send(bytes(keypair.seal(0, pad16(echo))))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        data = wggo.receive(MESSAGE_TRANSPORT, timeout=deadline - time.monotonic())
        assert data is not None, f"no echo reply through the tunnel:\n{wggo.log()}"
        plain = open_transport(keypair, data)
        if plain:  # an empty plaintext is a keepalive
            break
    assert parse_ipv4_icmp(plain) == (WG_ADDR, OUR_ADDR, 0, 0x7E7E, 1, payload)
    endpoints = wggo.wg("show", wggo.ifname, "endpoints")
    assert f"127.0.0.1:{wggo.sock.getsockname()[1]}" in endpoints


def test_wireguard_go_initiates_and_we_answer(wggo):
    our_port = wggo.sock.getsockname()[1]
    wggo.wg("set", wggo.ifname, "peer", keys.encode(wggo.us.spub),
            "endpoint", f"127.0.0.1:{our_port}")  # fmt: skip
    # Ping 10.77.0.2 from inside the namespace: wireguard-go must handshake with us to send it.
    pinger = _socket_in_netns(wggo.netns, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident = os.getpid() & 0xFFFF
    probe = os.urandom(16)
    request = ipv4_icmp(WG_ADDR, OUR_ADDR, 8, ident, 1, probe)[20:]
    pinger.sendto(request, ("10.77.0.2", 0))
    try:
        wire = wggo.receive(MESSAGE_INITIATION)
        assert wire is not None, f"wireguard-go sent no initiation:\n{wggo.log()}"
        assert wggo.checker.check_mac1(wire)
        opened = open_initiation(wggo.us, parse_initiation(wire))
        assert opened.initiator_static == wggo.public
        state = opened.authenticate(wggo.keys)
        # wireguard-go's TAI64N must decode to about now under our encoding's epoch and offset.
        their_seconds = int.from_bytes(state.timestamp[:8], "big") - ((1 << 62) + 10)
        assert abs(their_seconds - time.time()) < 5
        assert InitiationGuard().admit(state.timestamp, time.monotonic())
        response, keypair = state.create_response()
        wggo.send(wggo.generator.add_macs(response.pack(), time.monotonic()))

        data = wggo.receive(MESSAGE_TRANSPORT)
        assert data is not None, f"no transport data after our response:\n{wggo.log()}"
        # The tunnel delivered exactly the request sent in the namespace; answer it.
        assert parse_ipv4_icmp(open_transport(keypair, data)) == (
            WG_ADDR, OUR_ADDR, 8, ident, 1, probe
        )  # fmt: skip
        reply = ipv4_icmp(OUR_ADDR, WG_ADDR, 0, ident, 1, probe)
        wggo.send(bytes(keypair.seal(0, pad16(reply))))
        # The namespace's kernel delivers our reply to the pinger: the session works both ways.
        pinger.settimeout(5)
        deadline = time.monotonic() + 5
        while True:
            assert time.monotonic() < deadline, f"our echo reply never arrived:\n{wggo.log()}"
            got = parse_ipv4_icmp(pinger.recv(65535))
            if got[2] == 0 and got[3] == ident:
                break
        assert got == (OUR_ADDR, WG_ADDR, 0, ident, 1, probe)
    finally:
        pinger.close()
    latest = wggo.wg("show", wggo.ifname, "latest-handshakes").split()
    assert latest[0] == keys.encode(wggo.us.spub) and int(latest[1]) > 0


def test_wrong_mac1_gets_no_answer(wggo):
    init_msg, _ = create_initiation(wggo.keys, tai64n(time.time()))
    wire = bytearray(wggo.generator.add_macs(init_msg.pack(), time.monotonic()))
    wire[120] ^= 0x80
    wggo.send(bytes(wire))
    assert wggo.receive(MESSAGE_RESPONSE, timeout=1.5) is None
    # The same initiation with a correct mac1 is answered, so the silence was the mac1.
    wggo.send(wggo.generator.add_macs(init_msg.pack(), time.monotonic()))
    assert wggo.receive(MESSAGE_RESPONSE) is not None, wggo.log()
