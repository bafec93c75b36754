"""Pretrained word embeddings for a model trained from scratch: a pretrained encoder's rows,
projected to the model's width.

For a pretrained encoder's word-embedding matrix E (V × D; MiniLM: 30,522 × 384) and a model of
embedding width d < D (the CNN and BERT-tiny: 128):

    X = E − mean_rows(E),   X = U S Vᵀ (SVD),   P = X V[:, :d]              (PCA to d dimensions)
    E₀ = P · (0.1 / std(P)),   E₀[pad] = 0

so the rows keep their largest directions of variation (words that are near in E stay near), at
std 0.1 (a fresh CNN embedding has std 1, BERT-tiny's 0.02; 0.1 is a first choice that trains
the CNN well, not a tuned one). Each column's sign
is fixed (its largest entry positive), so the same E gives the same E₀ under any LAPACK. The
projection is computed once per process and cached on disk (``<cache>/embedding_init/``,
hash-checked); ``TrainConfig(embedding_init="minilm-l6")`` uses it. Measured on the CNN (the
default recipe): ``docs/pretrained.md``.
"""

from __future__ import annotations

import logging
from functools import lru_cache

import torch
from safetensors.torch import load_file
from torch import nn

from tracin_we.core.models import word_embeddings
from tracin_we.core.persistence import Folder, cache_dir, tensor_digest
from tracin_we.core.pretrained import PRETRAINED, pretrained_folder

log = logging.getLogger(__name__)

TARGET_STD = 0.1


def pca_projection(embeddings: torch.Tensor, dim: int, pad_id: int) -> torch.Tensor:
    """(V, dim) float32: ``embeddings`` (V, D) centred, projected on its ``dim`` leading
    principal directions (signs fixed), scaled to std ``TARGET_STD``, row ``pad_id`` zero."""
    width = embeddings.shape[1]
    if not 0 < dim <= width:
        raise ValueError(f"dim={dim} must be in [1, {width}] (the pretrained width)")
    centred = embeddings.double() - embeddings.double().mean(0)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    projected = centred @ vh[:dim].T  # (V, dim)
    # An SVD's signs are arbitrary: make each column's largest entry positive, so any LAPACK
    # (and E or −E) gives the same rows.
    projected *= torch.sign(projected.gather(0, projected.abs().argmax(0, keepdim=True)))
    projected *= TARGET_STD / projected.std()
    projected[pad_id] = 0.0
    return projected.float()


def source_embeddings(name: str) -> torch.Tensor:
    """The word-embedding matrix of pretrained encoder ``name`` (its checked weights file)."""
    weights = load_file(str(pretrained_folder(name) / "model.safetensors"))
    (key,) = [k for k in weights if k.endswith("word_embeddings.weight")]
    return weights[key]


@lru_cache(maxsize=4)
def projected_embeddings(name: str, dim: int, pad_id: int) -> torch.Tensor:
    """``pca_projection`` of encoder ``name``'s embeddings, read from the cache when there."""
    if name not in PRETRAINED:
        raise ValueError(f"embedding_init={name!r} is unknown; allowed: {list(PRETRAINED)}")
    folder = Folder(cache_dir() / "embedding_init")
    weights = dict(PRETRAINED[name].sha256)["model.safetensors"][:12]  # the source's version
    file = f"{name}@{weights}-pca{dim}-std{TARGET_STD}-pad{pad_id}.pt"
    cached = folder.load_torch(file, recompute=True)
    if cached is not None:
        return cached
    log.info("embedding_init: projecting %s's word embeddings to %d dimensions", name, dim)
    projected = pca_projection(source_embeddings(name), dim, pad_id)
    folder.path.mkdir(parents=True, exist_ok=True)
    folder.save_torch(file, projected)
    return projected


def init_embeddings(model: nn.Module, name: str, pad_id: int) -> str:
    """Copy ``projected_embeddings`` into ``model``'s word embedding (same vocabulary: the
    shipped bert-base-uncased ids); returns the init's name for cache keys."""
    weight = word_embeddings(model).weight
    rows = projected_embeddings(name, weight.shape[1], pad_id)
    if rows.shape != weight.shape:
        raise ValueError(
            f"embedding_init={name!r} gives {tuple(rows.shape)} rows; the model's embedding is "
            f"{tuple(weight.shape)}: it needs the bert-base-uncased vocabulary (tokenizer=None)"
        )
    with torch.no_grad():
        weight.copy_(rows)
    return f"emb:{name}-pca@{tensor_digest(rows)}"
