"""Serve the explorer page with Voilà: ``python -m tracin_we.explore`` (``make explore``).

    python -m tracin_we.explore [--preset NAME_OR_FILE ...] [--port 8866] [--no-browser]

The page offers the runs of the presets given (default: ``default`` and ``pretrained``) and reads
them from the cache the notebooks wrote (``$TRACIN_WE_CACHE``, else the repository's
``runs/cache``); its kernel gets the presets, the cache and the data folder through its
environment. Voilà shows the notebook's outputs only, never its code.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tracin_we.core.persistence import CACHE_ENV
from tracin_we.explore.session import PRESETS_ENV, run_choices
from tracin_we.reproduce import notebook_cache, preset_path

NOTEBOOK = Path(__file__).with_name("explore.ipynb")
WORKDIR_ENV = "TRACIN_WE_EXPLORE_WORKDIR"  # the kernel's working directory (explore.ipynb)


def voila_command(port: int, open_browser: bool) -> list[str]:
    """The Voilà server of ``NOTEBOOK`` on 127.0.0.1:``port``."""
    return [
        sys.executable, "-m", "voila", str(NOTEBOOK), f"--port={port}", "--Voila.ip=127.0.0.1",
        "--Voila.port_retries=0", "--show_tracebacks=True",
        *([] if open_browser else ["--no-browser"]),
    ]  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tracin_we.explore", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--preset", action="append", help="a preset name or file (repeatable)")
    parser.add_argument("--port", type=int, default=8866)
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser")
    args = parser.parse_args(argv)
    if not 1 <= args.port <= 65535:
        parser.error(f"--port={args.port} must be in 1..65535")
    try:  # every preset and the runs it offers, checked before the server starts
        presets = [str(preset_path(p).absolute()) for p in args.preset or ["default", "pretrained"]]
        choices = run_choices(presets)
    except ValueError as error:
        parser.error(str(error))
    if not choices:
        parser.error(f"--preset: {presets} select neither notebook 01 nor 03: nothing to explore")
    # Absolute: the kernel runs in this package's folder, not the repository.
    cache = str(notebook_cache().absolute())
    env = os.environ | {
        PRESETS_ENV: os.pathsep.join(presets),
        CACHE_ENV: cache,
        WORKDIR_ENV: os.getcwd(),
    }
    print(f"the explorer: http://127.0.0.1:{args.port}/ (Ctrl-C stops it)", flush=True)
    command = voila_command(args.port, not args.no_browser)
    os.execve(command[0], command, env)  # Voilà itself: a signal to this process reaches it


if __name__ == "__main__":
    main()
