"""Fuzz target: UAPI (`wg` socket protocol) requests.

Any byte stream, fed in arbitrary pieces, must yield requests or one UapiError and nothing else;
the split points must not change the outcome; every parsed set request must survive a
format/parse round trip and map onto one device change (the UAPI adapter) without error.
Run: `make fuzz TARGET=uapi SECONDS=300` (see fuzz/README.md).
"""

from __future__ import annotations

import sys

from tether.device.uapi.adapter import change_from_request
from tether.device.uapi.protocol import (
    RequestReader,
    SetRequest,
    UapiError,
    format_set_request,
    parse_request,
)


def _read(data: bytes, cuts: list[int]) -> list[object]:
    reader = RequestReader(max_request_bytes=4096)
    events: list[object] = []
    last = 0
    for cut in [*cuts, len(data)]:
        events += reader.feed(data[last:cut])
        last = cut
    events += reader.feed_eof()
    return events


def _describe(event: object) -> object:
    if isinstance(event, UapiError):
        return ("error", event.errno, event.reply)
    return event


def TestOneInput(data: bytes) -> None:
    # The first byte picks where the stream is split, so the fuzzer explores partial reads.
    step = (data[0] % 7 + 1) if data else 1
    body = data[1:]
    whole = [_describe(e) for e in _read(body, [])]
    pieces = [_describe(e) for e in _read(body, list(range(0, len(body), step)))]
    if whole != pieces:
        raise AssertionError(f"split reads disagree: {whole} != {pieces}")
    errors = [e for e in whole if isinstance(e, tuple)]
    if len(errors) > 1 or (errors and whole[-1] is not errors[0]):
        raise AssertionError("an error must be the last event")
    for event in whole:
        if not isinstance(event, SetRequest):
            continue
        if parse_request(format_set_request(event)) != event:
            raise AssertionError("set request did not survive format/parse")
        change = change_from_request(event)
        if len(change.peers) != len(event.peers) or change.listen_port != event.listen_port:
            raise AssertionError("the device change lost part of the request")


def main() -> None:
    import atheris

    atheris.instrument_all()  # coverage feedback from the already-imported parser
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
