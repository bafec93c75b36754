"""Influence-Last split over the positions and whole words of a training text (gradient × input).

Influence-Last (``last_layer.influence_last``) scores a training example z on a test example z' as
I(z) = v(z') · ∇_θ ℓ(z), θ the final layer (W, b) at the last checkpoint and
v(z') = (H + λI)⁻¹ ∇_θ ℓ(z') (``influence_last_vectors``); positive = proponent. With
∇_θ ℓ(z) = δ ⊗ [a, 1] (δ = softmax − onehot(y), a the final layer's input),

    I(z) = Σ_c δ_c (v_c · [a, 1]),

and position i of z gets (∂I/∂e_i) · e_i, e_i the word-embedding output there. The positions sum
to d/dt I(t·e)|_{t=1}: to first order, minus the change of I when the text's embeddings are zeroed,
which is what replacing a word by [PAD] with attention mask 0 does in the CNN. This is the word
influence targeted fixing (arXiv 2202.11844 v1 §6) needs for Influence-Last; TracIn-WE's own
split is exact (``words.word_scores``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import NamedTuple

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from tracin_we.core.checkpoints import StateDict, resolve_checkpoints
from tracin_we.core.inputs import Tensors, forward, structural_ids
from tracin_we.core.models import as_classifier, classifier_layer, word_embeddings
from tracin_we.influence import last_layer
from tracin_we.influence.context import Run, prepared
from tracin_we.influence.gradients import frozen
from tracin_we.influence.options import Options
from tracin_we.influence.words import word_spans, word_text

Checkpoints = Sequence[tuple[StateDict | str | os.PathLike, float]]


def influence_last_vectors(
    model: nn.Module,
    checkpoints: Checkpoints,
    train: Tensors,
    test: Tensors,
    damping: float = 1e-3,
    batch_size: int = 256,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """v(z') = (H + damping·I)⁻¹ ∇_θ ℓ(z') per test example, (n_test, C, h + bias), float64:
    ``last_layer.influence_last_vectors`` with the Hessian of the mean loss over ``train``, the
    model run in ``dtype``."""
    options = Options(batch_size=batch_size, device=device, dtype=dtype, damping=damping)
    model = as_classifier(model)
    with prepared(model, options):
        run = Run(model, resolve_checkpoints(checkpoints), options)
        return last_layer.influence_last_vectors(run, train, test).cpu()


class PositionInfluence(NamedTuple):
    score: torch.Tensor  # (B,) Influence-Last score of each example on its test point
    positions: torch.Tensor  # (B, T) gradient × input per position; 0 where masked


def influence_last_positions(
    model: nn.Module,
    checkpoints: Checkpoints,
    examples: Tensors,
    vectors: torch.Tensor,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> PositionInfluence:
    """Influence-Last score I = Σ_c δ_c (v_c · [a, 1]) of each training example (rows of
    ``examples``, (B, T)) on the test point of its ``vectors`` row ((B, C, h + bias), or one
    (C, h + bias) for all), and its split over positions: (∂I/∂e_i) · e_i; the model runs in
    ``dtype``."""
    vectors = vectors.expand(len(examples["input_ids"]), *vectors.shape[-2:])
    model = as_classifier(model)
    captured: dict[str, torch.Tensor] = {}

    def leaf(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        captured["e"] = output.detach().requires_grad_()
        return captured["e"]

    with prepared(model, Options(device=device, dtype=dtype)):
        model.load_state_dict(resolve_checkpoints(checkpoints)[-1][0])
        layer = classifier_layer(model)
        hooks = [
            word_embeddings(model).register_forward_hook(leaf),
            layer.register_forward_hook(
                lambda _m, inputs, _out: captured.__setitem__("a", inputs[0])
            ),
        ]
        batch = {k: v.to(device) for k, v in examples.items()}
        try:
            with torch.enable_grad(), frozen(model):
                logits = forward(model, batch)
                delta = logits.softmax(-1) - F.one_hot(batch["labels"], logits.shape[1])
                a = captured["a"].flatten(1)
                if layer.bias is not None:
                    a = torch.cat([a, a.new_ones(len(a), 1)], 1)
                score = torch.einsum("bc,bh,bch->b", delta, a, vectors.to(a))
                (gradient,) = torch.autograd.grad(score.sum(), captured["e"])
        finally:
            for hook in hooks:
                hook.remove()
        positions = (gradient * captured["e"]).sum(-1) * batch["attention_mask"]
    return PositionInfluence(score.detach().cpu(), positions.detach().cpu())


def influence_last_words(
    model: nn.Module,
    checkpoints: Checkpoints,
    examples: Tensors,
    vectors: torch.Tensor,
    tokenizer=None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    structural: tuple[int, ...] | None = None,
) -> list[pd.DataFrame]:
    """Per row of ``examples``: its whole words (``words.word_spans``; ``structural`` ids and
    masked positions are no word) with ``word``, ``start``, ``end`` and ``contribution`` = the
    sum of ``influence_last_positions`` over the word's positions, the columns of
    ``WordScores.words``. ``vectors`` as in ``influence_last_positions``. ``structural``:
    default ``inputs.structural_ids(tokenizer, [examples])`` ([CLS], [SEP], [PAD] for BERT)."""
    if structural is None:
        structural = structural_ids(tokenizer, [examples])
    positions = influence_last_positions(
        model, checkpoints, examples, vectors, device, dtype
    ).positions
    tables = []
    rows = zip(examples["input_ids"], examples["attention_mask"], positions, strict=True)
    for ids, mask, row in rows:
        valid = mask.bool() & ~torch.isin(ids, torch.tensor(structural))
        tables.append(
            pd.DataFrame(
                [
                    (word_text(ids, s, e, tokenizer), s, e, float(row[s:e].sum()))
                    for s, e in word_spans(ids, valid, tokenizer)
                ],
                columns=["word", "start", "end", "contribution"],
            )
        )
    return tables
