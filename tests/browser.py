"""Headless Chromium for the report tests and the report benchmark: Debian's ``chromium``, run as
a user would open a file, with no DevTools client (no new Python dependency).

``--dump-dom`` prints the DOM after the page's load event; ``--screenshot`` paints it. Each call
is its own browser with its own throwaway profile, so tests can run side by side. As root (the
test machines) Chromium's sandbox cannot start, so ``--no-sandbox``; nothing it loads is
untrusted (our own page, from a file).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

NAMES = ("chromium", "chromium-browser", "google-chrome")
TIMEOUT_S = 120.0  # a loaded 2-core machine starts Chromium in seconds; this is far from normal


def chromium() -> str | None:
    """The browser's path, or None where none is installed (``scripts/setup-test-env.sh`` installs
    Debian's ``chromium``)."""
    return next((p for p in map(shutil.which, NAMES) if p), None)


def why_no_chromium() -> str | None:
    """Why the browser tests cannot run here (None: they can): no binary, or one that cannot start."""
    exe = chromium()
    if exe is None:
        return ("no chromium on PATH: install Debian's chromium (`apt-get install chromium`; "
                "scripts/setup-test-env.sh does it for `make test`)")
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{exe} cannot start here: {e}"
    if out.returncode != 0:
        return f"{exe} cannot start here: {out.stderr.strip()[-300:]}"
    return None


def _run(args: list[str], timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    exe = chromium()
    assert exe is not None, why_no_chromium()
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
               "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args]
        # HOME: Chromium writes crash reports and caches under it; keep them in the throwaway profile.
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "HOME": profile})


def dump_dom(page: Path, *extra: str) -> str:
    """The DOM of ``page`` after its load event, serialised by the browser."""
    out = _run([*extra, "--dump-dom", page.resolve().as_uri()])
    assert out.returncode == 0 and "<html" in out.stdout, out.stderr[-2000:]
    return out.stdout


def screenshot(page: Path, png: Path, width: int = 1100, height: int = 1400) -> Path:
    """A PNG of ``page`` as a ``width``×``height`` window shows it."""
    out = _run([f"--screenshot={png}", f"--window-size={width},{height}", page.resolve().as_uri()])
    assert out.returncode == 0 and png.is_file(), out.stderr[-2000:]
    return png


def print_to_pdf(page: Path, pdf: Path) -> Path:
    """``page`` printed (its ``@media print`` rules) to a PDF."""
    out = _run(["--no-pdf-header-footer", f"--print-to-pdf={pdf}", page.resolve().as_uri()])
    assert out.returncode == 0 and pdf.is_file(), out.stderr[-2000:]
    return pdf


def png_size(png: Path) -> tuple[int, int]:
    """(width, height) from the PNG's IHDR chunk."""
    data = png.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


class Node:
    def __init__(self, tag: str, attrs: dict[str, str]) -> None:
        self.tag, self.attrs, self.text = tag, attrs, ""

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())


class Dom(HTMLParser):
    """The dumped DOM's elements in document order, each with its attributes and own text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.nodes: list[Node] = []
        self._open: list[Node] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.nodes.append(node)
        self._open.append(node)

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self._open) - 1, -1, -1):
            if self._open[i].tag == tag:
                del self._open[i:]
                break

    def handle_data(self, data: str) -> None:
        for n in self._open:
            n.text += data

    def find(self, cls: str | None = None, tag: str | None = None, **attrs: Any) -> list[Node]:
        return [n for n in self.nodes if (cls is None or cls in n.classes) and (tag is None or n.tag == tag)
                and all(n.attrs.get(k.replace("_", "-")) == str(v) for k, v in attrs.items())]

    def by_id(self, id_: str) -> Node:
        (node,) = [n for n in self.nodes if n.attrs.get("id") == id_]
        return node
