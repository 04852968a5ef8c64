"""Fuzz target: the API's per-device state file (`<device>.state.json`, tether/api/state.py).

Any bytes must either parse or raise StateError with a one-line message naming the file; what
parses must render to bytes that parse back to the same state, and a registry pointed at a file
that does not parse must refuse to update it and leave its bytes unchanged.
Run: `make fuzz TARGET=api_state SECONDS=300` (see fuzz/README.md).
"""

from __future__ import annotations

import os
import sys
import tempfile

from tether.api.registry import FileRegistry
from tether.api.state import StateError, parse, render

_dir = tempfile.mkdtemp(prefix="fuzz-state-")
_path = os.path.join(_dir, "fz0.state.json")


def TestOneInput(data: bytes) -> None:
    try:
        state = parse(data, "fz0.state.json")
    except StateError as e:
        message = str(e)
        if "\n" in message or not message.startswith("fz0.state.json"):
            raise AssertionError(f"bad error message: {message!r}") from None
        with open(_path, "wb") as f:
            f.write(data)
        try:
            FileRegistry(_path).update(lambda s: s.release(["10.0.0.1/32"], 1.0, 600, False))
        except StateError:
            pass
        else:
            raise AssertionError("a registry updated a file that does not parse") from None
        with open(_path, "rb") as f:
            if f.read() != data:
                raise AssertionError("a file that does not parse was overwritten") from None
        return
    again = parse(render(state), "fz0.state.json")
    if again != state:
        raise AssertionError(f"round trip changed the state: {state!r} -> {again!r}")


def main() -> None:
    import atheris

    atheris.instrument_all()
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
