"""Targeted fixing (v1 §6): correct a model's mistakes by editing their top opponents.

A *mistake* is a test point z' the trained model gets wrong with p(true class) in ``p_range``
(paper: 40 mistakes, [0.3, 0.7]). For each mistake and method I (TracIn-WE-Topk or
Influence-Last), take the top-k opponents of z' under I (``influence.top_k(..., proponents=False)``;
positive score = proponent) and either

- ``"remove"``: delete them from the training set, or
- ``"replace"``: in each of them, replace its most negatively influential word on z' by [PAD]
  (id 0, attention mask 0), leaving the rest of the text where it was;

then retrain with the same recipe for each seed (same init and batch order, ``loop.fit``) and
count the mistake *fixed* when the retrained model predicts its true class. The control retrains
with nothing changed: what seeds alone fix. Each mistake is fixed on its own (one retrain per
mistake, method, fix and seed).

Word influence (which word to replace), positive = proponent, summed over a word's positions i:

- TracIn-WE-Topk: the word's term of the score, ``influence.word_scores(..., top_tokens=...)``:
  Σ_c η_c Σ_{i in the word} ∂ℓ(z)/∂e_i · g_{x_i}(z') (eq. 2–4, top-k positions only);
- Influence-Last: gradient × input of its score, ``influence.attribution.influence_last_words``:
  to first order, minus the change of the score when the word's embeddings are zeroed, which is
  what [PAD] with attention mask 0 does in the CNN. So the most negative word is the one whose
  removal raises the score the most (makes z the least of an opponent).

[CLS], [SEP] and [PAD] are never replaced. Retrains go through ``retrain.retrain_cached``: an edit's
[PAD]-ed words are applied where its job trains, and its results live in the ``RetrainStore`` of
the edited tensors, one file per (edit, seed), written atomically, so nothing is trained twice and
an interrupted run resumes. The figure is ``figures.fixing_figure``.
The word to replace and the edits are ``experiments.fixing_edits``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import pandas as pd
import torch
from datasets import DatasetDict

from tracin_we import influence
from tracin_we.core.data import fingerprint, make_splits
from tracin_we.core.inputs import PAD_ID, Tensors, model_inputs
from tracin_we.core.params import check_types, from_params
from tracin_we.core.persistence import Folder
from tracin_we.core.result_folders import claim_result_folder, save_tables
from tracin_we.core.tokenizer import load_tokenizer
from tracin_we.experiments.fixing_edits import (
    FIX_METHODS,
    Edit,
    check_p_range,
    select_mistakes,
    worst_words,
)
from tracin_we.training.loop import predict_proba
from tracin_we.training.recipe import TrainConfig, config_identity
from tracin_we.training.retrain import RetrainJob, retrain_cached
from tracin_we.training.train import train

log = logging.getLogger(__name__)

FIXES = ("remove", "replace")


@dataclass(frozen=True)
class FixingConfig:
    """A targeted-fixing run. Defaults: the paper's protocol (v1 §6)."""

    train: TrainConfig = field(default_factory=TrainConfig)  # the recipe, retrained per fix
    n_mistakes: int = 40  # paper: 40 (fewer are used when fewer exist)
    p_range: tuple[float, float] = (0.3, 0.7)  # paper: wrong with p(true class) in [0.3, 0.7]
    k: int = 50  # opponents removed or edited per mistake (paper: 50)
    methods: tuple[str, ...] = FIX_METHODS
    fixes: tuple[str, ...] = FIXES
    top_tokens: int = 10  # TracIn-WE-Topk: positions kept per text, eqs. 3–4 (paper: 10)
    damping: float = 1e-3  # Influence-Last: H + damping·I (influence.scores' default)
    seeds: tuple[int, ...] = tuple(range(10))  # paper: 10 retrains
    n_workers: int | None = None  # retrain processes; None: one per core

    def __post_init__(self) -> None:
        check_types(self)
        for name in ("p_range", "methods", "fixes", "seeds"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        n_train = self.train.data.n_train
        if not (isinstance(self.k, int) and 0 < self.k < n_train):
            raise ValueError(f"k={self.k} must be an integer with 0 < k < n_train={n_train}")
        for name in ("n_mistakes", "top_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be a positive integer")
        check_p_range(self.p_range)
        for name, allowed in (("methods", FIX_METHODS), ("fixes", FIXES)):
            values = getattr(self, name)
            if not values or len(set(values)) != len(values) or set(values) - set(allowed):
                raise ValueError(
                    f"{name}={list(values)}: give distinct values among {list(allowed)}"
                )
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds={list(self.seeds)} must be a non-empty list of distinct ints")
        if not self.damping > 0:
            raise ValueError(
                f"damping={self.damping} must be > 0 (the last layer's Hessian is singular "
                "without it)"
            )
        if self.n_mistakes > self.train.data.n_test:
            raise ValueError(
                f"n_mistakes={self.n_mistakes} must be <= n_test={self.train.data.n_test}"
            )
        if self.n_workers is not None and self.n_workers < 1:
            raise ValueError(f"n_workers={self.n_workers} must be a positive integer or None")

    @classmethod
    def from_params(cls, **params) -> FixingConfig:
        """Build from flat notebook/preset parameters: this class's own fields, the rest going to
        its ``TrainConfig`` (``tracin_we.core.params``); unknown names are an error."""
        return from_params(cls, params)

    @property
    def n_retrains(self) -> int:
        """Retrains the run needs at most: per seed, the unedited control and one per (mistake,
        method, fix); fewer when cached or when fewer mistakes exist."""
        return len(self.seeds) * (1 + self.n_mistakes * len(self.methods) * len(self.fixes))


def retrain_edits(
    config: TrainConfig,
    edits: Sequence[Edit],
    seeds: Sequence[int],
    train: Tensors,
    test: Tensors,
    cache: str | os.PathLike | None = None,
    n_workers: int | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """Softmax probabilities (len(edits), len(seeds), n_test, C) of the model of each seed
    retrained with ``config``'s recipe on each edited training set (``Edit()``: the baseline).

    Each distinct (edit, seed) is read from, or trained into, the ``RetrainStore`` of its edited
    tensors (``retrain.retrain_cached``); the missing ones run in ``n_workers`` processes
    (default: one per core) of one torch thread each."""
    tasks = [(edit, int(seed)) for edit in edits for seed in seeds]
    done = retrain_cached(
        config,
        [RetrainJob(seed, edit.removed) for edit, seed in tasks],
        train,
        test,
        cache=cache,
        edits=[edit if edit.masked else None for edit, _ in tasks],
        backend="joblib",
        n_workers=n_workers,
        threads=1,
        progress=progress,
    )
    return done.probabilities.view(len(edits), len(seeds), *done.probabilities.shape[1:])


def fixing_plan(
    mistakes: Sequence[int],
    opponents: dict[str, torch.Tensor],
    words: dict[str, pd.DataFrame],
    fixes: Sequence[str],
    pad_id: int = PAD_ID,
) -> pd.DataFrame:
    """One row per (mistake, method, fix) with its ``edit`` and ``n_edited`` (training texts
    removed or changed), plus a ``control`` row per mistake (``Edit()``, nothing changed).
    ``opponents[method]``: (n_mistakes, k) indices; ``words[method]``: ``worst_words``' table;
    ``pad_id``: the tokenizer's [PAD], written over the replaced words."""
    rows = [
        {"point": p, "method": "control", "fix": "none", "edit": Edit(), "n_edited": 0}
        for p in mistakes
    ]
    for method, top in opponents.items():
        for j, point in enumerate(mistakes):
            if "remove" in fixes:
                edit = Edit(removed=tuple(top[j].tolist()))
                rows.append(
                    {
                        "point": point,
                        "method": method,
                        "fix": "remove",
                        "edit": edit,
                        "n_edited": len(edit.removed),
                    }
                )
            if "replace" in fixes:
                table = words[method]
                chosen = table[(table["test_row"] == j) & (table["start"] >= 0)]
                edit = Edit(
                    masked=tuple(
                        zip(chosen["train_index"], chosen["start"], chosen["end"], strict=True)
                    ),
                    pad_id=pad_id,
                )
                rows.append(
                    {
                        "point": point,
                        "method": method,
                        "fix": "replace",
                        "edit": edit,
                        "n_edited": len(chosen),
                    }
                )
    return pd.DataFrame.from_records(rows)


def fixing_table(
    plan: pd.DataFrame, labels: torch.Tensor, probabilities: torch.Tensor, seeds: Sequence[int]
) -> pd.DataFrame:
    """One row per (plan row, seed): ``p_true`` = the retrained p(true class) of the mistake,
    ``fixed`` = its argmax is the true class; ``p_control``/``fixed_control``: the same for that
    seed's unedited retrain. ``probabilities``: (len(plan), len(seeds), n_test, C), plan order."""
    control = {row.point: i for i, row in enumerate(plan.itertuples()) if row.method == "control"}
    records = []
    for i, row in enumerate(plan.itertuples()):
        label = int(labels[row.point])
        for s, seed in enumerate(seeds):
            probs = probabilities[i, s, row.point]
            base = probabilities[control[row.point], s, row.point]
            records.append(
                {
                    "point": row.point,
                    "label": label,
                    "method": row.method,
                    "fix": row.fix,
                    "n_edited": row.n_edited,
                    "seed": seed,
                    "p_true": float(probs[label]),
                    "fixed": int(probs.argmax()) == label,
                    "p_control": float(base[label]),
                    "fixed_control": int(base.argmax()) == label,
                }
            )
    return pd.DataFrame.from_records(records)


def fixed_share(table: pd.DataFrame) -> pd.DataFrame:
    """Per (method, fix): ``share_fixed`` over (mistake, seed) pairs; ``newly_fixed``: share of
    pairs fixed whose unedited retrain of the same seed is not (what the edit, not the seed,
    fixed); ``mistakes_fixed``: share of mistakes fixed by more than half of the seeds;
    ``mean_dp``: mean p_true − p_control; counts and ``mean_edited`` (texts changed per fix)."""
    table = table.assign(
        dp=table["p_true"] - table["p_control"], new=table["fixed"] & ~table["fixed_control"]
    )
    per_point = table.groupby(["method", "fix", "point"])["fixed"].mean()
    out = table.groupby(["method", "fix"]).agg(
        share_fixed=("fixed", "mean"),
        newly_fixed=("new", "mean"),
        mean_dp=("dp", "mean"),
        n_points=("point", "nunique"),
        n_retrains=("fixed", "size"),
        mean_edited=("n_edited", "mean"),
    )
    out["mistakes_fixed"] = (per_point > 0.5).groupby(["method", "fix"]).mean()
    return out.reset_index()


@dataclass
class FixingResult:
    """``table``: per (mistake, method, fix, seed), ``fixing_table``; ``summary``: ``fixed_share``;
    ``mistakes``: test indices; ``p_original``: the trained model's p(true class) of each;
    ``words``: per method, the replaced words (``worst_words``); ``plan``: the edits."""

    table: pd.DataFrame
    summary: pd.DataFrame
    mistakes: list[int]
    p_original: list[float]
    words: dict[str, pd.DataFrame]
    plan: pd.DataFrame
    out_dir: Path

    def metrics(self) -> dict:
        """What notebook 05 records: per "method fix", the share fixed, the share newly fixed
        (beyond the control's) and the mean change of p(true class); the control's share."""
        by_fix = self.summary.set_index(["method", "fix"])
        per_fix = {
            name: {f"{m} {f}": float(v) for (m, f), v in by_fix[column].items()}
            for name, column in (
                ("share_fixed", "share_fixed"),
                ("newly_fixed", "newly_fixed"),
                ("mean_dp", "mean_dp"),
            )
        }
        return {
            "n_mistakes": len(self.mistakes),
            "n_retrains": int(self.summary["n_retrains"].sum()),
            "control_share_fixed": float(by_fix.loc[("control", "none"), "share_fixed"]),
            **per_fix,
        }


def run_fixing(
    config: FixingConfig,
    splits: DatasetDict | None = None,
    cache: str | os.PathLike | None = None,
    device: str = "cpu",
    progress: bool = True,
    out_dir: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> FixingResult:
    """Train (or reuse) the model of ``config.train``, pick its mistakes, fix each by every
    method and fix, retrain over ``config.seeds`` and tabulate what got fixed. Tables are saved
    beside the resolved config in ``out_dir`` (default ``<cache>/fixing/<key>``), claimed before
    any work as every evaluation's (``result_folders.claim_result_folder``: another run's folder
    is refused unless ``overwrite``, a folder of foreign files always)."""
    splits = splits if splits is not None else make_splits(config.train.data)
    resolved = _resolved(config, splits)
    out_dir = claim_result_folder(resolved, "fixing", "fixing run", cache, out_dir, overwrite)
    train_t, test_t = model_inputs(splits["train"]), model_inputs(splits["test"])
    original = train(config.train, splits, cache=cache, device=device, progress=False)
    model, checkpoints = original.load_model(), original.checkpoint_pairs()
    probabilities = predict_proba(model, test_t, device=device)
    mistakes = select_mistakes(probabilities, test_t["labels"], config.n_mistakes, config.p_range)
    mistakes_t = {k: v[mistakes] for k, v in test_t.items()}
    options = {
        "tracin-we-topk": {"top_tokens": config.top_tokens},
        "influence-last": {"damping": config.damping},
    }
    opponents = {
        m: influence.top_k(
            influence.scores(
                m, model, checkpoints, train_t, mistakes_t, device=device, **options[m]
            ),
            config.k,
            proponents=False,
        ).indices
        for m in config.methods
    }
    tokenizer = load_tokenizer(config.train.data.tokenizer)
    words = (
        {
            m: worst_words(
                m,
                model,
                checkpoints,
                train_t,
                mistakes_t,
                opponents[m],
                tokenizer,
                config.top_tokens,
                config.damping,
                device,
            )
            for m in config.methods
        }
        if "replace" in config.fixes
        else {}
    )
    plan = fixing_plan(mistakes, opponents, words, config.fixes, tokenizer.pad_token_id)
    retrained = retrain_edits(
        config.train,
        list(plan["edit"]),
        config.seeds,
        train_t,
        test_t,
        cache,
        config.n_workers,
        progress,
    )
    table = fixing_table(plan, test_t["labels"], retrained, config.seeds)
    p_original = probabilities[mistakes, test_t["labels"][mistakes]].tolist()
    result = FixingResult(table, fixed_share(table), mistakes, p_original, words, plan, out_dir)
    _save(result)
    return result


def _resolved(config: FixingConfig, splits: DatasetDict) -> dict:
    """The config as saved beside the results: without where data lives or how many workers."""
    resolved = json.loads(json.dumps(asdict(replace(config, n_workers=None)), default=str))
    resolved["train"] = json.loads(json.dumps(config_identity(config.train), default=str))
    return resolved | {"data_fingerprint": fingerprint(splits)}


def _save(result: FixingResult) -> None:
    """The mistakes and the tables beside ``config.json``, recorded in the folder's manifest."""
    Folder(result.out_dir).write_json(
        "mistakes.json", {"mistakes": result.mistakes, "p_original": result.p_original}
    )
    words = pd.concat([w.assign(method=m) for m, w in result.words.items()] or [pd.DataFrame()])
    save_tables(
        result.out_dir, {"fixing": result.table, "fixed_share": result.summary, "words": words}
    )
