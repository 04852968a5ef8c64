"""Concurrent HTTP calls from inside a test's namespace (where the API listens on loopback).

    python api_calls.py METHOD URL [METHOD URL ...]

Runs every call at once (one thread each, at most 64) and prints a JSON list of
[status, body, seconds] in the order given; a connection failure is status 0. Call i comes from
loopback address 127.0.1.(i + 1), so that the API's per-client connection cap (which protects it
from one client holding every connection) counts each call as its own client.
"""

from __future__ import annotations

import http.client
import json
import sys
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor


def one(i: int, method: str, url: str) -> list:
    t0 = time.monotonic()
    u = urllib.parse.urlsplit(url)
    source = (f"127.0.1.{i % 250 + 1}", 0) if u.hostname == "127.0.0.1" else None
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30, source_address=source)
    try:
        conn.request(method, u.path + (f"?{u.query}" if u.query else ""))
        r = conn.getresponse()
        status, body = r.status, r.read().decode()
    except OSError as e:
        status, body = 0, str(e)
    finally:
        conn.close()
    return [status, body, time.monotonic() - t0]


def main() -> int:
    args = sys.argv[1:]
    calls = list(zip(args[::2], args[1::2], strict=True))
    with ThreadPoolExecutor(max_workers=min(64, max(1, len(calls)))) as pool:
        results = list(pool.map(lambda ic: one(ic[0], *ic[1]), enumerate(calls)))
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
