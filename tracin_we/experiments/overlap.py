"""The no-word-overlap experiment (v1 §5): case deletion among the training texts that share the
fewest words with the test point.

For each test point z', only the ``candidate_fraction`` of training texts with the least TF-IDF
overlap with z' may be deleted (paper: 5,000 of 50,000, fraction 0.1), and the model is trained
with its word embeddings frozen (``TrainConfig(freeze_embeddings=True)``). Overlap is the cosine
of TF-IDF vectors of token ids, structural tokens ([PAD]/[CLS]/[SEP] for BERT) left out
(``least_overlap_candidates``).

The deletion itself is ``deletion.run_deletion``, run once per direction with precomputed score
matrices in which the non-candidates are pushed to the end of that direction's ranking
(``restrict_to_candidates``: −inf for DEL+, +inf for DEL−), so ``influence.top_k`` picks the top-k
*within* the candidates; the two sweeps share their baseline retrains through the retrain cache
and their tables are pooled into one AUC-DEL± summary (``deletion.auc_del``). Scores follow
``influence.scores``: positive = proponent; lower AUC-DEL+ and higher AUC-DEL− are better.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd
import torch
from datasets import DatasetDict

from tracin_we.core.inputs import Tensors, framing_ids, structural_ids
from tracin_we.core.paper import NO_OVERLAP, reports
from tracin_we.core.persistence import Folder
from tracin_we.core.result_folders import check_out_dir, claim_result_folder, save_tables
from tracin_we.core.stats import DELETION_METRICS
from tracin_we.core.tokenizer import load_tokenizer
from tracin_we.experiments.common import evaluation_inputs, result_identity, score_rows
from tracin_we.experiments.deletion import (
    DeletionConfig,
    DeletionResult,
    auc_del,
    crn_variance,
    run_deletion,
)
from tracin_we.influence.last_layer import tfidf_cosine


def least_overlap_candidates(
    train: Tensors, test: Tensors, fraction: float, ignore: tuple[int, ...] | None = None
) -> torch.Tensor:
    """Bool mask (n_test, n_train): per test text, the ``round(fraction · n_train)`` training texts
    with the lowest TF-IDF cosine to it (ties: lower training index first).

    ``train``/``test``: tensors with ``input_ids`` and ``attention_mask`` (N, T). The TF-IDF
    vectors count token ids of unmasked positions outside ``ignore`` (default: the ids that open
    or close every text, ``inputs.framing_ids``), idf fitted on ``train``
    (``influence.last_layer.tfidf_cosine``, the TracIn-TFIDF control's).
    """
    n_train = len(train["input_ids"])
    count = round(fraction * n_train)
    if not 0 < fraction <= 1 or count < 1:
        raise ValueError(
            f"candidate_fraction={fraction} must be in (0, 1] and keep at least one "
            f"of the {n_train} training texts"
        )
    if ignore is None:
        ignore = framing_ids([train, test])
    cosine = tfidf_cosine(train, test, tuple(ignore))
    order = torch.sort(cosine, dim=1, stable=True).indices[:, :count]
    mask = torch.zeros(cosine.shape, dtype=torch.bool)
    return mask.scatter_(1, order, True)


def overlap_summary(
    train: Tensors, test: Tensors, candidates: torch.Tensor, ignore: tuple[int, ...] | None = None
) -> pd.DataFrame:
    """Per test text: the largest TF-IDF cosine among its candidates and the median over all
    training texts, and how many candidates share no token (outside ``ignore``, default as in
    ``least_overlap_candidates``) at all."""
    if ignore is None:
        ignore = framing_ids([train, test])
    cosine = tfidf_cosine(train, test, tuple(ignore)).float()
    inside = cosine.masked_fill(~candidates, float("-inf"))
    return pd.DataFrame(
        {
            "candidate_max_cosine": inside.max(1).values.numpy(),
            "all_median_cosine": cosine.median(1).values.numpy(),
            "candidates_sharing_no_word": ((cosine == 0) & candidates).sum(1).numpy(),
            "n_candidates": candidates.sum(1).numpy(),
        }
    )


def restrict_to_candidates(
    scores: torch.Tensor, candidates: torch.Tensor, direction: str
) -> torch.Tensor:
    """``scores`` (n, n_train) with the non-candidates set to −inf (``"proponents"``) or +inf
    (``"opponents"``): ``influence.top_k`` in that direction then ranks every candidate before any
    non-candidate, i.e. returns the top-k within the candidates for k ≤ the number of candidates."""
    if direction not in DELETION_METRICS:
        raise ValueError(f"direction={direction!r}; allowed: {list(DELETION_METRICS)}")
    if scores.shape != candidates.shape:
        raise ValueError(
            f"scores {tuple(scores.shape)} and candidates "
            f"{tuple(candidates.shape)} must have the same shape"
        )
    fill = float("-inf") if direction == "proponents" else float("inf")
    return scores.float().masked_fill(~candidates, fill)


@dataclass
class NoOverlapResult:
    """The pooled sweep (``deletion``: its ``table``/``summary``/``crn`` cover both directions,
    ``out_dir`` holds the pooled tables), the candidate masks (n_points, n_train) of its
    ``points``, their ``overlap_summary`` (one row per point) and ``sweeps``: the per-direction
    ``run_deletion`` folders."""

    deletion: DeletionResult
    candidates: torch.Tensor
    overlap: pd.DataFrame
    sweeps: dict[str, Path]

    def metrics(self) -> dict:
        """What notebook 04 records: the sweep's (``DeletionResult.metrics``), the fewest
        candidates of any point and the largest TF-IDF cosine between a point and a candidate."""
        sweep = self.deletion.metrics()
        return {k: sweep[k] for k in ("n_points", "n_trained", "auc_del_plus", "auc_del_minus")} | {
            "n_candidates": int(self.candidates.sum(1).min()),
            "candidate_max_cosine": float(self.overlap["candidate_max_cosine"].max()),
        }


def check_candidates(config: DeletionConfig, candidate_fraction: float) -> int:
    """The number of candidates per test point, ``round(candidate_fraction · n_train)``, after
    checking that it is in [1, n_train] and at least every k of ``config.ks``."""
    n_train = config.train.data.n_train
    count = round(candidate_fraction * n_train) if 0 < candidate_fraction <= 1 else 0
    if count < 1 or isinstance(candidate_fraction, bool):
        raise ValueError(
            f"candidate_fraction={candidate_fraction!r} must be in (0, 1] and keep at least one "
            f"of the n_train={n_train} training texts"
        )
    if max(config.ks) > count:
        raise ValueError(
            f"ks={list(config.ks)}: each k must be <= the {count} candidates per test point "
            f"(candidate_fraction={candidate_fraction} of n_train={n_train})"
        )
    return count


def run_no_overlap(
    config: DeletionConfig,
    splits: DatasetDict | None = None,
    candidate_fraction: float = 0.1,
    scores: Mapping[str, torch.Tensor] | None = None,
    cache: str | os.PathLike | None = None,
    device: str = "cpu",
    client=None,
    progress: bool = True,
    out_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> NoOverlapResult:
    """Case deletion restricted, per test point, to its least-overlap candidates.

    ``config.train`` should have ``freeze_embeddings=True`` (the paper's setting; not enforced, so
    that the effect of freezing can be measured). ``scores``: as in ``run_deletion``
    ((n_test_split, n_train) by method); the rest are computed on the original model. Each k must
    be ≤ the number of candidates. Sweeps are saved by ``run_deletion`` under
    ``<cache>/deletion/<key>`` (the key covers the masked scores), the pooled tables in
    ``out_dir`` (default ``<cache>/no_overlap/<key>``), claimed once the scores are computed and
    before any retrain, as every evaluation's (``result_folders.claim_result_folder``).
    """
    check_candidates(config, candidate_fraction)
    check_out_dir(out_dir)  # a folder of foreign files: refused before any score or retrain
    splits, train_t, test_t, points = evaluation_inputs(config, splits)
    structural = structural_ids(load_tokenizer(config.train.data.tokenizer))
    point_t = {k: v[points] for k, v in test_t.items()}
    candidates = least_overlap_candidates(train_t, point_t, candidate_fraction, structural)
    n_candidates = int(candidates.sum(1).min())
    if max(config.ks) > n_candidates:
        raise ValueError(
            f"ks={list(config.ks)}: each k must be <= the {n_candidates} candidates "
            f"per test point (candidate_fraction={candidate_fraction})"
        )
    rows = score_rows(config, splits, train_t, test_t, points, scores or {}, cache, device)
    resolved = result_identity(config, splits, rows) | {"candidate_fraction": candidate_fraction}
    out_dir = claim_result_folder(
        resolved, "no_overlap", "no-overlap run", cache, out_dir, overwrite
    )
    sweeps: dict[str, DeletionResult] = {}
    for direction in config.directions:
        matrices = {
            m: _full_matrix(
                restrict_to_candidates(r, candidates, direction), points, len(test_t["labels"])
            )
            for m, r in rows.items()
        }
        sweeps[direction] = run_deletion(
            replace(config, directions=(direction,)),
            splits,
            scores=matrices,
            cache=cache,
            device=device,
            client=client,
            progress=progress,
        )
    pooled = _pool(config, list(sweeps.values()), Path(out_dir))
    overlap = overlap_summary(train_t, point_t, candidates, structural)
    return NoOverlapResult(pooled, candidates, overlap, {d: r.out_dir for d, r in sweeps.items()})


def _full_matrix(rows: torch.Tensor, points: list[int], n_test: int) -> torch.Tensor:
    """(n_test, n_train) with ``rows`` at ``points``: ``run_deletion`` takes whole-split matrices
    and reads only the rows of its points (the same ``balanced_indices`` draw); others are 0."""
    full = torch.zeros(n_test, rows.shape[1])
    full[points] = rows
    return full


def _pool(config: DeletionConfig, parts: list[DeletionResult], out_dir: Path) -> DeletionResult:
    """One result from per-direction sweeps: their tables and plans concatenated, AUC-DEL± and the
    CRN table recomputed over both (same bootstrap draws as a single sweep), saved in
    ``out_dir``."""
    table = pd.concat([p.table for p in parts], ignore_index=True)
    plan = pd.concat([p.plan for p in parts], ignore_index=True)
    result = DeletionResult(
        table,
        auc_del(table, config),
        crn_variance(table, config),
        parts[0].points,
        plan,
        out_dir,
        sum(p.n_trained for p in parts),
        sum(p.n_reused for p in parts),
    )
    folder = Folder(out_dir)
    folder.write_json("sweeps.json", {p.table["direction"].iloc[0]: str(p.out_dir) for p in parts})
    save_tables(out_dir, {"deletion": result.table, "auc_del": result.summary, "crn": result.crn})
    return result


def paper_comparison(summary: pd.DataFrame, dataset: str = "ag_news") -> pd.DataFrame:
    """The AUC-DEL± summary (``deletion.auc_del``) beside v1's no-overlap numbers (Toxicity,
    BERT-tiny; NaN where the paper has none): columns DEL+, DEL-, paper DEL+, paper DEL-. For a
    dataset the paper does not report (``paper.reports``), DEL+ and DEL- alone."""
    out = summary.set_index("method")[["DEL+", "DEL-"]].copy()
    if not reports(dataset):
        return out
    for name in ("DEL+", "DEL-"):
        out[f"paper {name}"] = [NO_OVERLAP[name].get(m, float("nan")) for m in out.index]
    return out
