"""What every evaluation shares (deletion, no-overlap, LDS): its inputs (``evaluation_inputs``),
the score rows of its methods on its test points (``score_rows``), and the identity its saved
result is checked against (``result_identity``)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, replace
from typing import Any

import torch
from datasets import DatasetDict

from tracin_we import influence
from tracin_we.core.data import balanced_indices, fingerprint, make_splits
from tracin_we.core.inputs import Tensors, model_inputs
from tracin_we.core.persistence import tensor_digest
from tracin_we.training.recipe import config_identity
from tracin_we.training.train import train


def evaluation_inputs(
    config: Any, splits: DatasetDict | None
) -> tuple[DatasetDict, Tensors, Tensors, list[int]]:
    """What every evaluation (deletion, no-overlap, LDS) starts from: the splits (made from
    ``config.train.data`` when None), their train and test tensors, and the
    ``config.n_test_points`` test points balanced over classes (drawn with ``config.point_seed``).
    """
    splits = splits if splits is not None else make_splits(config.train.data)
    train_t, test_t = model_inputs(splits["train"]), model_inputs(splits["test"])
    points = balanced_indices(
        test_t["labels"],
        config.n_test_points,
        config.point_seed,
        config.train.data.num_classes,
        name="n_test_points",
    )
    return splits, train_t, test_t, points


def score_rows(
    config: Any,
    splits: DatasetDict,
    train_t: dict,
    test_t: dict,
    points: list[int],
    given: Mapping[str, torch.Tensor],
    cache: str | os.PathLike | None,
    device: str,
) -> dict[str, torch.Tensor]:
    """Each method's scores (n_points, n_train) for the chosen points: rows of ``given[method]``
    (n_test_split, n_train), else ``influence.scores`` on the original model's checkpoints."""
    shape = (len(test_t["labels"]), len(train_t["labels"]))
    extra = sorted(set(given) - set(config.methods))
    if extra:
        raise ValueError(f"scores has methods {extra} that are not in config.methods")
    for method, matrix in given.items():
        if tuple(matrix.shape) != shape:
            raise ValueError(
                f"scores[{method!r}] has shape {tuple(matrix.shape)}; expected "
                f"{shape} (test split × train split)"
            )
    rows = {m: given[m][points].float() for m in config.methods if m in given}
    for method, row in rows.items():
        if torch.isnan(row).any():
            raise ValueError(
                f"scores[{method!r}] has NaN at {int(torch.isnan(row).sum())} entries of the "
                "chosen test points' rows; NaN scores cannot be ranked: recompute them"
            )
    missing = [m for m in config.methods if m not in given]
    if missing:
        original = train(config.train, splits, cache=cache, device=device, progress=False)
        model, checkpoints = original.load_model(), original.checkpoint_pairs()
        test_points = {k: v[points] for k, v in test_t.items()}
        for method in missing:
            rows[method] = influence.scores(
                method,
                model,
                checkpoints,
                train_t,
                test_points,
                **config.method_options.get(method, {}),
            ).float()
    return rows


def explained_models(
    config: Any, given: Mapping[str, torch.Tensor] | None = None
) -> tuple[int, ...]:
    """The seeds of the trained models an evaluation explains: every seed's own model with
    ``config.model_per_seed``, else the recipe's (``config.train.seed``). Precomputed ``given``
    scores are one model's: refused where there are several."""
    models = tuple(config.seeds) if config.model_per_seed else (config.train.seed,)
    if given and len(models) > 1:
        raise ValueError(
            "scores: precomputed scores are one model's; with model_per_seed=True each seed's "
            "model is scored here: leave scores out, or set model_per_seed=False"
        )
    return models


def model_score_rows(
    config: Any,
    models: tuple[int, ...],
    splits: DatasetDict,
    train_t: dict,
    test_t: dict,
    points: list[int],
    given: Mapping[str, torch.Tensor],
    cache: str | os.PathLike | None,
    device: str,
) -> dict[int, dict[str, torch.Tensor]]:
    """``score_rows`` of each of ``models`` (``explained_models``), its recipe's seed replaced,
    by seed."""
    return {
        model: score_rows(
            replace(config, train=replace(config.train, seed=model)),
            *(splits, train_t, test_t, points, given, cache, device),
        )
        for model in models
    }


def identity_rows(by_model: Mapping[int, Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The score rows that name a result (``result_identity``): one model's by method, as they
    always were; several models' as ``method@seed<s>``."""
    if len(by_model) == 1:
        return dict(next(iter(by_model.values())))
    return {f"{m}@seed{s}": row for s, rows in by_model.items() for m, row in rows.items()}


def result_identity(config: Any, splits: DatasetDict, rows: Mapping[str, torch.Tensor]) -> dict:
    """What defines an evaluation over score rows (deletion, LDS): the resolved ``config``
    (without where the data lives), the data's fingerprint and a hash of each method's rows."""
    resolved = json.loads(json.dumps(asdict(config), default=str))
    resolved.pop("dask_scheduler", None)  # where retrains run, not what they give
    if not resolved.get("model_per_seed", True):
        del resolved["model_per_seed"]  # one model: the key it had before the option existed
    resolved["train"] = json.loads(json.dumps(config_identity(config.train), default=str))
    resolved["data_fingerprint"] = fingerprint(splits)
    resolved["scores_sha256"] = {m: tensor_digest(r) for m, r in rows.items()}
    return resolved
