"""What targeted fixing picks and edits (v1 §6): the mistakes, the word of a training text to
replace, and the edit itself.

``select_mistakes`` picks the test points the model gets wrong with p(true class) in a range.

For a mistake z' and its top opponents, ``worst_words`` finds in each the word whose influence on
z' is the most negative (positive = proponent): TracIn-WE-Topk's word term of the score
(``influence.word_scores(..., top_tokens=...)``), or Influence-Last's gradient × input
(``influence.attribution.influence_last_words``). An ``Edit`` removes training examples or
[PAD]s words in them (id 0, attention mask 0), and ``apply_edit`` gives the tensors it trains on.
[CLS], [SEP] and [PAD] are never replaced."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from tracin_we import influence
from tracin_we.core.inputs import PAD_ID, Tensors, structural_ids
from tracin_we.influence import Checkpoints
from tracin_we.influence.attribution import influence_last_vectors, influence_last_words

log = logging.getLogger(__name__)

FIX_METHODS = ("tracin-we-topk", "influence-last")  # where opponents and words come from


def most_negative_word(
    words: pd.DataFrame, input_ids: torch.Tensor, structural: tuple[int, ...]
) -> pd.Series | None:
    """The row of ``words`` (columns ``start``, ``end``, ``contribution``) with the most negative
    contribution, words made only of ``structural`` ids ([CLS]/[SEP]/[PAD]:
    ``inputs.structural_ids``) left out; None when none is negative."""
    special = torch.isin(input_ids, torch.tensor(structural))
    usable = words[
        [not bool(special[s:e].all()) for s, e in zip(words["start"], words["end"], strict=True)]
    ]
    if not len(usable) or usable["contribution"].min() >= 0:
        return None
    return usable.loc[usable["contribution"].idxmin()]


def worst_words(
    method: str,
    model: nn.Module,
    checkpoints: Checkpoints,
    train: Tensors,
    test: Tensors,
    opponents: torch.Tensor,
    tokenizer=None,
    top_tokens: int = 10,
    damping: float = 1e-3,
    device: str = "cpu",
) -> pd.DataFrame:
    """For each test row j and each of its opponents ``opponents[j]`` ((n_test, k) training
    indices), the opponent's most negatively influential word on test j under ``method``: one row
    per (``test_row``, ``rank``) with ``train_index``, ``start``, ``end``, ``word``,
    ``contribution`` (NaN/−1 where the opponent has no negative word)."""
    if method not in FIX_METHODS:
        raise ValueError(f"method={method!r}; allowed: {list(FIX_METHODS)}")
    vectors = (
        influence_last_vectors(model, checkpoints, train, test, damping, device=device)
        if method == "influence-last"
        else None
    )
    structural = structural_ids(tokenizer, [train])
    rows = []
    for j, indices in enumerate(opponents.tolist()):
        if vectors is not None:
            chosen = {k: v[indices] for k, v in train.items()}
            tables = influence_last_words(
                model, checkpoints, chosen, vectors[j], tokenizer, device, structural=structural
            )
        else:
            tables = [
                influence.word_scores(
                    model,
                    checkpoints,
                    _example(train, i),
                    _example(test, j),
                    tokenizer,
                    top_tokens=top_tokens,
                    device=device,
                ).words
                for i in indices
            ]
        for rank, (i, words) in enumerate(zip(indices, tables, strict=True)):
            ids = train["input_ids"][i]
            worst = most_negative_word(words, ids, structural)
            rows.append(_word_row(j, rank, i, worst, ids, tokenizer))
    return pd.DataFrame.from_records(rows)


def _example(data: Tensors, i: int) -> dict:
    return {k: v[i].tolist() for k, v in data.items()}


def _word_row(
    test_row: int,
    rank: int,
    train_index: int,
    worst: pd.Series | None,
    ids: torch.Tensor,
    tokenizer,
) -> dict:
    row = {"test_row": test_row, "rank": rank, "train_index": train_index}
    if worst is None:
        return row | {"start": -1, "end": -1, "word": None, "contribution": float("nan")}
    start, end = int(worst["start"]), int(worst["end"])
    piece_ids = ids[start:end].tolist()
    word = tokenizer.decode(piece_ids) if tokenizer is not None else " ".join(map(str, piece_ids))
    return row | {
        "start": start,
        "end": end,
        "word": word,
        "contribution": float(worst["contribution"]),
    }


@dataclass(frozen=True)
class Edit:
    """A change of the training set: examples ``removed`` (sorted training indices) and
    ``masked`` spans (training index, start, end): positions [start, end) become ``pad_id`` (the
    tokenizer's [PAD]: 0 for BERT, 1 for RoBERTa) with attention mask 0 (and token type 0)."""

    removed: tuple[int, ...] = ()
    masked: tuple[tuple[int, int, int], ...] = ()
    pad_id: int = PAD_ID

    def __post_init__(self) -> None:
        object.__setattr__(self, "removed", tuple(sorted({int(i) for i in self.removed})))
        masked = tuple(sorted({tuple(int(x) for x in span) for span in self.masked}))
        bad = [s for s in masked if len(s) != 3 or min(s) < 0 or s[1] >= s[2]]
        if bad:
            raise ValueError(
                f"masked={bad[:3]}: give (train index, start, end) with 0 <= start < end"
            )
        object.__setattr__(self, "masked", masked)

    def __call__(self, train: Tensors) -> Tensors:
        """The training tensors this edit trains on (``apply_edit``): a ``retrain.DataEdit``."""
        return apply_edit(train, self)


def apply_edit(train: Tensors, edit: Edit) -> Tensors:
    """``train`` with ``edit.masked`` applied (a copy; unchanged tensors are shared).
    ``edit.removed`` is not applied here: it becomes the retrain job's keep mask."""
    if not edit.masked:
        return train
    out = dict(train)
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        if key in out:
            out[key] = out[key].clone()
    n, length = out["input_ids"].shape
    for i, start, end in edit.masked:
        if i >= n or end > length:
            raise ValueError(
                f"masked span {(i, start, end)} is outside the training tensors ({n} × {length})"
            )
        out["input_ids"][i, start:end] = edit.pad_id
        out["attention_mask"][i, start:end] = 0
        if "token_type_ids" in out:
            out["token_type_ids"][i, start:end] = 0
    return out


def check_p_range(p_range: Sequence[float]) -> None:
    if len(p_range) != 2 or not 0 <= p_range[0] < p_range[1] <= 1:
        raise ValueError(f"p_range={list(p_range)} must be [low, high] with 0 <= low < high <= 1")


def select_mistakes(
    probabilities: torch.Tensor,
    labels: torch.Tensor,
    n_mistakes: int,
    p_range: Sequence[float] = (0.3, 0.7),
) -> list[int]:
    """Indices of the first ``n_mistakes`` rows (in order) that are wrong (argmax ≠ label) with
    low ≤ p(label) ≤ high; fewer when fewer exist. ``probabilities`` (n, C), ``labels`` (n,)."""
    if n_mistakes < 1:
        raise ValueError(f"n_mistakes={n_mistakes} must be a positive integer")
    check_p_range(p_range)
    p_true = probabilities.gather(1, labels.long().unsqueeze(1)).squeeze(1)
    wrong = probabilities.argmax(1) != labels
    chosen = torch.nonzero(wrong & (p_true >= p_range[0]) & (p_true <= p_range[1])).flatten()
    if not len(chosen):
        raise ValueError(
            f"p_range={list(p_range)}: no test point is a mistake with p(true "
            f"class) in this range ({int(wrong.sum())} of {len(labels)} are "
            "wrong); widen p_range or use more test points"
        )
    if len(chosen) < n_mistakes:
        log.warning(
            "only %d mistakes with p(true class) in %s; n_mistakes=%d asked",
            len(chosen),
            list(p_range),
            n_mistakes,
        )
    return chosen[:n_mistakes].tolist()
