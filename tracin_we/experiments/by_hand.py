"""TracIn-WE by hand: each step of arXiv 2202.11844 eq. 2 computed by its definition, small enough
to check by eye (``notebooks/00_tracin_we_by_hand.ipynb``).

``tracin_we.influence`` never forms a word-embedding gradient ∂ℓ/∂E (vocab × d): it keeps only the
rows of the tokens present. The functions here do form it, or spell out one term of a sum, so that
a reader can see why the efficient route is exact:

- ``dense_embedding_gradient``: ∂ℓ(z)/∂E for whole matrices, by autograd on ``E.weight``;
- ``position_gradients`` and ``gradient_table``: ∂ℓ/∂e_i at each input position, and the non-zero
  rows of ∂ℓ/∂E, each the sum g_w = Σ_{i: x_i = w} ∂ℓ/∂e_i over the positions of its token;
- ``dense_tracin_we``: Σ_c η_c ⟨∂ℓ(z)/∂E, ∂ℓ(z′)/∂E⟩ over the whole matrix;
- ``shared_word_terms``: the same score as Σ_c η_c Σ_{w ∈ x ∩ x′} g_w(z) · g_w(z′), term by term;
- ``last_layer_terms``: TracIn-Last's factors (a · a′ + 1) and δ · δ′ (δ = ∂ℓ/∂f) per checkpoint.

Memory: the dense routes hold N × vocab × d numbers; they are for teaching and tests, not for data
sets. Positive score = proponent, as everywhere in the package. Losses are cross-entropy at the
ground-truth label, in eval mode; every function restores the model as it found it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import pandas as pd
import torch
from datasets import Dataset
from torch import nn

from tracin_we.core.checkpoints import StateDict, resolve_checkpoints
from tracin_we.core.data import tokenize
from tracin_we.core.inputs import Tensors
from tracin_we.core.models import word_embeddings
from tracin_we.core.params import SEED_LIMIT, check_int, is_int
from tracin_we.influence.context import Run, prepared
from tracin_we.influence.gradients import batch_rows, embedding_grads, param_grads
from tracin_we.influence.last_layer import last_layer_kernel
from tracin_we.influence.options import Options, model_sizes, prepare_data
from tracin_we.training.loop import fit
from tracin_we.training.recipe import TrainConfig

Checkpoints = Sequence[tuple[StateDict | str | os.PathLike, float]]
Data = Dataset | list[dict] | Tensors


def hand_examples(
    sentences: Sequence[str], labels: Sequence[int], tokenizer, max_length: int
) -> Dataset:
    """Hand-written ``sentences`` with their ``labels``, tokenized and padded to ``max_length``
    (``input_ids``, ``attention_mask``, ``token_type_ids``, ``label``)."""
    if isinstance(sentences, str) or not sentences:
        raise ValueError("sentences must be a non-empty list of strings")
    if len(labels) != len(sentences):
        raise ValueError(
            f"labels has {len(labels)} entries for {len(sentences)} sentences; give one "
            "integer label per sentence"
        )
    if any(not isinstance(y, int) or y < 0 for y in labels):
        raise ValueError(f"labels={list(labels)} must be non-negative integers (class indices)")
    too_long = [s for s in sentences if len(tokenizer(s)["input_ids"]) > max_length]
    if too_long:
        raise ValueError(f"max_length={max_length} would truncate {too_long}; raise it")
    table = Dataset.from_dict({"text": list(sentences), "label": list(labels)})
    return tokenize(table, tokenizer, max_length)


def check_hand_parameters(
    sentences: Sequence[str],
    labels: Sequence[int],
    test_sentence: str,
    test_label: int,
    pair: int,
    synonym: Sequence[str],
    embed_dim: int,
    steps: int,
    adam_lr: float,
    checkpoint_steps: Sequence[int],
    text_length: int,
    seed: int,
) -> None:
    """Notebook 00's parameters, each named in its ``ValueError``: the training set (one label
    per sentence), the test point's class among the labels', ``pair`` indexing a sentence, two
    words in ``synonym``, and the recipe's sizes (``checkpoint_steps`` within ``steps``; the CNN
    needs ``text_length`` >= 9)."""
    if (
        isinstance(sentences, str)
        or not sentences
        or not all(isinstance(s, str) for s in sentences)
    ):
        raise ValueError(f"sentences={sentences!r} must be a non-empty list of strings")
    if len(labels) != len(sentences) or not all(is_int(y) and y >= 0 for y in labels):
        raise ValueError(
            f"labels={list(labels)!r} must be one non-negative integer per sentence "
            f"({len(sentences)} sentences)"
        )
    if not isinstance(test_sentence, str) or not test_sentence.strip():
        raise ValueError(f"test_sentence={test_sentence!r} must be a non-empty string")
    check_int("test_label", test_label, 0, max(labels))
    check_int("pair", pair, 0, len(sentences) - 1)
    if (
        isinstance(synonym, str)
        or len(synonym) != 2
        or not all(isinstance(w, str) for w in synonym)
    ):
        raise ValueError(f"synonym={synonym!r} must be two words: [word, its synonym]")
    check_int("embed_dim", embed_dim, 1, 4096)
    check_int("steps", steps, 1, 100_000)
    check_int("text_length", text_length, 9, 512)
    check_int("seed", seed, 0, SEED_LIMIT - 1)
    if isinstance(adam_lr, bool) or not isinstance(adam_lr, (int, float)) or not 0 < adam_lr < 1e3:
        raise ValueError(f"adam_lr={adam_lr!r} must be a finite number > 0")
    wrong = [s for s in checkpoint_steps if not (is_int(s) and 1 <= s <= steps)]
    if not checkpoint_steps or wrong or len(set(checkpoint_steps)) != len(checkpoint_steps):
        raise ValueError(
            f"checkpoint_steps={list(checkpoint_steps)!r} must be distinct integers in "
            f"[1, steps={steps}]"
        )


def fit_with_checkpoints(
    model: nn.Module, data: Data, config: TrainConfig
) -> list[tuple[StateDict, float]]:
    """Train ``model`` in place with ``loop.fit`` and return ``(state_dict, lr)`` after each epoch
    of ``config.checkpoint_epochs``: the ``checkpoints`` of ``influence.scores``. Nothing is
    written to disk (a full batch per epoch makes an epoch one step)."""
    saved: list[tuple[StateDict, float]] = []

    def keep(epoch: int, trained: nn.Module, _optimizer, _loss: float) -> None:
        if epoch in config.checkpoint_epochs:
            state = {k: v.detach().clone() for k, v in trained.state_dict().items()}
            saved.append((state, config.lr))

    tensors = prepare_data("data", data, None, word_embeddings(model).num_embeddings)
    fit(model, tensors, config, progress=False, on_epoch=keep)
    return saved


def dense_embedding_gradient(
    model: nn.Module, data: Data, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """(N, V, d): ∂ℓ(z_n)/∂E for each example z_n of ``data`` at the model's current weights, the
    whole word-embedding matrix E (V × d), by autograd on ``E.weight``."""
    options, tensors = _checked(model, data, device)
    with prepared(model, options):
        return _dense(model, tensors, options)


def dense_tracin_we(
    model: nn.Module,
    checkpoints: Checkpoints,
    train: Data,
    test: Data,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """(n_test, n_train): Σ_c η_c ⟨∂ℓ(z′)/∂E, ∂ℓ(z)/∂E⟩_F over the whole matrix E (eq. 2 before
    using its sparsity); equals ``influence.scores("tracin-we", ...)``. Positive = proponent."""
    options, train_t = _checked(model, train, device)
    test_t = _checked(model, test, device)[1]
    total = None
    with prepared(model, options):
        for _, lr in Run(model, resolve_checkpoints(checkpoints), options).each_checkpoint():
            train_g = _dense(model, train_t, options).flatten(1)
            test_g = _dense(model, test_t, options).flatten(1)
            part = lr * test_g @ train_g.T
            total = part if total is None else total + part
    return total


def position_gradients(
    model: nn.Module, example: dict, tokenizer=None, device: str | torch.device = "cpu"
) -> pd.DataFrame:
    """One line per non-[PAD] position i of ``example``: ``position``, ``token``, ``token_id``,
    ``‖∂ℓ/∂e_i‖`` and the first coordinates ``∂ℓ/∂e_i[0..2]`` (e_i = the word-embedding output)."""
    options, tensors = _checked(model, [example], device)
    with prepared(model, options):
        grads = embedding_grads(model, _on(tensors, options))[0].cpu()
    ids, kept = tensors["input_ids"][0], tensors["attention_mask"][0].bool()
    names = _names(ids.tolist(), tokenizer)
    frame = pd.DataFrame(
        {
            "position": kept.nonzero().flatten().tolist(),
            "token": [names[i] for i in kept.nonzero().flatten().tolist()],
            "token_id": ids[kept].tolist(),
            "‖∂ℓ/∂e_i‖": grads[kept].norm(dim=-1).tolist(),
        }
    )
    return _with_coordinates(frame, grads[kept], "∂ℓ/∂e_i")


def gradient_table(
    model: nn.Module, example: dict, tokenizer=None, device: str | torch.device = "cpu"
) -> pd.DataFrame:
    """The non-zero rows of ∂ℓ/∂E for one ``example``, at the model's current weights.

    One line per row w that is non-zero, or whose token occurs unmasked in the text: ``token``,
    ``token_id``, ``positions`` (where w occurs, [PAD] excluded), ``‖g_w‖``, the first coordinates
    ``g_w[0..2]``, and ``max |g_w − Σ positions|``: how far row w of the dense gradient is from
    Σ_{i: x_i = w} ∂ℓ/∂e_i (zero up to rounding: a repeated word's positions are summed).
    ``attrs["vocab_size"]`` holds V, the number of rows of E.
    """
    options, tensors = _checked(model, [example], device)
    with prepared(model, options):
        batch = _on(tensors, options)
        dense = _dense(model, batch, options)[0].cpu()
        positions = embedding_grads(model, batch)[0].cpu()
    ids, kept = tensors["input_ids"][0], tensors["attention_mask"][0].bool()
    present = set(ids[kept].tolist())
    nonzero = set((dense != 0).any(-1).nonzero().flatten().tolist())
    rows = sorted(present | nonzero)
    where = {w: [i for i in range(len(ids)) if kept[i] and int(ids[i]) == w] for w in rows}
    summed = torch.stack([positions[where[w]].sum(0) for w in rows])
    frame = pd.DataFrame(
        {
            "token": _names(rows, tokenizer),
            "token_id": rows,
            "positions": [tuple(where[w]) for w in rows],
            "‖g_w‖": dense[rows].norm(dim=-1).tolist(),
        }
    )
    frame = _with_coordinates(frame, dense[rows], "g_w")
    frame["max |g_w − Σ positions|"] = (dense[rows] - summed).abs().amax(-1).tolist()
    frame.attrs["vocab_size"] = dense.shape[0]
    return frame


def shared_word_terms(
    model: nn.Module,
    checkpoints: Checkpoints,
    train_example: dict,
    test_example: dict,
    tokenizer=None,
    device: str | torch.device = "cpu",
) -> pd.DataFrame:
    """Eq. 2 term by term for one pair (z = ``train_example``, z′ = ``test_example``): one line per
    checkpoint c and token w present in both texts, with ``checkpoint`` (its index), ``lr`` (η_c),
    ``token``, ``token_id``, ``g_w(z)·g_w(z′)`` and ``term`` = η_c g_w(z) · g_w(z′). The ``term``
    column sums to the TracIn-WE score of the pair."""
    options, train_t = _checked(model, [train_example], device)
    test_t = _checked(model, [test_example], device)[1]
    lines = []
    with prepared(model, options):
        run = Run(model, resolve_checkpoints(checkpoints), options)
        for c, (_, lr) in enumerate(run.each_checkpoint()):
            ours = batch_rows(model, _on(train_t, options))
            theirs = batch_rows(model, _on(test_t, options))
            row_of = {int(w): r for w, r in zip(theirs.ids, theirs.rows, strict=True)}
            for w, g in zip(ours.ids.tolist(), ours.rows, strict=True):
                if w in row_of:
                    dot = float(g @ row_of[w])
                    lines.append((c, lr, _names([w], tokenizer)[0], w, dot, lr * dot))
    columns = ["checkpoint", "lr", "token", "token_id", "g_w(z)·g_w(z′)", "term"]
    return pd.DataFrame(lines, columns=columns)


def last_layer_terms(
    model: nn.Module,
    checkpoints: Checkpoints,
    train: Data,
    test_example: dict,
    device: str | torch.device = "cpu",
) -> pd.DataFrame:
    """TracIn-Last of each training example on ``test_example``, factor by factor: one line per
    checkpoint c and training example i with ``checkpoint``, ``lr`` (η_c), ``train_index``,
    ``a·a′ + 1`` (the final layer's inputs; + 1 for its bias, omitted without one), ``δ·δ′``
    (δ = ∂ℓ/∂f = softmax − onehot(label)) and ``term`` = η_c (a·a′ + 1)(δ·δ′), since
    ∇_W ℓ = δ aᵀ and ∇_b ℓ = δ. Summing ``term`` per example gives ``scores("tracin-last")``."""
    options, train_t = _checked(model, train, device)
    test_t = _checked(model, [test_example], device)[1]
    lines = []
    with prepared(model, options):
        run = Run(model, resolve_checkpoints(checkpoints), options)
        kernel = last_layer_kernel(run)
        for c, (_, lr) in enumerate(run.each_checkpoint()):
            ours, theirs = kernel.features(run, train_t), kernel.features(run, test_t)
            activation = (ours["a"] @ theirs["a"][0] + float(kernel.bias)).cpu()
            saliency = (ours["delta"] @ theirs["delta"][0]).cpu()
            for i, (a, d) in enumerate(zip(activation.tolist(), saliency.tolist(), strict=True)):
                lines.append((c, lr, i, a, d, lr * a * d))
    columns = ["checkpoint", "lr", "train_index", "a·a′ + 1" if kernel.bias else "a·a′", "δ·δ′"]
    return pd.DataFrame(lines, columns=[*columns, "term"])


def _checked(model: nn.Module, data: Data, device: str | torch.device) -> tuple[Options, Tensors]:
    """Options in the model's own dtype, and ``data`` as validated tensors."""
    options = Options(device=device, dtype=next(model.parameters()).dtype)
    num_classes, vocab_size = model_sizes(model, "tracin-we", options)
    return options, prepare_data("data", data, num_classes, vocab_size)


def _on(tensors: Tensors, options: Options) -> Tensors:
    return {k: v.to(options.device) for k, v in tensors.items()}


def _dense(model: nn.Module, tensors: Tensors, options: Options) -> torch.Tensor:
    """(N, V, d) per-example ∂ℓ/∂E, the model already prepared (eval mode, device, dtype)."""
    weight = word_embeddings(model).weight
    name = next(n for n, p in model.named_parameters() if p is weight)
    flat = param_grads(model, tensors, [name], options.batch_size, options.device)
    return flat.view(len(flat), *weight.shape).cpu()


def _names(ids: list[int], tokenizer) -> list[str]:
    return tokenizer.convert_ids_to_tokens(ids) if tokenizer is not None else [str(i) for i in ids]


def _with_coordinates(frame: pd.DataFrame, vectors: torch.Tensor, name: str) -> pd.DataFrame:
    for j in range(min(3, vectors.shape[1])):
        frame[f"{name}[{j}]"] = vectors[:, j].tolist()
    return frame
