"""The stand-in for the Internet, run inside the test's `inet` namespace.

    python inet_servers.py DIR READY_FILE

Serves, on every address of the namespace (dual stack):
  tcp/8080  HTTP: GET /<file> from DIR; PUT answers the sha256 of the body it received
  tcp/7007  echo
  udp/7007  echo (any size up to 65507)
  udp/5353  a DNS-style responder: answers any A/AAAA query with 192.0.2.53 / 2001:db8::53
Writes READY_FILE once everything listens. Stops on SIGTERM.
"""

from __future__ import annotations

import hashlib
import http.server
import socket
import socketserver
import struct
import sys
import threading
from pathlib import Path


class Dual(socketserver.ThreadingMixIn, socketserver.TCPServer):
    address_family = socket.AF_INET6
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 1024

    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def http_handler(root: Path):
    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *args):
            pass

        def do_PUT(self):
            length = int(self.headers.get("Content-Length", "0"))
            digest = hashlib.sha256()
            left = length
            while left:
                chunk = self.rfile.read(min(left, 1 << 16))
                if not chunk:
                    break
                digest.update(chunk)
                left -= len(chunk)
            body = f"{digest.hexdigest()} {length - left}\n".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while True:
            data = self.request.recv(65536)
            if not data:
                return
            self.request.sendall(data)


def udp_loop(sock: socket.socket, answer):
    while True:
        data, addr = sock.recvfrom(65535)
        reply = answer(data)
        if reply is not None:
            sock.sendto(reply, addr)


def dns_answer(query: bytes) -> bytes | None:
    if len(query) < 12:
        return None
    qid, _flags, qd = struct.unpack("!HHH", query[:6])
    i = 12
    while i < len(query) and query[i]:
        i += 1 + query[i]
    qtype = struct.unpack("!H", query[i + 1 : i + 3])[0]
    question = query[12 : i + 5]
    if qtype == 28:
        rdata = socket.inet_pton(socket.AF_INET6, "2001:db8::53")
    else:
        rdata = socket.inet_aton("192.0.2.53")
    answer = b"\xc0\x0c" + struct.pack("!HHIH", qtype, 1, 60, len(rdata)) + rdata
    return struct.pack("!HHHHHH", qid, 0x8180, 1, 1, 0, 0) + question + answer


def udp_socket(port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    return s


def main() -> None:
    root, ready = Path(sys.argv[1]), Path(sys.argv[2])
    servers = [Dual(("::", 8080), http_handler(root)), Dual(("::", 7007), Echo)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    for port, answer in ((7007, lambda d: d), (5353, dns_answer)):
        threading.Thread(target=udp_loop, args=(udp_socket(port), answer), daemon=True).start()
    ready.write_text("ok\n")
    threading.Event().wait()


if __name__ == "__main__":
    main()
