"""The UAPI codec: byte-exact requests from the real `wg`, errno rules, round trips, and `wg show`
parsing our replies over a fake socket in /var/run/wireguard."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether import keys
from tether.device.uapi.protocol import (
    EINVAL,
    EIO,
    EMSGSIZE,
    EPROTO,
    MAX_LINE_BYTES,
    AllowedIPChange,
    DeviceSnapshot,
    Endpoint,
    GetRequest,
    PeerOp,
    PeerSnapshot,
    RequestReader,
    SetRequest,
    UapiError,
    format_errno,
    format_get_response,
    format_set_request,
    parse_endpoint,
    parse_prefix,
    parse_request,
)

net = ipaddress.ip_network
K1 = bytes(range(32))
K2 = bytes(range(32, 64))
K3 = bytes(range(64, 96))
PRIV_HEX = "10c0783753bd3e565e40bff4f8ad3240031b6f10c3c97327b390db48d5050c4c"
PUB_HEX = "efff89aeaf9f70e75a68860328dee4ff2692b027064bbbcf988aedf32da87b52"


def ep(text: str) -> Endpoint:
    return parse_endpoint(text)


def change(text: str, remove: bool = False) -> AllowedIPChange:
    return AllowedIPChange(net(text), remove)


# --- requests as wireguard-tools v1.0.20210914 writes them (captured from /usr/bin/wg) ----------

WG_SET = (
    b"set=1\n"
    b"private_key=" + PRIV_HEX.encode() + b"\nlisten_port=1234\nfwmark=16\n"
    b"public_key=" + PUB_HEX.encode() + b"\npreshared_key=" + PRIV_HEX.encode() + b"\n"
    b"endpoint=[fe80::1%lo]:5\npersistent_keepalive_interval=25\nreplace_allowed_ips=true\n"
    b"allowed_ip=10.0.0.0/8\nallowed_ip=fd00::/64\n\n"
)
WG_REMOVE = b"set=1\npublic_key=" + PUB_HEX.encode() + b"\nremove=true\n\n"


def test_wg_set_request():
    req = parse_request(WG_SET)
    assert req == SetRequest(
        private_key=bytes.fromhex(PRIV_HEX),
        listen_port=1234,
        fwmark=16,
        peers=[
            PeerOp(
                bytes.fromhex(PUB_HEX),
                preshared_key=bytes.fromhex(PRIV_HEX),
                endpoint=Endpoint(ipaddress.IPv6Address("fe80::1%lo"), 5),
                persistent_keepalive_interval=25,
                replace_allowed_ips=True,
                allowed_ips=[change("10.0.0.0/8"), change("fd00::/64")],
            )
        ],
    )
    assert format_set_request(req) == WG_SET  # we write what wg writes


def test_wg_remove_request():
    assert parse_request(WG_REMOVE) == SetRequest(
        peers=[PeerOp(bytes.fromhex(PUB_HEX), remove=True)]
    )
    assert format_set_request(parse_request(WG_REMOVE)) == WG_REMOVE


def test_get_request():
    assert parse_request(b"get=1\n\n") == GetRequest()


def test_newer_wg_allowed_ip_removal():
    # wireguard-tools >= 1.0.20250521 writes "allowed_ip=-CIDR" for `allowed-ips -10.0.0.0/8`.
    req = parse_request(
        f"set=1\npublic_key={PUB_HEX}\nallowed_ip=-10.0.0.0/8\nallowed_ip=fd00::/64\n\n"
    )
    assert req.peers[0].allowed_ips == [change("10.0.0.0/8", True), change("fd00::/64")]


def test_private_key_clamped_and_zero_clears():
    req = parse_request(f"set=1\nprivate_key={'ff' * 32}\n\n")
    assert req.private_key == keys.clamp(b"\xff" * 32)
    assert parse_request(f"set=1\nprivate_key={'00' * 32}\n\n").private_key == bytes(32)
    upper = parse_request(f"set=1\nprivate_key={PRIV_HEX.upper()}\n\n").private_key
    assert upper == bytes.fromhex(PRIV_HEX)


def test_line_order_folds_like_wireguard_go():
    pk = PUB_HEX
    text = (
        f"set=1\nreplace_peers=true\nlisten_port=1\nlisten_port=0002\n"
        f"public_key={pk}\nallowed_ip=10.0.0.0/8\nreplace_allowed_ips=true\nallowed_ip=10.9.9.9/24\n"
        f"update_only=true\nprotocol_version=1\n"
        f"public_key={pk}\nendpoint=1.2.3.4:5\nremove=true\npreshared_key={'00' * 32}\n"
        f"allowed_ip=1.0.0.0/8\n\n"
    )
    assert parse_request(text) == SetRequest(
        listen_port=2,
        replace_peers=True,
        peers=[
            PeerOp(
                bytes.fromhex(pk),
                update_only=True,
                replace_allowed_ips=True,
                allowed_ips=[change("10.9.9.0/24")],
            ),
            PeerOp(bytes.fromhex(pk), remove=True),
        ],
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.2.3.4:51820", ("1.2.3.4", 51820)),
        ("[fd00::1]:0", ("fd00::1", 0)),
        ("[fe80::1%eth0]:65535", ("fe80::1%eth0", 65535)),
        ("[::ffff:1.2.3.4]:7", ("::ffff:1.2.3.4", 7)),
        ("1.2.3.4:00080", ("1.2.3.4", 80)),
    ],
)
def test_endpoints(text, expected):
    e = parse_endpoint(text)
    assert e == Endpoint(ipaddress.ip_address(expected[0]), expected[1])
    assert parse_endpoint(str(e)) == e


def test_go_address_text():
    assert str(ep("[::ffff:1.2.3.4]:7")) == "[::ffff:1.2.3.4]:7"
    assert str(ep("[FD00:0::1]:7")) == "[fd00::1]:7"
    assert str(ep("[fe80::1%eth0]:7")) == "[fe80::1%eth0]:7"


BAD = [
    # (request text, errno) — the errno wireguard-go's IpcSetOperation answers with
    ("set=1\nlisten_port\n\n", EPROTO),
    ("set=1\nbogus=1\n\n", EINVAL),
    ("set=1\n=1\n\n", EINVAL),
    ("set=1\nlisten_port=65536\n\n", EINVAL),
    ("set=1\nlisten_port=-1\n\n", EINVAL),
    ("set=1\nlisten_port=+1\n\n", EINVAL),
    ("set=1\nlisten_port= 1\n\n", EINVAL),
    ("set=1\nlisten_port=1_0\n\n", EINVAL),
    ("set=1\nlisten_port=\u0661\n\n", EINVAL),
    ("set=1\nlisten_port=" + "0" * 5000 + "1\n\n", None),  # Go accepts any run of zeros
    ("set=1\nlisten_port=" + "9" * 5000 + "\n\n", EINVAL),
    ("set=1\nfwmark=4294967296\n\n", EINVAL),
    ("set=1\nreplace_peers=false\n\n", EINVAL),
    ("set=1\nprivate_key=" + "0" * 63 + "\n\n", EINVAL),
    ("set=1\nprivate_key=" + "g" * 64 + "\n\n", EINVAL),
    ("set=1\nprivate_key=" + " 0" * 32 + "\n\n", EINVAL),
    ("set=1\npublic_key=abc\n\n", EINVAL),
    (f"set=1\npublic_key={PUB_HEX}\nlisten_port=1\n\n", EINVAL),  # device key after a peer
    (f"set=1\npublic_key={PUB_HEX}\nprotocol_version=2\n\n", EINVAL),
    (f"set=1\npublic_key={PUB_HEX}\nremove=yes\n\n", EINVAL),
    (f"set=1\npublic_key={PUB_HEX}\nupdate_only=1\n\n", EINVAL),
    (f"set=1\npublic_key={PUB_HEX}\nreplace_allowed_ips=True\n\n", EINVAL),
    (f"set=1\npublic_key={PUB_HEX}\npersistent_keepalive_interval=65536\n\n", EINVAL),
    (f"set=1\npublic_key={PUB_HEX}\nremove=true\nendpoint=x\n\n", EINVAL),  # still validated
    ("set=1\nlisten_port=1\r\n\r\n", None),  # Go's scanner drops one CR
]
ENDPOINTS_BAD = [
    "1.2.3.4", "1.2.3.4:", ":5", "fd00::1:5", "[1.2.3.4]:5", "[fd00::1:5", "[fd00::1]5",
    "01.2.3.4:5", "1.2.3.4:65536", "1.2.3.4%eth0:5", "[fe80::1%]:5", "example.com:5",
    "1.2.3.4:-5", "[fd00::1]:",
]  # fmt: skip
PREFIXES_BAD = [
    "10.0.0.0", "10.0.0.0/33", "10.0.0.0/024", "10.0.0.0/+8", "10.0.0.0/255.0.0.0",
    "fd00::/129", "fe80::%eth0/64", "10.0.0.0/-1", "/8", "10.0.0.0/", "-10.0.0.0/8",
]  # fmt: skip


@pytest.mark.parametrize(("text", "errno"), BAD)
def test_bad_requests(text, errno):
    if errno is None:
        parse_request(text)
        return
    with pytest.raises(UapiError) as info:
        parse_request(text)
    assert info.value.errno == errno and info.value.reply


@pytest.mark.parametrize("value", ENDPOINTS_BAD)
def test_bad_endpoints(value):
    with pytest.raises(UapiError) as info:
        parse_request(f"set=1\npublic_key={PUB_HEX}\nendpoint={value}\n\n")
    assert info.value.errno == EINVAL


@pytest.mark.parametrize("value", PREFIXES_BAD)
def test_bad_prefixes(value):
    with pytest.raises(UapiError) as info:
        parse_request(f"set=1\npublic_key={PUB_HEX}\nallowed_ip=-{value}\n\n")
    assert info.value.errno == EINVAL


def test_prefix_masks_host_bits():
    assert parse_prefix("10.1.2.3/8") == net("10.0.0.0/8")
    assert parse_prefix("fd00::1/0") == net("::/0")


# --- the reader: framing, limits, connection lifetime -----------------------------------------


def feed_bytewise(data: bytes) -> list:
    reader = RequestReader()
    events = []
    for i in range(len(data)):
        events += reader.feed(data[i : i + 1])
    return events + reader.feed_eof()


def test_pipelined_and_split():
    stream = b"get=1\n\n" + WG_SET + b"get=1\n\n" + WG_REMOVE
    expected = [GetRequest(), parse_request(WG_SET), GetRequest(), parse_request(WG_REMOVE)]
    assert feed_bytewise(stream) == expected
    reader = RequestReader()
    assert reader.feed(stream) == expected and not reader.pending


def test_eof_completes_a_set_like_wireguard_go():
    reader = RequestReader()
    assert reader.feed(b"set=1\nlisten_port=5\nfwmark=1") == []
    assert reader.pending
    assert reader.feed_eof() == [SetRequest(listen_port=5, fwmark=1)]
    assert reader.closed and reader.feed(b"get=1\n\n") == []
    # A get that never got its empty line, or half an operation line, is dropped silently.
    for partial in (b"get=1\n", b"get=", b""):
        r = RequestReader()
        assert r.feed(partial) == [] and r.feed_eof() == []


def test_unknown_operation_hangs_up_without_reply():
    for line in (b"set=2\n", b"SET=1\n", b"set=1\r\n", b"\n", b"get=1 \n"):
        [error] = RequestReader().feed(line)
        assert error.errno == EPROTO and not error.reply


def test_get_with_trailing_character():
    reader = RequestReader()
    [error] = reader.feed(b"get=1\nx")
    assert error.errno == EINVAL and error.reply and reader.closed


def test_error_ends_the_conversation():
    reader = RequestReader()
    events = reader.feed(b"get=1\n\nset=1\nbad\n\nget=1\n\n")
    assert events[0] == GetRequest() and isinstance(events[1], UapiError) and len(events) == 2
    assert reader.closed


def test_line_length_bound():
    ok = b"set=1\nlisten_port=" + b"0" * (MAX_LINE_BYTES - 13) + b"1\n\n"
    assert parse_request(ok).listen_port == 1
    reader = RequestReader()
    [error] = reader.feed(b"set=1\nlisten_port=" + b"0" * MAX_LINE_BYTES)  # no newline yet
    assert error.errno == EIO and error.reply
    [error] = RequestReader().feed(b"g" * (MAX_LINE_BYTES + 1))
    assert error.errno == EPROTO and not error.reply


def test_request_size_bound():
    line = f"public_key={PUB_HEX}\n".encode()
    reader = RequestReader(max_request_bytes=10_000)
    events = reader.feed(b"set=1\n")
    for _ in range(200):
        events += reader.feed(line)
        if events:
            break
    [error] = events
    assert error.errno == EMSGSIZE and reader.closed
    small = RequestReader(max_request_bytes=10_000)
    assert small.feed(b"set=1\n" + line * 10 + b"\n")[0].peers[9].public_key == bytes.fromhex(
        PUB_HEX
    )


# --- replies -------------------------------------------------------------------------------


def test_errno_sign():
    assert format_errno(0) == b"errno=0\n\n"
    assert format_errno(EINVAL) == b"errno=-22\n\n"
    assert format_errno(-EINVAL) == b"errno=-22\n\n"


def test_get_response_order_and_omissions():
    snapshot = DeviceSnapshot(
        private_key=K1,
        listen_port=51820,
        fwmark=0,
        peers=[
            PeerSnapshot(
                K2,
                endpoint=ep("[fd00::1]:4"),
                last_handshake_time_sec=1700000000,
                last_handshake_time_nsec=5,
                tx_bytes=10,
                rx_bytes=20,
                persistent_keepalive_interval=25,
                allowed_ips=[net("10.0.0.2/32"), net("::ffff:1.2.3.4/128")],
            ),
            PeerSnapshot(K3, preshared_key=K1),
        ],
    )
    assert format_get_response(snapshot).decode() == (
        f"private_key={K1.hex()}\nlisten_port=51820\n"
        f"public_key={K2.hex()}\npreshared_key={'00' * 32}\nprotocol_version=1\n"
        "endpoint=[fd00::1]:4\nlast_handshake_time_sec=1700000000\nlast_handshake_time_nsec=5\n"
        "tx_bytes=10\nrx_bytes=20\npersistent_keepalive_interval=25\n"
        "allowed_ip=10.0.0.2/32\nallowed_ip=::ffff:1.2.3.4/128\n"
        f"public_key={K3.hex()}\npreshared_key={K1.hex()}\nprotocol_version=1\n"
        "last_handshake_time_sec=0\nlast_handshake_time_nsec=0\n"
        "tx_bytes=0\nrx_bytes=0\npersistent_keepalive_interval=0\n"
        "errno=0\n\n"
    )
    assert format_get_response(DeviceSnapshot(private_key=bytes(32))) == b"errno=0\n\n"
    assert format_get_response(DeviceSnapshot(fwmark=7)) == b"fwmark=7\nerrno=0\n\n"


# --- properties ----------------------------------------------------------------------------

key32 = st.binary(min_size=32, max_size=32)
scope = st.text("abcdefgXYZ0123456789._-", min_size=1, max_size=8)
v4 = st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address)
v6 = st.one_of(
    st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address),
    st.integers(0, 2**32 - 1).map(lambda a: ipaddress.IPv6Address((0xFFFF << 32) | a)),
    st.tuples(st.integers(0, 2**64 - 1), scope).map(
        lambda t: ipaddress.IPv6Address(f"{ipaddress.IPv6Address((0xFE80 << 112) | t[0])}%{t[1]}")
    ),
)
endpoints = st.builds(Endpoint, st.one_of(v4, v6), st.integers(0, 65535))
networks = st.one_of(
    st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 32)).map(
        lambda t: ipaddress.IPv4Network(t, strict=False)
    ),
    st.tuples(st.integers(0, 2**128 - 1), st.integers(0, 128)).map(
        lambda t: ipaddress.IPv6Network(t, strict=False)
    ),
)
changes = st.builds(AllowedIPChange, networks, st.booleans())
live_ops = st.builds(
    PeerOp,
    key32,
    update_only=st.booleans(),
    preshared_key=st.none() | key32,
    endpoint=st.none() | endpoints,
    persistent_keepalive_interval=st.none() | st.integers(0, 65535),
    replace_allowed_ips=st.booleans(),
    allowed_ips=st.lists(changes, max_size=4),
)
peer_ops = st.one_of(live_ops, key32.map(lambda k: PeerOp(k, remove=True)))
set_requests = st.builds(
    SetRequest,
    private_key=st.none() | st.just(bytes(32)) | key32.map(keys.clamp),
    listen_port=st.none() | st.integers(0, 65535),
    fwmark=st.none() | st.integers(0, 2**32 - 1),
    replace_peers=st.booleans(),
    peers=st.lists(peer_ops, max_size=4),
)


@settings(max_examples=300, deadline=None)
@given(set_requests)
def test_set_request_round_trip(req):
    text = format_set_request(req)
    assert parse_request(text) == req
    assert feed_bytewise(text) == [req]


KEYS = [
    "private_key", "listen_port", "fwmark", "replace_peers", "public_key", "remove",
    "update_only", "preshared_key", "endpoint", "persistent_keepalive_interval",
    "replace_allowed_ips", "allowed_ip", "protocol_version", "errno",
]  # fmt: skip
values = st.one_of(
    st.text(max_size=70),
    st.sampled_from(["true", "1", PUB_HEX, "1.2.3.4:5", "[fe80::1%x]:1", "10.0.0.0/8", "-::/0"]),
    st.binary(max_size=20).map(lambda b: b.decode("latin-1")),
)
lines = st.one_of(
    st.tuples(st.sampled_from(KEYS), values).map(lambda kv: f"{kv[0]}={kv[1]}"),
    st.text(max_size=30),
)


@settings(max_examples=500, deadline=None)
@given(st.lists(lines, max_size=8), st.sampled_from(["set=1\n", "get=1\n", ""]))
def test_structured_garbage_only_raises_uapi_error(body, op):
    text = op + "\n".join(body) + "\n\n"
    with contextlib.suppress(UapiError):
        parse_request(text)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_random_bytes_only_raise_uapi_error(data):
    for prefix in (b"", b"set=1\n"):
        with contextlib.suppress(UapiError):
            parse_request(prefix + data)
        reader = RequestReader(max_request_bytes=200)
        events = reader.feed(prefix + data) + reader.feed_eof()
        assert all(isinstance(e, GetRequest | SetRequest | UapiError) for e in events)


# --- the fuzz target, so it cannot rot -----------------------------------------------------


def test_fuzz_target_smoke(fuzz_target):
    module = fuzz_target("fuzz_uapi")
    rnd = random.Random(6479)
    seeds = [WG_SET, WG_REMOVE, b"get=1\n\n", b"get=1\n\n" + WG_SET]
    for i in range(400):
        if i % 2:
            data = bytearray(rnd.choice(seeds))
            for _ in range(rnd.randrange(4)):
                data[rnd.randrange(len(data))] = rnd.choice(b"=\n\r-:[]%/0aZ\xff")
            data = data[: rnd.randrange(len(data) + 1)] if rnd.random() < 0.3 else data
        else:
            data = rnd.randbytes(rnd.randrange(120))
        module.TestOneInput(bytes([rnd.randrange(256)]) + bytes(data))


# --- the real wg against a fake device socket ----------------------------------------------

WG = shutil.which("wg")
SOCKET_DIR = Path("/var/run/wireguard")


def need_wg_as_root():
    reason = None
    if WG is None:
        reason = "wg (wireguard-tools) not installed: apt-get install wireguard-tools"
    elif os.geteuid() != 0:
        reason = "needs root to create a socket in /var/run/wireguard"
    if reason:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


class FakeDevice:
    """Answers wg on /var/run/wireguard/<name>.sock with our codec, recording the requests."""

    def __init__(self) -> None:
        self.name = f"tuapi{os.getpid()}"
        self.path = SOCKET_DIR / f"{self.name}.sock"
        self.snapshot = DeviceSnapshot()
        self.set_errno = 0
        self.requests: list = []
        SOCKET_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # left over from a crashed run of this same pid
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(self.path))
        self.listener.listen()
        self.listener.settimeout(0.1)
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping:
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                self._converse(conn)

    def _converse(self, conn: socket.socket) -> None:
        reader = RequestReader()
        while not reader.closed:
            try:
                data = conn.recv(65536)
            except OSError:
                return
            for event in reader.feed(data) if data else reader.feed_eof():
                self.requests.append(event)
                if isinstance(event, GetRequest):
                    conn.sendall(format_get_response(self.snapshot))
                elif isinstance(event, SetRequest):
                    conn.sendall(format_errno(self.set_errno))
                elif event.reply:
                    conn.sendall(format_errno(event.errno))

    def wg(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [WG, *[a.replace("IFACE", self.name) for a in args]],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=20,
            env={**os.environ, "WG_HIDE_KEYS": "never"},
        )

    def close(self) -> None:
        self.stopping = True
        self.thread.join(timeout=5)
        self.listener.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


@pytest.fixture
def device():
    need_wg_as_root()
    fake = FakeDevice()
    try:
        yield fake
    finally:
        fake.close()


def b64(key: bytes) -> str:
    return keys.encode(key)


def test_real_wg_set(device, tmp_path):
    psk = tmp_path / "psk"
    psk.write_text(b64(K3) + "\n")
    result = device.wg(
        "set", "IFACE", "listen-port", "4000", "fwmark", "0x10", "peer", b64(K1),
        "endpoint", "[fd00::7]:51820", "allowed-ips", "10.0.0.0/8,fd00::1/64",
        "persistent-keepalive", "25", "preshared-key", str(psk),
        "peer", b64(K2), "remove",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    sets = [r for r in device.requests if isinstance(r, SetRequest)]
    assert sets == [
        SetRequest(
            listen_port=4000,
            fwmark=16,
            peers=[
                PeerOp(
                    K1,
                    preshared_key=K3,
                    endpoint=ep("[fd00::7]:51820"),
                    persistent_keepalive_interval=25,
                    replace_allowed_ips=True,
                    allowed_ips=[change("10.0.0.0/8"), change("fd00::/64")],
                ),
                PeerOp(K2, remove=True),
            ],
        )
    ]


def test_real_wg_setconf_and_syncconf(device, tmp_path):
    private = keys.clamp(K1)
    conf = tmp_path / "t.conf"
    conf.write_text(
        f"[Interface]\nPrivateKey = {b64(private)}\nListenPort = 51820\n\n"
        f"[Peer]\nPublicKey = {b64(K2)}\nPresharedKey = {b64(K3)}\nEndpoint = 192.0.2.1:7\n"
        f"AllowedIPs = 10.0.0.2/32, fd00::2/128\nPersistentKeepalive = 25\n\n"
        f"[Peer]\nPublicKey = {b64(K3)}\nAllowedIPs = 10.0.0.3/32\n"
    )
    assert device.wg("setconf", "IFACE", str(conf)).returncode == 0
    peer2 = PeerOp(
        K2,
        preshared_key=K3,
        endpoint=ep("192.0.2.1:7"),
        persistent_keepalive_interval=25,
        replace_allowed_ips=True,
        allowed_ips=[change("10.0.0.2/32"), change("fd00::2/128")],
    )
    peer3 = PeerOp(K3, replace_allowed_ips=True, allowed_ips=[change("10.0.0.3/32")])
    # setconf states every device field (fwmark=0 too) and replaces all peers.
    assert device.requests == [
        SetRequest(
            private_key=private,
            listen_port=51820,
            fwmark=0,
            replace_peers=True,
            peers=[peer2, peer3],
        )
    ]
    # syncconf reads the device first and removes the peers the file no longer has.
    device.requests.clear()
    device.snapshot = DeviceSnapshot(
        private_key=private,
        listen_port=51820,
        peers=[PeerSnapshot(K2, allowed_ips=[net("10.0.0.2/32")]), PeerSnapshot(K1)],
    )
    result = device.wg("syncconf", "IFACE", str(conf))
    assert result.returncode == 0, result.stderr
    assert device.requests == [
        GetRequest(),
        SetRequest(
            private_key=private,
            listen_port=51820,
            fwmark=0,
            peers=[PeerOp(K1, remove=True), peer2, peer3],
        ),
    ]


def test_real_wg_reports_our_errno(device):
    device.set_errno = EINVAL
    result = device.wg("set", "IFACE", "listen-port", "1")
    assert result.returncode == 1
    assert "Invalid argument" in result.stderr


def test_real_wg_show_parses_our_get_response(device):
    private = keys.clamp(K1)
    device.snapshot = DeviceSnapshot(
        private_key=private,
        listen_port=51820,
        fwmark=0x2A,
        peers=[
            PeerSnapshot(
                K2,
                preshared_key=K3,
                endpoint=ep("[2001:db8::1]:443"),
                last_handshake_time_sec=1_700_000_000,
                last_handshake_time_nsec=999,
                tx_bytes=1234,
                rx_bytes=2**40,
                persistent_keepalive_interval=25,
                allowed_ips=[net("10.0.0.2/32"), net("fd00::/64"), net("0.0.0.0/0")],
            ),
            PeerSnapshot(K3, endpoint=ep("198.51.100.9:51820")),
        ],
    )
    result = device.wg("show", "IFACE", "dump")
    assert result.returncode == 0, result.stderr
    iface, peer2, peer3 = (line.split("\t") for line in result.stdout.splitlines())
    assert iface == [b64(private), keys.pubkey(b64(private)), "51820", "0x2a"]
    assert peer2 == [
        b64(K2), b64(K3), "[2001:db8::1]:443", "10.0.0.2/32,fd00::/64,0.0.0.0/0",
        "1700000000", str(2**40), "1234", "25",
    ]  # fmt: skip
    assert peer3 == [b64(K3), "(none)", "198.51.100.9:51820", "(none)", "0", "0", "0", "off"]
    assert [r for r in device.requests if not isinstance(r, GetRequest)] == []


@settings(max_examples=25, deadline=None)
@given(st.lists(st.builds(PeerSnapshot, key32, allowed_ips=st.lists(networks, max_size=3)),
                max_size=3, unique_by=lambda p: p.public_key))  # fmt: skip
def test_real_wg_show_allowed_ips(peers):
    need_wg_as_root()
    fake = FakeDevice()
    try:
        fake.snapshot = DeviceSnapshot(peers=peers)
        result = fake.wg("show", "IFACE", "allowed-ips")
    finally:
        fake.close()
    assert result.returncode == 0, result.stderr
    shown = [line.split("\t") for line in result.stdout.splitlines()]
    assert [s[0] for s in shown] == [b64(p.public_key) for p in peers]
    for row, peer in zip(shown, peers, strict=True):
        listed = [] if row[1] == "(none)" else [net(text) for text in row[1].split(" ")]
        assert listed == peer.allowed_ips
