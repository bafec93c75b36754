"""Folders of named results, on top of ``persistence.Folder``.

A cache folder keyed by its config (``cache_folder``); an evaluation's result folder claimed
beside its config (``claim_result_folder``: refused when it holds another result or anything
tracin-we did not write); its tables saved and loaded, verified (``save_tables``,
``load_tables``)."""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import pandas as pd

from tracin_we.core.persistence import CheckpointError, Folder, cache_dir, config_key

log = logging.getLogger(__name__)


def cache_folder(path: str | os.PathLike, resolved: dict) -> Folder:
    """The cache folder at ``path`` of the results that ``resolved`` defines (``path`` names its
    key): stale temporary files removed, ``config.json`` written once (rewritten when damaged)."""
    folder = Folder(path)
    folder.remove_stale_tmp()
    if folder.read_json("config.json", recompute=True) is None:
        folder.write_json("config.json", resolved)
    return folder


def claim_result_folder(
    resolved: dict,
    kind: str,
    what: str,
    cache: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Path:
    """The folder of the result that ``resolved`` defines (``out_dir``, else
    ``<cache>/<kind>/<key of resolved>``), with ``config.json`` written into it.

    A named ``out_dir`` holding anything tracin-we did not write is refused before anything is
    read, written or deleted there (``check_out_dir``), also under ``overwrite``; one holding
    another result is refused (``what`` names it) unless ``overwrite``, which first deletes the
    files tracin-we wrote there. The cache's own keyed folder follows the cache's rules: a
    damaged ``config.json`` is recomputed, and one of another content (an older version's
    format, since the key is this config's) is cleared and rewritten."""
    named = out_dir is not None
    check_out_dir(out_dir)
    folder = Folder(out_dir if named else cache_dir(cache) / kind / config_key(resolved))
    folder.remove_stale_tmp()
    if overwrite:
        folder.clear("out_dir", foreign_ok=not named)
    remedy = f"pass overwrite=True to rewrite the {what}, or delete the folder"
    saved = folder.read_json("config.json", recompute=not named, remedy=remedy)
    if saved not in (None, resolved):
        if named:
            raise CheckpointError(
                f"out_dir={str(folder)!r} holds another {what}; choose another out_dir or pass "
                "overwrite=True"
            )
        log.info("%s holds an older version's %s of this config; rewriting it", folder, what)
        folder.clear("out_dir", foreign_ok=True)
    folder.write_json("config.json", resolved)
    return folder.path


def check_out_dir(out_dir: str | os.PathLike | None) -> None:
    """A named ``out_dir`` holds nothing tracin-we did not write (``Folder.claim``); called
    first by every evaluation, before its scores or retrains. None: the cache's keyed folder."""
    if out_dir is not None:
        Folder(out_dir).claim("out_dir")


def save_tables(out_dir: str | os.PathLike, tables: Mapping[str, pd.DataFrame]) -> None:
    """Each table as ``<name>.csv`` in ``out_dir``, recorded in its manifest."""
    folder = Folder(out_dir)
    for name, frame in tables.items():
        folder.write(f"{name}.csv", frame.to_csv(index=False).encode())


def load_tables(
    out_dir: str | os.PathLike, names: Iterable[str], what: str, remedy: str
) -> dict[str, pd.DataFrame | dict]:
    """``config`` (config.json) and each ``<name>.csv`` of ``out_dir``, every file verified: a
    damaged or missing one is refused, naming it and ``remedy``."""
    folder = Folder(out_dir)
    config = folder.read_json("config.json", recompute=False, remedy=remedy)
    if config is None:
        raise ValueError(f"out_dir={str(out_dir)!r} holds no {what} (no config.json)")
    loaded: dict[str, pd.DataFrame | dict] = {"config": config}
    for name in names:
        data = folder.read(f"{name}.csv", recompute=False, remedy=remedy)
        if data is None:
            raise CheckpointError(f"{str(folder.path / f'{name}.csv')!r} is missing; {remedy}")
        loaded[name] = pd.read_csv(io.BytesIO(data))
    return loaded
