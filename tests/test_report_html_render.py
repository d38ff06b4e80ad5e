"""Render the HTML report in headless Chromium and check the screenshot is a real picture.

Skipped where Debian's Chromium (/usr/bin/chromium) is absent. The PNG is decoded with zlib and
struct only (no imaging dependency): the top of the page must be the decision band in the
decision's colour, and the page must not be a single colour.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from pytest_bclone.report import write_html

from .test_report_fixtures import blocked_summary, load_summary

CHROMIUM = Path("/usr/bin/chromium")

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium not installed (/usr/bin/chromium)")


def render(html_path: Path, png_path: Path, profile: Path, height: int = 2400) -> None:
    """Screenshot ``html_path`` with the offline, sandbox-free flags CI containers need."""
    subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
         "--force-device-scale-factor=1", f"--user-data-dir={profile}", f"--screenshot={png_path}",
         f"--window-size=1280,{height}", html_path.as_uri()],
        check=True, capture_output=True, timeout=120,
    )


def png_rows(path: Path, max_rows: int) -> tuple[int, int, list[list[tuple[int, int, int]]]]:
    """Width, height and the RGB pixels of the first ``max_rows`` rows of an 8-bit RGB(A) PNG."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, b""
    width = height = color_type = 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, color_type, _, _, interlace = struct.unpack(">IIBBBBB", chunk)
            assert depth == 8 and color_type in (2, 6) and interlace == 0
        elif kind == b"IDAT":
            idat += chunk
    bpp = 3 if color_type == 2 else 4
    stride = width * bpp
    raw = zlib.decompress(idat)
    prev = bytearray(stride)
    out = []
    for y in range(min(max_rows, height)):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for x in range(stride):  # undo the PNG filter of this scanline
            a = line[x - bpp] if x >= bpp else 0
            b = prev[x]
            c = prev[x - bpp] if x >= bpp else 0
            if kind == 1:
                line[x] = (line[x] + a) & 255
            elif kind == 2:
                line[x] = (line[x] + b) & 255
            elif kind == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        out.append([(line[i], line[i + 1], line[i + 2]) for i in range(0, stride, bpp)])
        prev = line
    return width, height, out


@pytest.mark.parametrize(
    ("build", "band"),
    [(load_summary, lambda r, g, b: 110 < r < 175 and 60 < g < 120 and b < 40),   # amber: hybrid route
     (blocked_summary, lambda r, g, b: r > 150 and g < 60 and b < 70)],           # red: blocked
    ids=["hybrid", "blocked"],
)
def test_report_renders_in_chromium(tmp_path: Path, build, band) -> None:  # type: ignore[no-untyped-def]
    html_path = write_html(build(), tmp_path / "bclone.html")
    png = tmp_path / "bclone.png"
    render(html_path, png, tmp_path / "profile")
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)
    assert png.exists() and png.stat().st_size > 50_000  # a page of text and charts, not a blank
    width, height, rows = png_rows(png, 160)
    assert (width, height) == (1280, 2400)
    header = [px for row in rows[:150] for px in row]
    # The decision band: most of the top of the page is the decision's colour...
    assert sum(1 for px in header if band(*px)) > 0.6 * len(header)
    # ...with the decision written on it in white, and the picture is far from a single colour.
    assert sum(1 for px in header if min(px) > 235) > 2_000
    assert len(set(header)) > 100
