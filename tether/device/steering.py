"""Steering a device's datagrams over several worker processes (docs/workers.md).

One Python process runs on one core. To use more, N worker processes each bind a UDP socket to
the device's port with SO_REUSEPORT (one reuseport group, socket k = worker k, in the order they
joined) and the group gets a classic BPF program (SO_ATTACH_REUSEPORT_CBPF) whose return value is
the index of the socket that receives a datagram. For a reuseport program the packet data starts
at the UDP payload, i.e. at the WireGuard message (the kernel pulls the UDP header first).

The program reads the message type from the first little-endian word (type byte + three zero
reserved bytes) and:
- transport data (4) and cookie replies (3) carry our receiver index at bytes 4..7, handshake
  responses (2) at bytes 8..11: they go to worker `index % N`. Each worker allocates its session
  indices from its own residue class (`IndexTable(..., residue=(k, N))`), so the answer to a
  handshake and every data message of a session reach the worker that holds the keys.
- anything else (initiations, garbage, datagrams too short to hold an index) returns an
  out-of-range socket index, on which the kernel falls back to its own reuseport hash of the
  4-tuple (udp_ehashfn): one peer endpoint always reaches the same worker, different endpoints
  spread over the workers. An initiation thus picks the worker that will own the session.

`worker_for` is the same rule in Python, for tests and for the notes: the kernel decides, this
only predicts what the kernel decides (None where the kernel hashes).

`WorkerRole` is what a Device needs to be worker k of n: its member of the group, and
optionally peer ownership (the core then forwards initiations of peers another worker owns
and starts handshakes only for its own; `owner_by_key` is the stateless rule).
"""

from __future__ import annotations

import ctypes
import hashlib
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

from tether.device import udp

__all__ = [
    "HASH_FALLBACK",
    "SO_ATTACH_REUSEPORT_CBPF",
    "WorkerRole",
    "attach",
    "owner_by_key",
    "program",
    "reuseport_group",
    "worker_for",
]

SO_ATTACH_REUSEPORT_CBPF = 51  # asm-generic/socket.h; not in Python's socket module
MAX_WORKERS = 64  # a sanity bound; the machine decides the useful number (its cores)
HASH_FALLBACK = 0xFFFFFFFF  # any index >= the group's size: the kernel's hash picks the socket

# classic BPF opcodes (linux/filter.h, linux/bpf_common.h)
_LD_W_ABS = 0x00 | 0x00 | 0x20
_LD_B_ABS = 0x00 | 0x10 | 0x20
_LD_W_LEN = 0x00 | 0x00 | 0x80
_ALU_LSH_K = 0x04 | 0x60
_ALU_OR_X = 0x04 | 0x40 | 0x08
_ALU_MOD_K = 0x04 | 0x90
_JEQ_K = 0x05 | 0x10
_JGE_K = 0x05 | 0x30
_RET_K = 0x06
_RET_A = 0x06 | 0x10
_TAX = 0x07

# The first word loaded with BPF_W is big-endian: type byte first, reserved zeros after.
_TYPE_WORD = {2: 0x02000000, 3: 0x03000000, 4: 0x04000000}
_MIN_LEN = 12  # enough for a response's receiver at 8..11 (every real message is longer)
_INSN = struct.Struct("=HBBI")


def _index_mod(offset: int, workers: int) -> list[tuple[int, int, int, int]]:
    """A = (little-endian u32 at `offset`) % workers; return A. cBPF loads are big-endian and
    have no byte swap, so the word is assembled from its four bytes through X."""
    code = [(_LD_B_ABS, 0, 0, offset + 3)]
    for byte in (offset + 2, offset + 1, offset):
        code += [(_ALU_LSH_K, 0, 0, 8), (_TAX, 0, 0, 0), (_LD_B_ABS, 0, 0, byte)]
        code += [(_ALU_OR_X, 0, 0, 0)]
    return code + [(_ALU_MOD_K, 0, 0, workers), (_RET_A, 0, 0, 0)]


