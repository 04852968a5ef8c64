"""A small etcd v3 client for the fleet: range, transaction and watch over etcd's JSON gateway.

The connection (a requests session with the TLS CA and client certificate, the `/v3/` URLs, the
mapping of HTTP failures to exceptions) is etcd3gw's `Etcd3Client`, one per member URL. What
etcd3gw lacks is added here, small: failover (a request goes to the member that answered last,
then to the others in turn), username/password authentication (the token that
`/v3/auth/authenticate` returns, sent in the `Authorization` header and fetched again when etcd
says it expired), paged ranges pinned to one revision, and a watch stream that reports what the
fleet needs to stay consistent: every response's header revision and compaction.

Every call has a short timeout (`EtcdOptions.timeout`, 2 s by default per member) so that an API
write while etcd is unreachable fails fast with `EtcdUnavailable` (the API answers 503). The
password is never in an option's value, a log line or a repr.
"""

from __future__ import annotations

import base64
import json
import logging
import socket
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import requests
from etcd3gw import exceptions as gw_errors
from etcd3gw.client import Etcd3Client

log = logging.getLogger("tether.fleet")

DEFAULT_TIMEOUT = 2.0  # seconds per member for one request
WATCH_IDLE = 30.0  # seconds without a byte after which a watch is re-established
PAGE = 1000  # keys per range request (a 10,000-peer device takes a few pages)
# Whatever is under the prefix is read, so its size is bounded here, not by trust in the
# writers: etcd allows values of 1.5 MiB (more if configured), 1000 of which would be GBs.
RANGE_BYTES = 8 << 20  # bytes of one range response at most: a page is made smaller to fit
WATCH_LINE = 8 << 20  # bytes of one watch response at most: beyond, resynchronize by ranges
MAX_URLS = 16


class EtcdUnavailable(Exception):
    """No etcd member answered (or every one refused); the message is one line without secrets."""


class EtcdUnauthenticated(EtcdUnavailable):
    """etcd cancelled a watch because it no longer accepts the token: log in again."""


class ResponseTooLarge(Exception):
    """A response went over the byte limit its request was made with (nothing was kept)."""


class WatchTooLarge(Exception):
    """A watch response went over WATCH_LINE (a catch-up over large values): resynchronize by
    ranges, whose pages are bounded, and watch again from there."""

    def __init__(self) -> None:
        super().__init__(f"a watch response over {WATCH_LINE} bytes")


