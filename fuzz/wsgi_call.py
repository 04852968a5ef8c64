"""Calling a WSGI app in process, for the HTTP fuzz targets (fuzz_api, fuzz_invites): the environ
a server would build for a request, and what the app answers. Not a target itself."""

from __future__ import annotations

import io
import sys


def call(
    app, method: str, path: str, query: str, remote: str, body: bytes, headers: dict
) -> tuple[int, dict, bytes]:
    """(status, headers, body) of `app`'s answer; `headers` are environ keys (HTTP_...,
    CONTENT_TYPE) as a server sets them."""
    env = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_NAME": "fuzz",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": remote,
        "CONTENT_LENGTH": str(len(body)) if body else "",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.url_scheme": "http",
        "wsgi.version": (1, 0),
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    env.update(headers)
    got = {}

    def start_response(status, hdrs, exc_info=None):
        got["status"] = int(status.split()[0])
        got["headers"] = dict(hdrs)

    out = b"".join(app(env, start_response))
    return got["status"], got["headers"], out
