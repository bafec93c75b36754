"""Everything this project writes to disk: where caches live, their keys, content hashes, atomic
writes, verified reads, and a manifest of what each folder holds.

**Where.** One root for every cache, ``cache_dir(path)``: ``path`` when given (the ``cache``
argument of ``train``/``run_deletion``/``RetrainStore``, the ``cache_dir`` option of
``influence.scores``), else ``$TRACIN_WE_CACHE``, else ``./runs/cache``. Each kind of result has
its own subfolder: ``train/`` (training runs), ``gradients/`` (training-set gradient rows of
``influence.scores``, cached only when its ``cache_dir`` option is given), ``retrain/``,
``deletion/``, ``no_overlap/`` and ``fixing/``. A result's folder is named by ``config_key`` of
its resolved config, so a different config never reuses it.

**Integrity** (one rule for every cache). A ``Folder`` writes each file atomically (to a
temporary ``.<name>.<pid>@<host>.<random>.tmp`` beside it, then renamed onto it) and appends the
sha256 of the bytes written to the folder's ``manifest.jsonl``. Every read hashes the file again.
A file is *damaged* when its hash differs from the recorded one, the manifest has no record of it,
or it cannot be parsed. Then:

- where the caller can recompute it (``recompute=True``: gradient rows, retrains, the partial
  state of an interrupted training run), the file is deleted with a logged warning and the caller
  recomputes it;
- otherwise (a finished training run, a saved deletion sweep) the read raises ``CheckpointError``
  naming the file and what to delete.

The manifest also says which files the project wrote; anything else in a folder is *foreign*.
Each record is appended before its file is renamed into place, so a file without a record was not
written by this project (or by a version older than this rule). A folder that a run claims as its
own (``run_dir``, ``out_dir``: ``Folder.claim``) must hold nothing foreign, and ``Folder.clear``
(``overwrite=True``) removes exactly the recorded files: a foreign file is never replaced or
deleted. A manifest record naming anything but a plain file name of its own folder (``../x``, an
absolute path, ``a/b``) is damage: it is reported, never followed, and ``clear`` then deletes
nothing. ``Folder.remove_stale_tmp``
deletes the temporary files of writers that were killed mid-write; each run calls it when it opens
its folder. Manifest records are single appended lines, so processes writing different files of one
folder at once (``fixing``'s workers) do not lose each other's records on a local disk.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import socket
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

CACHE_ENV = "TRACIN_WE_CACHE"
MANIFEST = "manifest.jsonl"
# A temporary file names its writer: ``.<name>.<pid>@<host>.<random>.tmp``.
_TMP = re.compile(r"^\..+\.(\d+)@(.*)\.[^.]+\.tmp$")
_UNTAGGED_TMP = re.compile(r"^\.(.+)\.[a-z0-9_]{8}\.tmp$")  # before tags: ``.<name>.<random>.tmp``
_STALE_SECONDS = 24 * 3600  # another machine's temporary file older than this is abandoned


class CheckpointError(ValueError):
    """A file on disk is damaged, or a folder holds another config's result or foreign files."""


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """The root of every cache: ``path``, else ``$TRACIN_WE_CACHE``, else ``./runs/cache``."""
    return Path(path or os.environ.get(CACHE_ENV) or Path.cwd() / "runs" / "cache")


def config_key(resolved: Any, length: int = 12) -> str:
    """Hex key of a JSON-serialisable value (dict keys sorted): names a result's cache folder."""
    return hashlib.sha256(json.dumps(resolved, sort_keys=True).encode()).hexdigest()[:length]


def tensor_digest(*items: torch.Tensor | Mapping[str, torch.Tensor], length: int = 16) -> str:
    """Hex hash of tensors or dicts of tensors (a state dict, model inputs): every name, dtype,
    shape and byte, so equal digests mean bitwise-equal contents."""
    digest = hashlib.sha256()
    for position, item in enumerate(items):
        named = sorted(item.items()) if isinstance(item, Mapping) else [("", item)]
        for name, tensor in named:
            tensor = tensor.detach().cpu().contiguous()
            digest.update(f"{position}/{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
            if tensor.numel():  # an empty split (n_val=0) has no bytes, and no stride to view
                digest.update(tensor.flatten().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:length]


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# The process's umask, read once (reading it means setting it): files get the mode open() gives.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it onto ``path``:
    an interrupted run never leaves a half-written file under ``path``'s name (``write`` may also
    record the file elsewhere: ``Folder.write`` appends its manifest line there)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}.{os.getpid()}@{socket.gethostname()}."
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's 0600 would make results private to their owner
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, data: Any) -> None:
    """An output file outside the caches (metrics), written atomically, not recorded."""
    atomic_write(Path(path), lambda tmp: tmp.write_text(json.dumps(data, indent=2, default=str)))