class WatchCompacted(Exception):
    """The revision a watch was to start from has been compacted away: resynchronize."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision compacted (oldest kept: {compact_revision})")
        self.compact_revision = compact_revision


def b64(data: bytes) -> str:
    """Bytes as the JSON gateway carries them."""
    return base64.b64encode(data).decode("ascii")


def unb64(text: str | None) -> bytes:
    """The bytes of a gateway field (absent: empty, as the gateway omits defaults)."""
    return base64.b64decode(text or "")


def prefix_end(prefix: bytes) -> bytes:
    """The range end that makes a range "every key starting with `prefix`" (etcd's rule)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


# -- transaction parts -------------------------------------------------------------------------


def absent(key: bytes) -> dict:
    """Compare: the key does not exist (create-only)."""
    return {"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}


def modified_at(key: bytes, revision: int) -> dict:
    """Compare: the key was last modified at `revision` (0: it does not exist)."""
    return {"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(revision)}


def put(key: bytes, value: bytes) -> dict:
    """Operation: write `key`."""
    return {"request_put": {"key": b64(key), "value": b64(value)}}


def delete(key: bytes) -> dict:
    """Operation: delete `key`."""
    return {"request_delete_range": {"key": b64(key)}}


# -- options -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class EtcdOptions:
    """How to reach etcd: member URLs, TLS files, a user and password (checked at startup)."""

    urls: tuple[str, ...]
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    timeout: float = DEFAULT_TIMEOUT

    @classmethod
    def parse_urls(cls, text: str) -> tuple[str, ...]:
        """`--fleet-etcd URL[,URL...]`: http(s)://host:port of each member; ValueError."""
        urls = []
        for part in (text or "").split(","):
            part = part.strip()
            if not part:
                continue
            try:
                u = urllib.parse.urlsplit(part)
                port = u.port
            except ValueError as e:
                raise ValueError(f"--fleet-etcd: {part!r}: {e}") from None
            if u.scheme not in ("http", "https") or not u.hostname or port is None:
                raise ValueError(f"--fleet-etcd: {part!r}: expected http(s)://HOST:PORT")
            if u.path not in ("", "/") or u.query or u.fragment or u.username or u.password:
                raise ValueError(
                    f"--fleet-etcd: {part!r}: only scheme, host and port (credentials go in "
                    "--fleet-etcd-user and the password file)"
                )
            urls.append(f"{u.scheme}://{u.netloc}")
        if not urls:
            raise ValueError("--fleet-etcd: expected at least one http(s)://HOST:PORT")
        if len(urls) > MAX_URLS:
            raise ValueError(f"--fleet-etcd: at most {MAX_URLS} members")
        return tuple(urls)


# -- the client ---------------------------------------------------------------------------------


class Etcd:
    """Requests to whichever member answers (see the module docstring). Thread-safe."""

    def __init__(self, options: EtcdOptions) -> None:
        self.options = options
        self._members = []
        for url in options.urls:
            u = urllib.parse.urlsplit(url)
            client = Etcd3Client(
                host=u.hostname,
                port=u.port,
                protocol=u.scheme,
                ca_cert=options.cacert,
                cert_key=options.key,
                cert_cert=options.cert,
                timeout=options.timeout,
                api_path="/v3/",
            )
            # no HTTP proxy, CA bundle or netrc from the environment: etcd is reached directly,
            # trusting --fleet-etcd-cacert (requests would let REQUESTS_CA_BUNDLE override it)
            client.session.trust_env = False
            self._members.append(client)
        self._current = 0
        self._lock = threading.Lock()
        self._token: str | None = None

    def __repr__(self) -> str:
        return f"Etcd({', '.join(self.options.urls)})"

    def _order(self) -> list[int]:
        with self._lock:
            first = self._current
        n = len(self._members)
        return [(first + i) % n for i in range(n)]

    def _login(self, client: Etcd3Client) -> None:
        """Fetch a token before the first request of a user (none without a user)."""
        if self.options.user is not None and self._token is None:
            self._authenticate(client)

    def _authenticate(self, client: Etcd3Client) -> None:
        if self.options.user is None:
            return
        body = {"name": self.options.user, "password": self.options.password or ""}
        try:
            # without the old token: etcd refuses to authenticate a request whose token it no
            # longer knows (simple tokens live in its memory and die with a restart)
            answer = client.post(
                client.get_url("/auth/authenticate"), json=body, headers={"Authorization": None}
            )
        except gw_errors.Etcd3Exception as e:
            raise EtcdUnavailable(f"etcd refused user {self.options.user}: {_brief(e)}") from None
        self._token = answer.get("token")
        for member in self._members:
            member.session.headers["Authorization"] = self._token or ""

    def _forget_token(self) -> None:
        """etcd no longer accepts our token (it restarted, or the token expired): the next
        request logs in again."""
        self._token = None
        for member in self._members:
            member.session.headers.pop("Authorization", None)

    def call(self, path: str, body: dict, max_bytes: int | None = None) -> dict:
        """POST `body` to `/v3/<path>` on the first member that answers; EtcdUnavailable, or
        ResponseTooLarge when the answer is over `max_bytes`."""
        problems = []
        for i in self._order():
            client = self._members[i]
            try:
                self._login(client)
                try:
                    answer = self._post(client, path, body, max_bytes)
                except gw_errors.Etcd3Exception as e:
                    if self.options.user is None or "token" not in str(e.detail_text).lower():
                        raise
                    self._authenticate(client)  # the token expired: once more with a new one
                    answer = self._post(client, path, body, max_bytes)
            except (gw_errors.ConnectionFailedError, gw_errors.ConnectionTimeoutError) as e:
                problems.append(f"{self.options.urls[i]}: {_brief(e)}")
                continue
            except gw_errors.Etcd3Exception as e:
                problems.append(f"{self.options.urls[i]}: {_brief(e)}")
                continue
            with self._lock:
                self._current = i
            return answer
        raise EtcdUnavailable("etcd unreachable (" + "; ".join(problems) + ")")

    def _post(self, client: Etcd3Client, path: str, body: dict, max_bytes: int | None) -> dict:
        if max_bytes is None:
            return client.post(client.get_url(path), json=body)
        try:
            response = client.session.post(
                client.get_url(path), json=body, timeout=self.options.timeout, stream=True
            )
            with response:
                if response.status_code != 200:
                    raise gw_errors.Etcd3Exception(response.text[:1000], response.reason)
                parts, size = [], 0
                for chunk in response.iter_content(1 << 16):
                    size += len(chunk)
                    if size > max_bytes:
                        raise ResponseTooLarge(f"{path}: over {max_bytes} bytes")
                    parts.append(chunk)
        except requests.exceptions.Timeout as e:
            raise gw_errors.ConnectionTimeoutError(str(e)) from None
        except requests.RequestException as e:
            raise gw_errors.ConnectionFailedError(str(e)) from None
        return json.loads(b"".join(parts))

    def range_prefix(
        self, prefix: bytes, max_value: int = 1 << 20
    ) -> tuple[int, list[tuple[bytes, bytes, int]]]:
        """Every key under `prefix` at one revision, in pages: (revision, [(key, value,
        mod_revision)]). A value over `max_value` bytes is cut to `max_value + 1` (enough for
        the reader to refuse it), and a page over RANGE_BYTES is asked again smaller, down to
        one key, whose value is then left out (keys only: `max_value + 1` spaces stand for it),
        so memory stays bounded whatever was written under the prefix."""
        end = prefix_end(prefix)
        start, revision, out, limit = prefix, 0, [], PAGE
        while True:
            body = {"key": b64(start), "range_end": b64(end), "limit": str(limit)}
            if revision:
                body["revision"] = str(revision)
            try:
                answer = self.call("/kv/range", body, RANGE_BYTES)
                limit = min(PAGE, limit * 2)
            except ResponseTooLarge:
                if limit > 1:
                    limit = max(1, limit // 8)
                    continue
                answer = self.call("/kv/range", {**body, "keys_only": True})
                for kv in answer.get("kvs", []):
                    kv["value"] = b64(b" " * (max_value + 1))
            revision = revision or int(answer["header"]["revision"])
            kvs = answer.get("kvs", [])
            for kv in kvs:
                value = unb64(kv.get("value"))
                if len(value) > max_value:
                    value = value[: max_value + 1]
                out.append((unb64(kv["key"]), value, int(kv["mod_revision"])))
            if not answer.get("more") or not kvs:
                return revision, out
            start = out[-1][0] + b"\0"

    def txn(self, compare: list[dict], success: list[dict]) -> tuple[bool, int]:
        """One transaction: (whether every comparison held and `success` was applied, the
        revision of the store after it)."""
        answer = self.call("/kv/txn", {"compare": compare, "success": success})
        return bool(answer.get("succeeded")), int(answer["header"]["revision"])

    def watch(
        self, prefix: bytes, start_revision: int, started: Callable[[WatchStream], None]
    ) -> Iterator[tuple[int, list[tuple[str, bytes, bytes, int]]]]:
        """Watch every key under `prefix` from `start_revision`: yields (header revision,
        [(PUT|DELETE, key, value, mod_revision)]) per response (0 for the one that confirms the
        watch was created). Raises WatchCompacted,
        EtcdUnavailable (no member), or ends when the stream ends or is stopped (`started`
        gets the stream first, so another thread can `stop()` it)."""
        body = {
            "create_request": {
                "key": b64(prefix),
                "range_end": b64(prefix_end(prefix)),
                "start_revision": str(start_revision),
                "progress_notify": True,
            }
        }
        response, member = None, None
        problems = []
        for i in self._order():
            client = self._members[i]
            try:
                self._login(client)
                response = client.session.post(
                    client.get_url("/watch"),
                    json=body,
                    stream=True,
                    timeout=(self.options.timeout, WATCH_IDLE),
                )
            except requests.RequestException as e:
                problems.append(f"{self.options.urls[i]}: {_brief(e)}")
                continue
            if response.status_code != 200:
                problems.append(f"{self.options.urls[i]}: HTTP {response.status_code}")
                if response.status_code == 401:
                    self._forget_token()
                response.close()
                response = None
                continue
            member = i
            break
        if response is None:
            raise EtcdUnavailable("etcd unreachable (" + "; ".join(problems) + ")")
        with self._lock:
            self._current = member
        stream = WatchStream(response)
        started(stream)
        try:
            yield from stream.responses()
        except EtcdUnauthenticated:
            self._forget_token()
            raise


class WatchStream:
    """One open watch: newline-separated JSON responses, read as they arrive."""

    def __init__(self, response: requests.Response) -> None:
        self.response = response
        self.stopped = False

    def stop(self) -> None:
        """End the stream from another thread (the reader sees its end)."""
        self.stopped = True
        try:
            fd = self.response.raw._fp.fileno()
            s = socket.fromfd(fd, socket.AF_INET, socket.SOCK_STREAM)
            s.shutdown(socket.SHUT_RDWR)
            s.close()
        except (AttributeError, OSError, ValueError):
            pass
        self.response.close()

    def responses(self) -> Iterator[tuple[int, list[tuple[str, bytes, bytes, int]]]]:
        """The decoded responses until the stream ends (see Etcd.watch)."""
        buffer = bytearray()
        try:
            for chunk in self.response.iter_content(chunk_size=1 << 16):
                buffer += chunk
                while (end := buffer.find(b"\n")) >= 0:
                    line = bytes(buffer[:end])
                    del buffer[: end + 1]
                    if line.strip():
                        yield self._decode(line)
                if len(buffer) > WATCH_LINE:
                    raise WatchTooLarge()
        except (requests.RequestException, OSError, AttributeError, ValueError) as e:
            if self.stopped:
                pass
            elif "timed out" in str(e):
                # a quiet prefix: nothing came for WATCH_IDLE (etcd's progress notices are ten
                # minutes apart); the watch is made again from the same revision, nothing lost,
                # and a dead member behind a silent connection is noticed within WATCH_IDLE
                log.debug("etcd watch idle for %s s: watching again", WATCH_IDLE)
            else:
                log.info("etcd watch interrupted: %s", _brief(e))
        finally:
            self.response.close()

    @staticmethod
    def _decode(line: bytes) -> tuple[int, list[tuple[str, bytes, bytes, int]]]:
        """One response; WatchCompacted, or EtcdUnavailable for a cancel, an error or anything
        that is not a watch response (the watcher reconnects: it must not die of a bad line)."""
        try:
            return WatchStream._parse(json.loads(line))
        except (ValueError, TypeError, AttributeError, KeyError) as e:
            raise EtcdUnavailable(
                f"etcd watch: a response that does not parse ({_brief(e)})"
            ) from None

    @staticmethod
    def _parse(doc) -> tuple[int, list[tuple[str, bytes, bytes, int]]]:
        if "error" in doc:
            error = doc["error"]
            code = error.get("http_code") if isinstance(error, dict) else None
            lost = EtcdUnauthenticated if code == 401 else EtcdUnavailable
            raise lost(f"etcd watch failed: {_brief(error)}")
        result = doc.get("result", {})
        compact = int(result.get("compact_revision") or 0)
        if compact:
            raise WatchCompacted(compact)
        if result.get("canceled"):
            reason = str(result.get("cancel_reason", ""))
            lost = "unauthenticated" in reason.lower() or "auth token" in reason.lower()
            error = EtcdUnauthenticated if lost else EtcdUnavailable
            raise error(f"etcd cancelled the watch: {_brief(reason)}")
        # the response that confirms the watch carries the current revision, not a promise
        # that everything before it was sent: it reports none (see Mirror.apply)
        created = result.get("created")
        revision = 0 if created else int(result.get("header", {}).get("revision") or 0)
        events = []
        for ev in result.get("events", []):
            kv = ev.get("kv", {})
            events.append(
                (
                    ev.get("type", "PUT"),
                    unb64(kv.get("key")),
                    unb64(kv.get("value")),
                    int(kv.get("mod_revision") or 0),
                )
            )
        return revision, events


def _brief(error) -> str:
    """One line of an error (etcd's own words when it gave some), short enough for a log."""
    detail = getattr(error, "detail_text", None)
    text = " ".join(f"{error} {detail or ''}".split())
    return text[:200]
