"""Runs the API fuzz targets' TestOneInput on a few hundred inputs each, without atheris."""

from __future__ import annotations

import logging
import random
from pathlib import Path

FUZZ = Path(__file__).resolve().parents[2] / "fuzz"
KEY = b"vi2iosrlXoDeZT08aXlq4AxXUNKO04NDuEeCw2Z7sD0="


def mutated(
    rnd: random.Random, seeds: list[bytes], count: int, edits: tuple[int, int], alphabet: bytes
):
    """`count` inputs: a seed, with a random number (in `edits`) of byte changes, insertions
    (from `alphabet`) and deletions."""
    for _ in range(count):
        base = bytearray(rnd.choice(seeds))
        for _ in range(rnd.randint(*edits)):
            op = rnd.randint(0, 2)
            if op == 0 and base:
                base[rnd.randrange(len(base))] = rnd.randrange(256)
            elif op == 1:
                base.insert(rnd.randrange(len(base) + 1), rnd.choice(alphabet))
            elif base:
                del base[rnd.randrange(len(base))]
        yield bytes(base)


def test_fuzz_target_smoke(caplog, fuzz_target):
    caplog.set_level(logging.CRITICAL)
    target = fuzz_target("fuzz_api")
    rnd = random.Random(4321)
    # method, prefix, route, flags, more, remote; then etype \0 key \0 query \0 forwarded-for
    seeds = [
        bytes([1, 0, 0, 3, 0, 1]) + b"x\x00\x00",
        bytes([1, 1, 0, 3, 0, 2]) + b"x\x00\x00format=qr",
        bytes([0, 0, 3, 2, 0, 3]) + b"\x00\x00format=svg",
        bytes([2, 0, 2, 2, 0, 4]) + b"\x00\x00",
        bytes([2, 0, 2, 42, 4, 4]) + b"\x00\x00",  # remove with an owner secret, token on
        bytes([2, 0, 2, 42, 2, 4]) + b"\x00\x00",  # ... with the admin token
        bytes([0, 0, 6, 40, 0, 7]) + b"\x00\x00",  # /metrics with a wrong bearer
        bytes([1, 0, 1, 8, 1, 2]) + b"\x00\x00",  # new, self-service off
        bytes([0, 0, 3, 11, 24, 2]) + b"ipv4\x00\x00format=qr\x00198.51.100.9, 10.99.0.1",
        bytes([1, 0, 1, 9, 0, 2]) + b"\x01\x00\x00",  # anyone: new, token on
        bytes([1, 0, 0, 9, 0, 2]) + b"\x01\x00" + KEY + b"\x00",  # anyone: add KEY
        bytes([2, 0, 2, 40, 4, 2]) + b"\x01\x00" + KEY + b"\x00",  # remove KEY with a secret
        bytes([2, 0, 2, 40, 0, 2]) + b"\x01\x00" + KEY + b"\x00",  # ... with a wrong bearer
        bytes([1, 3, 0, 0, 0, 0]) + b"ipv4\x00" + b"A" * 43 + b"=\x00",
        bytes([0, 4, 4, 40, 0, 0]) + b"\x00\x00",
        bytes([1, 0, 1, 16, 0, 0]) + b"\x00" + b"x" * 9000 + b"\x00",
    ]
    for seed in seeds:
        target.TestOneInput(seed)
    assert len(target._secrets) >= 2  # the seeds reach successful adds (and their secrets)
    for data in mutated(rnd, seeds, 600, (0, 6), b"/.%=+?&\x00Aa9 \xff"):
        target.TestOneInput(data)


def test_state_fuzz_target_smoke(fuzz_target):
    target = fuzz_target("fuzz_api_state")
    rnd = random.Random(77)
    good = (
        b'{"schema": 1, "owners": {"10NguWHSLJ0tUOr4AkbTtOEYHoagq1KH/PJSIJ3SwFs=": '
        b'{"secret_sha256": "' + b"a" * 64 + b'", "added": 5, "self_service": true, '
        b'"expires": null, "addresses": ["10.0.0.2/32"]}}, "released": {"10.0.0.3/32": '
        b'{"released": 1, "until": 2, "self_service": false}}, "invites": {}}'
    )
    seeds = [good, b"{}", b'{"schema": 1}', b"", b"[1,2]", b'{"schema": 2, "owners": 3}']
    for seed in seeds:
        target.TestOneInput(seed)
    for data in mutated(rnd, seeds, 400, (1, 4), b'{}[]",:0a1 -.e/\\'):
        target.TestOneInput(data)