def save_torch(path: Path, obj: Any) -> None:
    """``torch.save`` atomically, not recorded (caches use ``Folder.save_torch``)."""
    atomic_write(Path(path), lambda tmp: torch.save(obj, tmp))


def load_torch_bytes(data: bytes) -> Any:
    """``torch.load`` of bytes, on the CPU, with ``weights_only=True``."""
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def is_plain_name(name: object) -> bool:
    """Whether ``name`` is a plain file name: one path component, not ``.``/``..``, no separator
    (either slash), no NUL, not the manifest itself. Only such names are read from a manifest."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..", MANIFEST)
        and not any(c in name for c in "/\\\0")
    )


class Folder:
    """A folder of files this project writes, each recorded with its sha256 in ``manifest.jsonl``.

    Names are plain file names inside the folder (``is_plain_name``). Write with ``write``/
    ``save_torch``/``write_json``; read back with ``read``/``load_torch``/``read_json``, which
    verify the hash and apply the damaged-file rule of the module docstring.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._records: dict[str, str] | None = None
        self.hostile: list[str] = []  # manifest records naming no plain file of this folder

    def records(self, reload: bool = False) -> dict[str, str]:
        """File name → sha256 recorded when it was last written (the manifest's last line wins;
        a line cut short by a killed writer is skipped). A record naming anything but a plain
        file name is logged, kept in ``hostile`` and never followed."""
        if self._records is None or reload:
            self._records, self.hostile = {}, []
            manifest = self.path / MANIFEST
            if manifest.is_symlink() or (manifest.exists() and not manifest.is_file()):
                self.hostile.append(f"{MANIFEST} itself: not a regular file")  # never followed
                return self._records
            raw = manifest.read_bytes() if manifest.is_file() else b""
            for line in raw.decode(errors="replace").splitlines():
                try:
                    record = json.loads(line)
                    name, digest = record["file"], record["sha256"]
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue
                if is_plain_name(name):
                    self._records[name] = digest
                else:
                    self.hostile.append(repr(name))
            if self.hostile:
                log.warning(
                    "%s names entries outside its folder %s; damaged, ignored",
                    manifest,
                    self.hostile[:5],
                )
        return self._records

    def write(self, name: str, data: bytes | memoryview) -> str:
        """Write ``data`` to ``name`` atomically and record its sha256 (returned). The record is
        appended before the rename, so a file in place always has one."""
        if not is_plain_name(name):
            raise ValueError(f"name={name!r} is not a plain file name inside {str(self.path)!r}")
        digest = hashlib.sha256(data).hexdigest()

        def write_then_record(tmp: Path) -> None:
            tmp.write_bytes(data)
            record = {"file": name, "sha256": digest, "bytes": len(data)}
            _append_line(self.path / MANIFEST, json.dumps(record) + "\n")

        atomic_write(self.path / name, write_then_record)
        self.records()[name] = digest
        return digest

    def save_torch(self, name: str, obj: Any) -> str:
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        return self.write(name, buffer.getbuffer())  # a view: no second copy of the weights

    def write_json(self, name: str, data: Any) -> str:
        return self.write(name, json.dumps(data, indent=2, default=str).encode())

    def read(self, name: str, *, recompute: bool, remedy: str | None = None) -> bytes | None:
        """The bytes of ``name`` when they match their recorded sha256; None when it is missing.
        Damaged: deleted and None (``recompute``), else ``CheckpointError`` ending in ``remedy``
        (default: delete the file)."""
        path = self.path / name
        if not path.is_file():
            return None
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        recorded = self.records().get(name)
        if recorded != digest:  # another process may have rewritten it since we read the manifest
            recorded = self.records(reload=True).get(name)
        if recorded == digest:
            return data
        if recorded is None:
            why = f"{MANIFEST} has no record of it: tracin-we did not write it (or an old version)"
        else:
            why = f"its sha256 differs from the one recorded in {MANIFEST} when it was written"
        return self.damaged(name, why, recompute, remedy)

    def load_torch(self, name: str, *, recompute: bool, remedy: str | None = None) -> Any:
        """``read`` then ``torch.load(weights_only=True)``; None when missing (or recomputed)."""
        return self._parse(name, load_torch_bytes, recompute, remedy)

    def read_json(self, name: str, *, recompute: bool, remedy: str | None = None) -> Any:
        return self._parse(name, json.loads, recompute, remedy)

    def _parse(
        self, name: str, parse: Callable[[bytes], Any], recompute: bool, remedy: str | None
    ) -> Any:
        data = self.read(name, recompute=recompute, remedy=remedy)
        if data is None:
            return None
        try:
            return parse(data)
        except Exception as err:  # unpickling/JSON errors have many types; all mean "unreadable"
            return self.damaged(name, f"unreadable: {err}", recompute, remedy)

    def damaged(self, name: str, why: str, recompute: bool, remedy: str | None = None) -> None:
        """Apply the damaged-file rule to ``name``: delete it and log (``recompute``; returns
        None), else raise ``CheckpointError`` naming it, ``why`` and ``remedy``."""
        path = self.path / name
        if recompute:
            log.warning("%s is damaged (%s); deleting it and recomputing", path, why)
            path.unlink(missing_ok=True)
            return None
        raise CheckpointError(f"{str(path)!r} is damaged ({why}); {remedy or 'delete it'}")

    def foreign(self) -> list[str]:
        """Entries of the folder this project did not write: files without a manifest record,
        and every subfolder (this project writes files only; they end in '/')."""
        if not self.path.is_dir():
            return []
        records = self.records(reload=True)
        ours = set(records) | {MANIFEST}
        return sorted(
            entry.name + "/" if entry.is_dir(follow_symlinks=False) else entry.name
            for entry in os.scandir(self.path)
            if entry.is_dir(follow_symlinks=False)
            or (entry.name not in ours and not (entry.is_file() and _is_tmp(entry.name, records)))
        )

    def claim(self, parameter: str, foreign_ok: bool = False) -> None:
        """Check that this folder, which ``parameter`` names as a run's own, holds only what
        tracin-we wrote: ``CheckpointError`` naming the foreign entries (or the damaged manifest)
        otherwise, before anything is read, written or deleted there. ``foreign_ok``: a cache
        folder of this project's own, where an unrecorded file is an older version's; a damaged
        manifest is refused all the same."""
        foreign = self.foreign()  # reloads the manifest, so ``hostile`` is current
        if self.hostile:
            raise CheckpointError(
                f"{parameter}={str(self.path)!r}: its {MANIFEST} is damaged: it names "
                f"{self.hostile[:5]}, which are not plain file names in the folder (never "
                "followed); nothing was deleted: check the folder and delete it yourself"
            )
        if foreign and not foreign_ok:
            raise CheckpointError(
                f"{parameter}={str(self.path)!r} holds entries that tracin-we did not write "
                f"({foreign[:10]}{' ...' if len(foreign) > 10 else ''}); it never replaces or "
                "deletes them, and nothing was deleted: choose a new or empty folder, or move "
                "them elsewhere"
            )

    def clear(self, parameter: str = "folder", foreign_ok: bool = False) -> None:
        """Delete every file this project wrote here. Refuses, deleting nothing, when the folder
        holds anything else or its manifest is damaged (``claim``; under ``foreign_ok`` an
        unrecorded file is left alone)."""
        self.claim(parameter, foreign_ok)
        for name in self.records():
            (self.path / name).unlink(missing_ok=True)
        self.remove_stale_tmp(everything=True)
        (self.path / MANIFEST).unlink(missing_ok=True)
        self._records = {}

    def remove_stale_tmp(self, everything: bool = False) -> list[Path]:
        """Delete temporary files left by killed writers: those of a process no longer running
        on this machine, of another machine when older than a day, and untagged ones (older
        versions). ``everything``: also those of live writers. Returns what was deleted."""
        if not self.path.is_dir():
            return []
        removed, records = [], self.records(reload=True)
        for path in self.path.glob(".*.tmp"):
            if not _is_tmp(path.name, records):
                continue
            tag = _TMP.match(path.name)
            if everything or tag is None or _abandoned(int(tag[1]), tag[2], path):
                path.unlink(missing_ok=True)
                removed.append(path)
        if removed:
            log.info("removed %d temporary files of interrupted writes in %s", len(removed), self)
        return removed

    def __str__(self) -> str:
        return str(self.path)


def _is_tmp(name: str, records: Mapping[str, str]) -> bool:
    """Whether ``name`` is a temporary file of this project's writers: tagged with its writer
    (``.<name>.<pid>@<host>.<random>.tmp``), or an older version's untagged one of a file the
    manifest records (so that a user's ``.backup.20240101.tmp`` is never taken for one)."""
    untagged = _UNTAGGED_TMP.match(name)
    return bool(_TMP.match(name) or (untagged and untagged[1] in records))


def _append_line(path: Path, line: str) -> None:
    """Append ``line`` to ``path`` in one write, never through a symbolic link."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as err:  # ELOOP: a link where the manifest should be
        raise CheckpointError(f"{str(path)!r} cannot be appended to ({err}); delete it") from err
    with os.fdopen(fd, "a") as manifest:
        manifest.write(line)


def _abandoned(pid: int, host: str, path: Path) -> bool:
    """Whether the writer ``pid`` on ``host`` of a temporary file can no longer finish it."""
    if host == socket.gethostname():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
        return False
    try:
        return time.time() - path.stat().st_mtime > _STALE_SECONDS
    except FileNotFoundError:  # renamed by its writer meanwhile
        return False
