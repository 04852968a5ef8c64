"""`?format=qr` (PNG) and `?format=svg`: the code holds exactly the config text.

Two checks: the PNG is decoded here (chunks, zlib, filters, 1-bit pixels) and its modules are
compared with the QR matrix of the config text; and, where zbar is installed, an independent
decoder reads the text back from the image, as a phone's camera would.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import xml.etree.ElementTree as ET
import zlib

import pytest
import segno

from .support import PEER1, call, new_key


def png_pixels(data: bytes) -> list[list[int]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, ihdr = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunk = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            ihdr = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    width, height, depth, color, _, _, interlace = ihdr
    assert (depth, color, interlace) == (1, 0, 0)  # 1-bit greyscale, not interlaced
    raw = zlib.decompress(idat)
    stride = (width + 7) // 8
    rows, prev = [], bytearray(stride)
    for y in range(height):
        ftype = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - 1] if i else 0
            b, c = prev[i], prev[i - 1] if i else 0
            if ftype == 1:
                line[i] = (line[i] + a) & 255
            elif ftype == 2:
                line[i] = (line[i] + b) & 255
            elif ftype == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 255
        rows.append([(line[x // 8] >> (7 - x % 8)) & 1 for x in range(width)])
        prev = line
    return rows


def modules_of(pixels: list[list[int]], scale: int, border: int) -> list[list[int]]:
    n = len(pixels) // scale - 2 * border
    return [
        [
            1 - pixels[(border + r) * scale + scale // 2][(border + c) * scale + scale // 2]
            for c in range(n)
        ]
        for r in range(n)
    ]


def test_png_holds_the_qr_of_the_config(app):
    text = call(app, "GET", f"/peer/config/ipv4/{PEER1}").text
    r = call(app, "GET", f"/peer/config/ipv4/{PEER1}", query="format=qr")
    assert r.status == 200 and r.headers["content-type"] == "image/png"
    got = modules_of(png_pixels(r.body), scale=4, border=4)
    expected = [
        [1 if m else 0 for m in row] for row in segno.make(text, error="m", micro=False).matrix
    ]
    assert got == expected


def test_svg_is_well_formed_and_sized_for_the_code(app):
    text = call(app, "GET", f"/peer/config/ipv4/{PEER1}").text
    r = call(app, "GET", f"/peer/config/ipv4/{PEER1}", query="format=SVG")
    assert r.status == 200 and r.headers["content-type"] == "image/svg+xml"
    root = ET.fromstring(r.body)
    assert root.tag.endswith("svg")
    n = len(segno.make(text, error="m", micro=False).matrix)
    assert int(float(root.get("width"))) == (n + 8) * 4


def test_add_and_new_answer_qr_too_and_unknown_format_is_400(app, conf_dir):
    r = call(app, "POST", f"/peer/add/ipv4/{new_key()}", query="format=png")
    assert r.status == 200 and r.body.startswith(b"\x89PNG")
    r = call(app, "POST", "/peer/new/ipv4", query="format=svg")
    assert r.status == 200 and b"<svg" in r.body
    before = (conf_dir / "bywg0.conf").read_bytes()
    r = call(app, "POST", f"/peer/add/ipv4/{new_key()}", query="format=gif")
    assert r.status == 400 and r.text == "unknown format (expected text, qr or svg)\n"
    assert (conf_dir / "bywg0.conf").read_bytes() == before


@pytest.mark.skipif(not shutil.which("zbarimg"), reason="zbarimg (Debian zbar-tools) not installed")
def test_a_scanner_reads_the_config_back(app, tmp_path):
    r = call(app, "POST", "/peer/new/any", query="format=qr")
    image = tmp_path / "code.png"
    image.write_bytes(r.body)
    out = subprocess.run(
        ["zbarimg", "--quiet", "--raw", "-Sbinary", str(image)], capture_output=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout.decode().rstrip("\n")
    assert text.startswith('# Config for public key "')
    assert "PrivateKey = " in text and "__PLACEHOLDER__" not in text.split("\n")[2]
    assert text.endswith("Endpoint = vpn.example.org:51820")
