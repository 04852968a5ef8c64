"""The stand-in for the Internet, run inside the test's `inet` namespace.

    python inet_servers.py DIR READY_FILE

Serves, on every address of the namespace (dual stack):
  tcp/8080  HTTP: GET /<file> from DIR; GET /whoami answers the client's address (who the
            Internet sees); PUT answers the sha256 of the body it received
  tcp/7007  echo
  udp/7007  echo (any size up to 65507)
  udp/7012  whoami: answers any datagram with the sender's address
  udp/5353  a DNS-style responder: answers any A/AAAA query with 192.0.2.53 / 2001:db8::53
  udp/7009  a stream: any datagram starts 100 datagrams a second back to its sender, for 60 s
            whether anyone listens or not (at most 64 streams at once)
  tcp/7010  a sink: accepts and holds connections (up to 30,000), never reads or writes, from
            one thread (held connections cost no thread here)
  tcp/7011  one line and close: accepts, writes "hello\n", closes (the server closes first,
            as HTTP/1.0 servers do), from one thread, for connection churn
Writes READY_FILE once everything listens. Stops on SIGTERM.
"""

from __future__ import annotations

import hashlib
import http.server
import resource
import selectors
import socket
import socketserver
import struct
import sys
import threading
import time
from pathlib import Path

STREAM_SECONDS, STREAM_RATE, MAX_STREAMS = 60, 100, 64


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

        def do_GET(self):
            if self.path != "/whoami":
                return super().do_GET()
            host = self.client_address[0].removeprefix("::ffff:")
            body = f"{host}\n".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return None

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
    """`answer(data, addr)`: the reply, or None for none."""
    while True:
        data, addr = sock.recvfrom(65535)
        reply = answer(data, addr)
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


def udp_stream(sock: socket.socket) -> None:
    streams = threading.BoundedSemaphore(MAX_STREAMS)

    def stream(addr) -> None:
        try:
            for seq in range(STREAM_SECONDS * STREAM_RATE):
                sock.sendto(b"stream %d " % seq + bytes(200), addr)
                time.sleep(1 / STREAM_RATE)
        except OSError:
            pass
        finally:
            streams.release()

    while True:
        _, addr = sock.recvfrom(65535)
        if streams.acquire(blocking=False):
            threading.Thread(target=stream, args=(addr,), daemon=True).start()


def tcp_listener(port: int, backlog: int) -> socket.socket:
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port))
    s.listen(backlog)
    return s


def sink(listener: socket.socket) -> None:
    listener.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    held: list[socket.socket] = []
    while True:
        sel.select()
        while len(held) < 30_000:
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                break
            except OSError:  # out of descriptors: the connection waits in the backlog
                break
            held.append(conn)


def hello_and_close(listener: socket.socket) -> None:
    listener.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    while True:
        sel.select()
        for _ in range(256):
            try:
                conn, _ = listener.accept()
            except BlockingIOError:
                break
            try:
                conn.send(b"hello\n")
            except OSError:
                pass
            conn.close()


def udp_socket(port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    return s


def main() -> None:
    root, ready = Path(sys.argv[1]), Path(sys.argv[2])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 40_000)), hard))
    servers = [Dual(("::", 8080), http_handler(root)), Dual(("::", 7007), Echo)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def whoami(_data, addr):
        return addr[0].removeprefix("::ffff:").encode()

    answers = ((7007, lambda d, _a: d), (5353, lambda d, _a: dns_answer(d)), (7012, whoami))
    for port, answer in answers:
        threading.Thread(target=udp_loop, args=(udp_socket(port), answer), daemon=True).start()
    threading.Thread(target=udp_stream, args=(udp_socket(7009),), daemon=True).start()
    threading.Thread(target=sink, args=(tcp_listener(7010, 4096),), daemon=True).start()
    churn = tcp_listener(7011, 4096)
    threading.Thread(target=hello_and_close, args=(churn,), daemon=True).start()
    ready.write_text("ok\n")
    threading.Event().wait()


if __name__ == "__main__":
    main()
