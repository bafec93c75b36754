"""Headless Chromium for the report tests: find it, dump a page's DOM, screenshot a page.

Chromium is the Debian package ``chromium`` (``make browser`` installs it where apt-get can run
as root); a test that needs it skips, saying so, where none is found."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run")


def find_browser() -> str | None:
    """``$TRACIN_WE_BROWSER`` if set, else the first of ``NAMES`` on the PATH, else None."""
    chosen = os.environ.get("TRACIN_WE_BROWSER")
    return chosen or next((path for name in NAMES if (path := shutil.which(name))), None)


def _run(browser: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    # --no-sandbox: CI containers run as root, where Chromium's sandbox refuses to start.
    return subprocess.run(
        [browser, *FLAGS, *args], capture_output=True, text=True, timeout=timeout, check=True
    )


def dump_dom(browser: str, page: Path) -> str:
    """The DOM of ``page`` after Chromium has loaded it (scripts run), as HTML."""
    return _run(browser, "--dump-dom", page.resolve().as_uri()).stdout


def screenshot(browser: str, page: Path, png: Path, size: tuple[int, int] = (1280, 4000)) -> Path:
    """A PNG of the top ``size`` (width, height in pixels) of ``page`` rendered by Chromium."""
    _run(
        browser,
        f"--window-size={size[0]},{size[1]}",
        f"--screenshot={png.resolve()}",
        page.resolve().as_uri(),
    )
    return png


def colours(png: Path) -> tuple[int, float]:
    """(distinct RGB colours, share of pixels that are not the most common colour) of ``png``."""
    import matplotlib.image

    pixels = matplotlib.image.imread(png)[..., :3].reshape(-1, 3)
    values, counts = np.unique((pixels * 255).round().astype(np.uint8), axis=0, return_counts=True)
    return len(values), 1.0 - counts.max() / counts.sum()
