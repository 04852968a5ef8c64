"""Keys and the genkey/genpsk/pubkey commands, checked against RFC 7748 and the real `wg`."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tether import keys

WG = shutil.which("wg")
IN_CI = bool(os.environ.get("CI"))
TETHERCTL = [sys.executable, "-m", "tether"]


def need_wg():
    if WG is None:
        if IN_CI:
            pytest.fail("wg (wireguard-tools) is required in CI; .ci/run installs it")
        pytest.skip("wg (wireguard-tools) not installed: apt-get install wireguard-tools")


# RFC 7748 §6.1 Alice's and Bob's key pairs
ALICE_PRIV = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PUB = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
BOB_PRIV = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
BOB_PUB = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")


def test_rfc7748_public_keys():
    assert keys.public_from_private(ALICE_PRIV) == ALICE_PUB
    assert keys.public_from_private(BOB_PRIV) == BOB_PUB


def test_article_keypair():
    assert keys.pubkey("4HOYXaS0mtLH9ZChsPaDQ3W/L7Z/rrchr8CMDqZGgXg=") == (
        "UESAy9LgT3PR77Tl1RCnHuj+ZtFvYMeWahnTIEhEvXM="
    )


def test_genkey_is_clamped_and_genpsk_is_not_forced():
    for _ in range(200):
        k = keys.decode(keys.genkey())
        assert k[0] & 7 == 0 and k[31] & 0x80 == 0 and k[31] & 0x40
    assert any(keys.decode(keys.genpsk())[0] & 7 for _ in range(64))


@given(st.binary(min_size=32, max_size=32))
def test_encode_decode_round_trip(raw):
    assert keys.decode(keys.encode(raw)) == raw


@pytest.mark.parametrize(
    "text",
    [
        "",
        "A" * 44,
        "A" * 43 + "=" + " ",
        "A" * 42 + "==",
        "A" * 43 + "B",
        "4HOYXaS0mtLH9ZChsPaDQ3W/L7Z/rrchr8CMDqZGgXh=",  # nonzero padding bits: not canonical
        "4HOYXaS0mtLH9ZChsPaDQ3W_L7Z-rrchr8CMDqZGgXg=",  # URL-safe alphabet
        "4HOYXaS0mtLH9ZChsPaDQ3W/L7Z/rrchr8CMDqZGgX\u00e9=",
    ],
)
def test_decode_rejects(text):
    with pytest.raises(keys.InvalidKey):
        keys.decode(text)


def run(cmd, stdin=b""):
    return subprocess.run(cmd, input=stdin, capture_output=True, timeout=30)


def test_pubkey_matches_wg_on_many_random_keys_both_directions():
    need_wg()
    ours = [keys.genkey() for _ in range(100)]
    theirs = [run([WG, "genkey"]).stdout.decode().strip() for _ in range(100)]
    # batch through one process per side: `wg pubkey` handles one key per call
    for priv in ours + theirs:
        wg_out = run([WG, "pubkey"], (priv + "\n").encode())
        assert wg_out.returncode == 0
        assert wg_out.stdout.decode() == keys.pubkey(priv) + "\n"
    for priv in ours + theirs:
        assert keys.decode(priv)[0] & 7 == 0  # both sides clamp genkey output
    # and through our command line against wg's for a few, byte for byte
    for priv in ours[:5] + theirs[:5]:
        a = run(TETHERCTL + ["pubkey"], priv.encode() + b"\n")
        b = run([WG, "pubkey"], priv.encode() + b"\n")
        assert (a.returncode, a.stdout) == (b.returncode, b.stdout)


INVALID_STDIN = [
    b"",
    b"\n",
    b"short\n",
    b"A" * 44 + b"\n",
    b" 4HOYXaS0mtLH9ZChsPaDQ3W/L7Z/rrchr8CMDqZGgXg=\n",  # leading space: wg reads 44 chars first
    b"4HOYXaS0mtLH9ZChsPaDQ3W/L7Z/rrchr8CMDqZGgXg= x\n",  # trailing garbage
    b"4HOYXaS0mtLH9ZChsPaDQ3W/L7Z/rrchr8CMDqZGgXh=\n",  # non-canonical
    b"\xff" * 50,
]
VALID_STDIN = [
    b"4HOYXaS0mtLH9ZChsPaDQ3W/L7Z/rrchr8CMDqZGgXg=",
    b"4HOYXaS0mtLH9ZChsPaDQ3W/L7Z/rrchr8CMDqZGgXg=\n",
    b"4HOYXaS0mtLH9ZChsPaDQ3W/L7Z/rrchr8CMDqZGgXg= \t\r\n\n",
]


@pytest.mark.parametrize("stdin", INVALID_STDIN + VALID_STDIN)
def test_pubkey_cli_agrees_with_wg(stdin):
    need_wg()
    ours = run(TETHERCTL + ["pubkey"], stdin)
    theirs = run([WG, "pubkey"], stdin)
    assert ours.returncode == theirs.returncode
    assert ours.stdout == theirs.stdout
    if ours.returncode:
        assert ours.stdout == b""
        assert len(ours.stderr.decode().strip().splitlines()) == 1
        # the same sentence as wg's, only the program name differs
        assert ours.stderr.split(b": ", 1)[1] == theirs.stderr.split(b": ", 1)[1]


@pytest.mark.parametrize("command", ["genkey", "genpsk"])
def test_key_generation_cli_format(command):
    out = run(TETHERCTL + [command])
    assert out.returncode == 0 and out.stderr == b""
    text = out.stdout.decode()
    assert len(text) == 45 and text.endswith("=\n")
    assert len(base64.b64decode(text)) == 32
    if WG:
        wg_out = run([WG, "pubkey"], out.stdout)
        assert wg_out.returncode == 0  # wg accepts what we print


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=60))
def test_decode_agrees_with_wg_rules(data):
    """Our decoder accepts exactly the canonical 44-char strings wg's key_from_base64 accepts."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return
    ok = keys.is_valid(text)
    canonical = len(text) == 44 and text.endswith("=") and _b64_ok(text)
    assert ok == canonical


def _b64_ok(text: str) -> bool:
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        return False
    return len(raw) == 32 and base64.b64encode(raw).decode() == text


B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="


@settings(max_examples=150, deadline=None)
@given(
    st.text(B64, min_size=42, max_size=45)
    | st.text(B64, min_size=43, max_size=43).map(lambda s: s + "=")
)
def test_validity_agrees_with_real_wg(text):
    need_wg()
    theirs = run([WG, "pubkey"], text.encode())
    if len(text) == 44:
        assert (theirs.returncode == 0) == keys.is_valid(text)
    if theirs.returncode == 0:
        assert theirs.stdout.decode().strip() == keys.pubkey(text[:44])