def program(workers: int) -> list[tuple[int, int, int, int]]:
    """The steering program for a group of `workers` sockets, as (code, jt, jf, k) tuples."""
    if not 1 <= workers <= MAX_WORKERS:
        raise ValueError(f"workers must be 1..{MAX_WORKERS}, not {workers}")
    at4 = _index_mod(4, workers)
    # layout: 0 len check, 1 jump, 2 type word, 3-5 type jumps, 6 fallback, 7.. at4, then at8
    start4 = 7
    start8 = start4 + len(at4)
    head = [
        (_LD_W_LEN, 0, 0, 0),
        (_JGE_K, 0, 6 - 2, _MIN_LEN),  # too short: to the fallback at 6
        (_LD_W_ABS, 0, 0, 0),
        (_JEQ_K, start4 - 4, 0, _TYPE_WORD[4]),
        (_JEQ_K, start4 - 5, 0, _TYPE_WORD[3]),
        (_JEQ_K, start8 - 6, 0, _TYPE_WORD[2]),
        (_RET_K, 0, 0, HASH_FALLBACK),
    ]
    return head + at4 + _index_mod(8, workers)


def attach(sock: socket.socket, workers: int) -> None:
    """Attach the steering program to the reuseport group `sock` belongs to (the program is the
    group's: attaching through any member replaces it for all)."""
    code = program(workers)
    filters = ctypes.create_string_buffer(b"".join(_INSN.pack(*insn) for insn in code))
    fprog = struct.pack("@HP", len(code), ctypes.addressof(filters))  # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


def reuseport_group(
    port: int, workers: int, host4: str = "0.0.0.0", host6: str = "::"
) -> list[socket.socket]:
    """`workers` UDP sockets on `port` (0: a free one, shared by all) in one reuseport group,
    socket k joined k-th so the program's index k is socket k, steering attached. The caller
    hands socket k to worker k (and closes its own copies). Raises udp.BindError."""
    socks: list[socket.socket] = []
    try:
        for _ in range(workers):
            sock = udp.bind(port, host4, host6, reuseport=True)
            socks.append(sock)
            port = sock.getsockname()[1]
        attach(socks[0], workers)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def worker_for(datagram: bytes, workers: int) -> int | None:
    """The worker the program picks for `datagram` (None: the kernel's 4-tuple hash picks)."""
    if len(datagram) < _MIN_LEN:
        return None
    word = int.from_bytes(datagram[:4], "big")
    if word in (_TYPE_WORD[4], _TYPE_WORD[3]):
        return int.from_bytes(datagram[4:8], "little") % workers
    if word == _TYPE_WORD[2]:
        return int.from_bytes(datagram[8:12], "little") % workers
    return None


def owner_by_key(public_key: bytes, workers: int) -> int:
    """The worker that owns a peer under the stateless rule: a hash of its public key, which
    every worker computes alike with nothing shared."""
    return int.from_bytes(hashlib.blake2s(public_key, digest_size=4).digest(), "little") % workers


@dataclass(frozen=True)
class WorkerRole:
    """Worker `k` of `n` of one device (docs/workers.md).

    `socket(port)` returns this worker's member of the port's steered group. `owner(key)`, when
    given, names the worker that owns a peer; initiations of peers owned elsewhere go to
    `forward(owner, peer key, datagram, source)` (both or neither). Without `owner`, whichever
    worker receives a peer's initiation (the kernel's 4-tuple hash) holds its session."""

    k: int
    n: int
    socket: Callable[[int], socket.socket]
    owner: Callable[[bytes], int] | None = None
    forward: Callable[[int, bytes, bytes, tuple], None] | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.k < self.n <= MAX_WORKERS:
            raise ValueError(
                f"worker {self.k} of {self.n}: not a worker of a 1..{MAX_WORKERS} group"
            )
        if (self.owner is None) != (self.forward is None):
            raise ValueError("a worker role has both owner and forward, or neither")