def test_fuzz_options_smoke(fuzz_target):
    """fuzz/fuzz_options.py: `--api-listen` texts and `<device>.env` files (read, update)."""
    target = fuzz_target("fuzz_options")
    rnd = random.Random(2024)
    seeds = [
        b"127.0.0.1:9090\0TETHERCTL_LOG=verbose\n\0PUBLIC_IPV4\x00198.51.100.7",
        b":9090\0# comment\nexport TETHERCTL_PUBLIC_IPV6='2001:db8::1'\n\0LOG\0e",
        b'[::1]:0\0A=1\r\nB="two words"\n\0PUBLIC_DOMAIN\0vpn.example.org',
        b"localhost\0\0X\0a value with 'quotes' and \x0c form feed",
        b"[::1\0broken line\n=\n\0LOG\0two\nlines",
        b"http://10.0.0.1:99999/\0\xff\xfe\0BAD-NAME\0v",
    ]
    for data in seeds:
        target.TestOneInput(data)
    for _ in range(300):
        data = bytearray(rnd.choice(seeds))
        for _ in range(rnd.randrange(1, 5)):
            at = rnd.randrange(len(data) + 1)
            data[at:at] = bytes([rnd.choice(b":[]\0\n\r'\"= \\#x9\x0c\x85")])
        target.TestOneInput(bytes(data))


def test_invites_fuzz_target_smoke(caplog, fuzz_target):
    caplog.set_level(logging.CRITICAL)
    target = fuzz_target("fuzz_invites")
    rnd = random.Random(1111)
    # op (create page redeem revoke list parse), mode (open invite off), prefix, flags; then
    # text \0 more (flags: 1 admin, 2 quote the code, 4.. which code, 64 / 128 op variants)
    seeds = [
        bytes([0, 1, 0, 1]) + b"\x00uses=2&expires=1h",  # admin makes a two-use invite
        bytes([0, 0, 1, 65]) + b"\x00uses=1",  # ... one-use, as a (non-form) body: 400
        bytes([0, 0, 1, 193]) + b"\x00uses=3&endpoint_type=ipv4",  # ... as a form
        bytes([0, 1, 0, 0]) + b"\x00uses=1",  # anyone: 401
        bytes([1, 1, 0, 64]) + b"\x00",  # the page of a known code
        bytes([1, 0, 0, 0]) + b"\x00",  # /join, self-service open
        bytes([2, 1, 0, 0]) + b"\x00",  # redeem a known code (three times: uses run out)
        bytes([2, 1, 0, 0]) + b"\x00",
        bytes([2, 1, 0, 0]) + b"\x00",
        bytes([2, 2, 0, 0]) + b"\x00",  # self-service off
        bytes([2, 1, 0, 4]) + b"XYZ\x00",  # a mutated code
        bytes([2, 1, 0, 8]) + b"A" * 40 + b"\x00",  # a huge one
        bytes([2, 1, 0, 128]) + b"\x00" + b"not a key",
        bytes([4, 0, 0, 1]) + b"\x00",  # admin lists
        bytes([4, 0, 0, 0]) + b"\x00",  # anyone: 401
        bytes([3, 0, 0, 0]) + b"\x00",  # anyone revokes: 401
        bytes([3, 0, 0, 1]) + b"\x00",  # admin revokes a known code
        bytes([2, 1, 0, 0]) + b"\x00",  # ... which then admits nobody
        bytes([5, 0, 0, 0]) + b"15m\x00",
        bytes([5, 0, 0, 0]) + b"https://vpn.example.org/api/join/abc\x00",
        bytes([5, 0, 0, 0]) + b"0123456789\x00",
    ]
    for seed in seeds:
        target.TestOneInput(seed)
    assert target._codes and target._admitted  # the seeds make and redeem invites
    assert target._revoked
    for data in mutated(rnd, seeds, 600, (0, 6), b"/.%=+?&\x00Aa9-_ \xff"):
        target.TestOneInput(data)
