"""Config model figures: parse + validate a 10,000-peer file; add one peer losslessly and write.

Goals (issue #2): parse < 1 s; add + write < 100 ms. Prints the median of several runs.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import statistics
import tempfile
import time

from tether import keys
from tether.config import ConfigFile, store
from tether.config.model import Peer

PEERS = 10_000
RUNS = 7


def make_file(n: int) -> str:
    lines = [
        "# benchmark device",
        "[Interface]",
        f"PrivateKey = {keys.genkey()}",
        "ListenPort = 51820",
        "Address = 10.64.0.1/10, fd64::1/64",
        "",
    ]
    for i in range(n):
        pub = hashlib.sha256(b"%d" % i).digest()
        lines += [
            f"# peer {i}",
            "[Peer]",
            f"PublicKey = {keys.encode(pub)}",
            f"AllowedIPs = 10.{64 + i // 65536}.{i // 256 % 256}.{i % 256}/32, fd64::{i + 2:x}/128",
            "",
        ]
    return "\n".join(lines)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    text = make_file(PEERS)
    data = text.encode()
    parse_times = [timed(lambda: ConfigFile.parse_bytes(data, "bench.conf")) for _ in range(RUNS)]

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.conf")
        with open(path, "wb") as f:
            f.write(data)
        cache = store.ParseCache()
        store.edit(path, lambda c: None, cache=cache)  # the daemon/API has parsed it once
        warm_times, cold_times = [], []
        for i in range(RUNS):
            new = Peer(
                keys.decode(keys.pubkey(keys.genkey())),
                allowed_ips=[ipaddress.ip_network(f"10.127.0.{i + 1}/32")],
            )

            # the API/daemon path: the parse is cached; the file is re-read and compared under
            # the lock, the peer appended and the whole text written atomically
            warm_times.append(
                timed(
                    lambda new=new: store.edit(
                        path, lambda c, new=new: c.add_peer(new), cache=cache
                    )
                )
            )
        for _ in range(RUNS):
            other = Peer(keys.decode(keys.pubkey(keys.genkey())))
            cold_times.append(
                timed(lambda other=other: store.edit(path, lambda c: c.add_peer(other)))
            )
        assert len(store.load(path).config.peers) == PEERS + 2 * RUNS

    print(f"config: {PEERS} peers, {len(data) / 1e6:.1f} MB file, median of {RUNS} runs")
    print(
        f"  parse + validate               {statistics.median(parse_times) * 1e3:8.1f} ms"
        "   (goal < 1000 ms)"
    )
    print(
        f"  add peer + atomic write        {statistics.median(warm_times) * 1e3:8.1f} ms"
        "   (goal < 100 ms; parse cached, file re-read)"
    )
    print(
        f"  read + parse + add + write     {statistics.median(cold_times) * 1e3:8.1f} ms"
        "   (from disk, under the lock)"
    )


if __name__ == "__main__":
    main()
