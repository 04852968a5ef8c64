"""Serving the API: waitress, in a thread of the daemon, started and stopped on demand.

Why waitress (over cheroot, gunicorn, or wsgiref):
- the API faces phones on the Internet, so slow or malicious clients are the norm. waitress reads
  requests and writes responses in one asynchronous I/O loop and hands a request to a worker
  thread only once it has arrived completely; a client trickling its headers (slowloris) or
  reading its response slowly holds a buffer, not a thread. cheroot's workers read the request
  themselves, so N slow clients can occupy N workers until their timeouts;
- it enforces limits before the app sees anything: header size, body size (413), connection
  count, idle timeouts;
- it is pure Python, has no dependencies, runs inside our process (gunicorn wants to own the
  process with its own master and signals, which the daemon already does), and is stable and
  widely deployed. wsgiref serves one request at a time and has no limits.

waitress alone still lets a few hundred half-sent requests lock everyone out until its idle
timeout; `guard.py` adds a per-client connection cap, a request deadline and eviction of the
longest-waiting connection when full, through waitress' public extension points.

TLS: waitress has none. Operators serve the API over HTTPS through a reverse proxy on the same
host (the README has an nginx server block) with `--api-trusted-proxy`, which lets the proxy's
X-Forwarded-For name the client for rate limits and caps; tests/e2e/test_api_tls_e2e.py runs
exactly that setup.

`start_api` binds synchronously (so "port in use" is an error for the caller, not a log line in
a thread) and returns a started `ApiHandle`; `ApiHandle.stop()` ends the loop from any thread,
closes every connection and joins the worker threads. The I/O loop is driven here, by the
handle's own thread, with a socket map of our own (waitress' public `wasyncore.loop`), so that
it can be stopped cleanly, which `waitress.serve()` cannot do from another thread.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.task import ThreadedTaskDispatcher

from tether.api.http.guard import DEFAULT_PER_CLIENT, DEFAULT_REQUEST_TIMEOUT, GuardedServer

log = logging.getLogger("tether.api")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9090


def parse_listen(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """`HOST:PORT`, `[V6]:PORT`, `:PORT` (every interface, as the original's `--api_url=:9090`),
    `HOST` or `PORT` → (host, port). Host names other than localhost are refused: resolving
    them would need DNS, and an API must bind where its operator said."""
    text = text.strip()
    if text.startswith("http://"):
        text = text[len("http://") :].rstrip("/")
    host, port_text = text, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{text!r}: missing ']'")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{text!r}: expected [IPv6]:PORT")
            port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif text.isdigit():
        host, port_text = "", text
    if port_text:
        if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
            raise ValueError(f"{text!r}: bad port")
        port = int(port_text)
    else:
        port = default_port
    if host == "":
        return "*", port
    if host == "localhost":
        return DEFAULT_HOST, port
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r}: the host must be an IP address, localhost or empty") from None
    return host, port


@dataclass
class ApiHandle:
    """A running API server: its address, and the way to stop it from another thread (which
    `waitress.serve()` lacks)."""

    host: str
    port: int
    _servers: list = field(repr=False)
    _map: dict = field(repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _stopping: threading.Event = field(default_factory=threading.Event, repr=False)
    # why the serving thread died (None while it serves); `on_failure(error)` is then called
    # from that thread, so a daemon can treat a dead API as fatal rather than serve without it
    failed: BaseException | None = field(default=None, repr=False)
    on_failure: Callable[[BaseException], None] | None = field(default=None, repr=False)
    _extras: list = field(default_factory=list, repr=False)  # stopped with the server

    @property
    def servers(self) -> list[GuardedServer]:
        """The listening servers, for tests and metrics that look at their counters."""
        return list(self._servers)

    @property
    def serving(self) -> bool:
        """Whether the I/O loop's thread is running."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Run the I/O loop in a daemon thread of its own (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tetherctl-api", daemon=True)
            self._thread.start()

    def stop_with_server(self, companion) -> None:
        """Have `companion.stop()` called when the server stops (a janitor thread)."""
        self._extras.append(companion)

    @property
    def url(self) -> str:
        """The address the server really listens on (the port chosen for `:0` included)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                wasyncore.loop(timeout=0.2, map=self._map, use_poll=True, count=1)
        except Exception as e:
            log.exception("API server loop failed")
            self.failed = e
            if self.on_failure is not None:
                self.on_failure(e)
        finally:
            self._servers[0].task_dispatcher.shutdown(timeout=5)
            wasyncore.close_all(self._map)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving; idempotent, callable from any thread (not from a request handler)."""
        for extra in self._extras:
            extra.stop()
        self._stopping.set()
        try:
            self._servers[0].pull_trigger()
        except OSError:
            pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)


def start_api(
    app,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    threads: int = 8,
    max_body: int = 64 * 1024,
    connection_limit: int = 256,
    per_client: int = DEFAULT_PER_CLIENT,
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
    trusted_proxies: tuple = (),
) -> ApiHandle:
    """Bind and serve `app` in a background thread; raises OSError when the address is taken.
    `per_client`: connections one client (IPv4 address, IPv6 /64) may hold; trusted proxies
    are exempt. `request_timeout`: seconds a connection may take to deliver a request."""
    # "Task queue depth is N" is logged whenever all workers are busy for a moment: normal
    # under load, and one line per request at that point.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    socket_map: dict = {}
    adj = Adjustments(
        listen=f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        threads=threads,
        ident="tetherctl",
        max_request_header_size=16 * 1024,
        max_request_body_size=max_body,
        connection_limit=connection_limit,
        channel_timeout=30,
        cleanup_interval=1,
        expose_tracebacks=False,
        # forwarded headers are handled by the app (access.client_address), which trusts a
        # list of proxy networks; waitress' own handling knows only one proxy address
        clear_untrusted_proxy_headers=False,
        asyncore_use_poll=True,
    )
    dispatcher = ThreadedTaskDispatcher()
    dispatcher.set_thread_count(adj.threads)
    servers = []
    try:
        for sockinfo in adj.listen:
            servers.append(
                GuardedServer(
                    app,
                    socket_map,
                    dispatcher=dispatcher,
                    adj=adj,
                    sockinfo=sockinfo,
                    per_client=per_client,
                    request_timeout=request_timeout,
                    exempt=trusted_proxies,
                )
            )
    except BaseException:
        dispatcher.shutdown(timeout=1)
        wasyncore.close_all(socket_map)
        raise
    listen = [(srv.effective_host, srv.effective_port) for srv in servers]
    eff_host, eff_port = listen[0][0], int(listen[0][1])
    handle = ApiHandle(eff_host, eff_port, servers, socket_map)
    handle.start()
    log.info("API listening on %s", ", ".join(f"{h}:{p}" for h, p in listen))
    return handle
