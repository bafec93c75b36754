"""Showing influence to a reader: ranked tables, word highlighting, score distributions, and the
paper's "global term" diagnostic. Positive score = proponent throughout."""

from __future__ import annotations

import html

import pandas as pd
import torch
from datasets import Dataset

from tracin_we.core.inputs import structural_ids
from tracin_we.core.params import check_int
from tracin_we.influence import WordScores, top_k
from tracin_we.influence.words import word_spans, word_text
from tracin_we.training.recipe import TrainConfig


def check_listing(
    config: TrainConfig, per_class: int, k: int, diagnostic_per_class: int, diagnostic_k: int
) -> None:
    """Notebook 02's listing parameters against its config: ``per_class`` test points per class
    shown (of the ``diagnostic_per_class`` scored), ``k`` and ``diagnostic_k`` in [1, n_train];
    a ``ValueError`` naming the parameter otherwise."""
    n_classes, data = len(config.data.class_names), config.data
    context = (
        f" (n_train={data.n_train}, n_test={data.n_test}, {n_classes} classes, "
        f"diagnostic_per_class={diagnostic_per_class})"
    )
    check_int("diagnostic_per_class", diagnostic_per_class, 1, data.n_test // n_classes, context)
    check_int("per_class", per_class, 1, diagnostic_per_class, context)
    check_int("k", k, 1, data.n_train, context)
    check_int("diagnostic_k", diagnostic_k, 1, data.n_train, context)


def influential_table(
    scores_by_method: dict[str, torch.Tensor],
    row: int,
    train: Dataset,
    k: int,
    label_names: list[str],
) -> pd.DataFrame:
    """Top-``k`` proponents and opponents of test point ``row`` under each method, side by side:
    one line per (method, direction, rank) with the score, label and text of the example."""
    lines = []
    for method, matrix in scores_by_method.items():
        for direction, proponents in (("proponent", True), ("opponent", False)):
            best = top_k(matrix[row : row + 1], k, proponents=proponents)
            for rank, (i, s) in enumerate(
                zip(best.indices[0].tolist(), best.influence_scores[0].tolist(), strict=True)
            ):
                lines.append(
                    {
                        "method": method,
                        "direction": direction,
                        "rank": rank + 1,
                        "train_index": i,
                        "score": s,
                        "label": label_names[train[i]["label"]],
                        "text": train[i]["text"][:160],
                    }
                )
    return pd.DataFrame(lines)


def global_term(scores: torch.Tensor, k: int) -> dict:
    """How "global" a method's top examples are (v1 §4: with TracIn-Last one training example is a
    top proponent or opponent of 39 of 40 Toxicity test points).

    For scores (n_test, n_train): ``top1_shared`` is, averaged over test points j, the share of
    other test points whose top-``k`` proponents ∪ opponents contain j's top proponent;
    ``most_common_count`` is the number of test points whose top-``k`` proponents ∪ opponents
    contain the single most frequent training example, of ``n_test``.
    """
    n_test = scores.shape[0]
    tops = torch.cat([top_k(scores, k, True).indices, top_k(scores, k, False).indices], dim=1)
    member = torch.zeros(n_test, scores.shape[1], dtype=torch.bool)
    member.scatter_(1, tops, True)
    top1 = top_k(scores, 1, True).indices[:, 0]
    others = member[:, top1].float()  # [i, j]: does test i list j's top proponent
    others.fill_diagonal_(0)
    shared = (others.sum(0) / max(n_test - 1, 1)).mean().item()
    counts = member.sum(0)
    return {
        "top1_shared": shared,
        "most_common_count": int(counts.max()),
        "n_test": n_test,
        "most_common_index": int(counts.argmax()),
    }


def highlight_words(words: WordScores, tokenizer, input_ids: list[int]) -> str:
    """The training text as HTML, each shared word coloured by its contribution to the score
    (green = towards proponent, red = towards opponent; opacity ∝ |contribution|)."""
    spans = {(int(r.start), int(r.end)): float(r.contribution) for r in words.words.itertuples()}
    scale = max((abs(v) for v in spans.values()), default=1.0) or 1.0
    structural = set(structural_ids(tokenizer))  # [CLS], [SEP], [PAD]: not shown
    ids = torch.as_tensor(input_ids).tolist()
    pieces = []
    for start, end in word_spans(
        input_ids, torch.ones(len(input_ids), dtype=torch.bool), tokenizer
    ):
        if set(ids[start:end]) <= structural and (start, end) not in spans:
            continue
        word = word_text(input_ids, start, end, tokenizer)
        text = html.escape(word)
        if (start, end) in spans:
            value = spans[(start, end)]
            rgb = "0,150,0" if value > 0 else "200,0,0"
            alpha = 0.15 + 0.85 * abs(value) / scale
            text = (
                f'<span style="background: rgba({rgb},{alpha:.2f}); padding: 0 2px" '
                f'title="{value:+.3g}">{text}</span>'
            )
        pieces.append(text)
    return f'<p style="line-height: 1.8">{" ".join(pieces)}</p>'
