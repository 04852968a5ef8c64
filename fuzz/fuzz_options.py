"""Fuzz target: the command line's option texts that reach parsers of our own.

- `--api-listen HOST:PORT` (`run`, `up`, `demo`; the original's `--api_url`): any text either
  parses to a host the server can bind (an IP literal or `*`) and a port 0-65535, or raises
  ValueError with a one-line message;
- `<device>.env` (tether/cli/devenv.py, what `add --ipv4` writes and every command's option
  lookup reads): any bytes in the file read without an exception, and a value written with
  `update` reads back exactly, with the file's other lines kept, or is refused with ValueError
  before anything is written.
Run: `make fuzz TARGET=options SECONDS=300` (see fuzz/README.md).
"""

from __future__ import annotations

import ipaddress
import os
import sys
import tempfile

from tether.api.http.server import parse_listen
from tether.cli import devenv

_dir = tempfile.mkdtemp(prefix="fuzz-options-")
_file = os.path.join(_dir, "fz0.env")


def _check_listen(text: str) -> None:
    try:
        host, port = parse_listen(text)
    except ValueError as e:
        if "\n" in str(e):
            raise AssertionError(f"a multi-line error: {e!r}") from None
        return
    if not 0 <= port <= 65535:
        raise AssertionError(f"{text!r}: port {port}")
    if host != "*":
        ipaddress.ip_address(host)  # raises (a crash) for anything the server could not bind


def _check_env_file(existing: bytes, name: str, value: str) -> None:
    with open(_file, "wb") as f:
        f.write(existing)
    before = devenv.read(_dir, "fz0")  # must not raise, whatever the bytes
    variable = "TETHERCTL_" + name
    try:
        devenv.update(_dir, "fz0", {variable: value})
    except ValueError:
        with open(_file, "rb") as f:
            if f.read() != existing:
                raise AssertionError("a refused update changed the file") from None
        return
    after = devenv.read(_dir, "fz0")
    if after.get(variable) != value:
        raise AssertionError(f"{value!r} read back as {after.get(variable)!r}")
    for key, old in before.items():
        if key != variable and after.get(key) != old:
            raise AssertionError(f"{key} changed from {old!r} to {after.get(key)!r}")


def TestOneInput(data: bytes) -> None:
    listen, _, rest = data.partition(b"\0")
    _check_listen(listen.decode("utf-8", "replace"))
    existing, _, rest = rest.partition(b"\0")
    name, _, value = rest.partition(b"\0")
    _check_env_file(
        existing,
        name.decode("ascii", "replace") or "PUBLIC_IPV4",
        value.decode("utf-8", "surrogateescape"),
    )


def main() -> None:
    import atheris

    atheris.instrument_all()
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
