"""Word-level decomposition of a TracIn-WE score: one term per shared token (arXiv 2202.11844
v1 eq. 2).

    score(z, z') = Σ_c η_c Σ_{w shared} g_w(z) · g_w(z')
                 = Σ_c η_c Σ_{positions i of z} ∂ℓ/∂e_i · g_{x_i}(z')    (c = checkpoint),

so the score splits exactly over shared token ids and over the training text's positions, hence
over its whole words (what targeted fixing edits, §6). Positive = proponent.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from tracin_we.checkpoints import StateDict, resolve_checkpoints
from tracin_we.influence.context import Run, prepared
from tracin_we.influence.embedding import embedding_rows, kept_positions
from tracin_we.influence.gradients import batches, embedding_grads
from tracin_we.influence.options import Options, model_sizes, prepare_data
from tracin_we.inputs import Tensors
from tracin_we.models import as_classifier, pad_token_id
from tracin_we.tokenizer import VOCAB_SIZE, load_tokenizer


@dataclass(frozen=True)
class WordScores:
    """One (train, test) pair's TracIn-WE score and its exact split (positive = proponent).

    ``tokens``: a row per token id present in both texts — ``token_id``, ``token`` (None without
    a tokenizer: ``tokenizer=None``, or a model whose vocabulary is not the shipped one),
    ``contribution`` = Σ_c η_c g_w(z) · g_w(z').
    ``words``: the training text's whole words (``word_spans``: pieces joined into words)
    holding a shared token — ``word``, ``start``, ``end`` (positions [start, end) in the
    training text), ``contribution`` = the sum over its positions.
    Each ``contribution`` column sums to ``score`` (up to rounding).
    """

    score: float
    tokens: pd.DataFrame
    words: pd.DataFrame


def word_scores(
    model: nn.Module,
    checkpoints: Sequence[tuple[StateDict | str | os.PathLike, float]],
    train_example: dict,
    test_example: dict,
    tokenizer: PreTrainedTokenizerBase | str | None = "auto",
    top_tokens: int | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> WordScores:
    """Split the TracIn-WE score of ``train_example`` (z) on ``test_example`` (z') by shared token
    and by whole word of z. With ``top_tokens``, TracIn-WE-Topk's score (that many positions of
    each text, those with the largest ‖∂ℓ/∂e_i‖). ``model``: as in ``scores`` (a plain
    ``transformers`` classifier included).

    ``tokenizer`` names the tokens and finds word pieces: ``"auto"`` (default) is the project's
    shipped BERT uncased tokenizer (``tracin_we.tokenizer``) when the model's word embedding has
    its 30,522 rows, else none; None shows token ids; or give the model's own tokenizer."""
    chosen = Options.top_tokens if top_tokens is None else top_tokens  # validated by Options
    options = Options(device=device, dtype=dtype, top_tokens=chosen)
    model = as_classifier(model)
    num_classes, vocab_size = model_sizes(model, "tracin-we", options)
    pad = pad_token_id(model)
    train = prepare_data("train_example", [train_example], num_classes, vocab_size, pad)
    test = prepare_data("test_example", [test_example], num_classes, vocab_size, pad)
    tokenizer = _resolve_tokenizer(tokenizer, vocab_size)
    run = Run(model, resolve_checkpoints(checkpoints), options)
    ids = train["input_ids"][0]
    contribution = torch.zeros(len(ids), dtype=torch.float64)
    shared = torch.zeros(len(ids), dtype=torch.bool)
    with prepared(model, options, probe=test):
        for _, lr in run.each_checkpoint():
            part, part_shared = _position_contributions(run, train, test, top_tokens)
            contribution += lr * part.double().cpu()
            shared |= part_shared.cpu()
    pieces = _pieces(ids, tokenizer)
    return WordScores(
        float(contribution.sum()),
        _token_table(ids, contribution, shared, pieces),
        _word_table(ids, train["attention_mask"][0].bool(), contribution, shared, tokenizer),
    )


def _resolve_tokenizer(
    tokenizer: PreTrainedTokenizerBase | str | None, vocab_size: int | None
) -> PreTrainedTokenizerBase | None:
    """``word_scores``' ``tokenizer`` argument → a tokenizer or None."""
    if not (isinstance(tokenizer, str) and tokenizer == "auto"):
        if isinstance(tokenizer, str):
            raise ValueError(
                f"tokenizer={tokenizer!r}; allowed: 'auto', None or a tokenizer object "
                "(tracin_we.tokenizer.load_tokenizer(name) loads one by name)"
            )
        return tokenizer
    return load_tokenizer() if vocab_size == VOCAB_SIZE else None


def word_spans(
    input_ids: torch.Tensor, valid: torch.Tensor, tokenizer=None
) -> list[tuple[int, int]]:
    """Whole words of one text, as [start, end) position ranges over its ``valid`` positions
    ((T,) bool). A piece continues the word ending just before it when it is a WordPiece piece
    starting with ``##``, or, for a tokenizer whose pieces open words with a mark
    (``word_start_mark``: byte-level BPE's ``Ġ``, SentencePiece's ``▁``), when it lacks that mark.
    Special tokens are words of their own. Without a tokenizer every valid position is a word."""
    pieces = _pieces(input_ids, tokenizer)
    mark, special = word_start_mark(tokenizer), _special_tokens(tokenizer)
    spans: list[list[int]] = []
    for i in torch.as_tensor(valid).nonzero().flatten().tolist():
        joins = spans and spans[-1][1] == i and pieces[i - 1] not in special
        if joins and _continues_word(pieces[i], mark, special):
            spans[-1][1] = i + 1
        else:
            spans.append([i, i + 1])
    return [(start, end) for start, end in spans]


def word_text(input_ids: torch.Tensor, start: int, end: int, tokenizer=None) -> str:
    """The word at positions [start, end): its pieces joined without ``##``, or decoded by the
    tokenizer where pieces carry a word-start mark (``Ġ``, ``▁``); token ids without a
    tokenizer."""
    ids = torch.as_tensor(input_ids)[start:end].tolist()
    pieces = _pieces(ids, tokenizer)
    if word_start_mark(tokenizer) is not None:
        return tokenizer.convert_tokens_to_string(pieces).strip()
    return "".join(
        str(i) if p is None else p[2:] if p.startswith("##") else p
        for i, p in zip(ids, pieces, strict=True)
    )


# Byte-level BPE (GPT-2, RoBERTa) opens a word with Ġ; SentencePiece (T5, ALBERT, XLM-R) with ▁.
WORD_START_MARKS = ("Ġ", "▁")


@functools.lru_cache(maxsize=16)
def word_start_mark(tokenizer) -> str | None:
    """The mark (``WORD_START_MARKS``) that opens a word in ``tokenizer``'s pieces: read from a
    fast tokenizer's decoder (ByteLevel: Ġ, Metaspace: ▁, WordPiece: none), else the mark at
    least a tenth of its vocabulary carries. None for WordPiece (its continuing pieces carry
    ``##`` instead), for a word-level vocabulary and without a tokenizer."""
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    known = {"ByteLevel": "Ġ", "Metaspace": "▁", "WordPiece": None}
    if type(decoder).__name__ in known:
        return known[type(decoder).__name__]
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    shares = {mark: sum(token.startswith(mark) for token in vocab) for mark in WORD_START_MARKS}
    mark = max(shares, key=shares.__getitem__)
    return mark if vocab and shares[mark] >= len(vocab) / 10 else None


def _special_tokens(tokenizer) -> frozenset[str]:
    return frozenset(getattr(tokenizer, "all_special_tokens", ()))


def _continues_word(piece: str | None, mark: str | None, special: frozenset[str]) -> bool:
    if piece is None or piece in special:
        return False
    return piece.startswith("##") if mark is None else not piece.startswith(mark)


def _pieces(input_ids: torch.Tensor | list[int], tokenizer) -> list[str | None]:
    ids = torch.as_tensor(input_ids).tolist()
    return tokenizer.convert_ids_to_tokens(ids) if tokenizer is not None else [None] * len(ids)


def _position_contributions(
    run: Run, train: Tensors, test: Tensors, top_tokens: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """At the loaded checkpoint, for each position i of the training text: ∂ℓ/∂e_i · g_{x_i}(z')
    (T,) and whether x_i is a (kept) token of the test text (T,) bool."""
    batch = next(batches(train, 1, run.options.device))
    grads = embedding_grads(run.model, batch)
    keep = kept_positions(batch, grads, top_tokens, ())[0]
    test_rows = embedding_rows(run, test, top_tokens)
    ids = batch["input_ids"][0]
    if not len(test_rows.ids):
        return grads.new_zeros(len(ids)), torch.zeros_like(keep)
    slot = torch.searchsorted(test_rows.ids, ids).clamp_max(len(test_rows.ids) - 1)
    shared = keep & (test_rows.ids[slot] == ids)
    dots = (grads[0] * test_rows.rows[slot]).sum(-1)
    return torch.where(shared, dots, torch.zeros_like(dots)), shared


def _token_table(
    ids: torch.Tensor, contribution: torch.Tensor, shared: torch.Tensor, pieces: list[str | None]
) -> pd.DataFrame:
    token_ids, inverse = torch.unique(ids[shared], return_inverse=True)
    totals = torch.zeros(len(token_ids), dtype=torch.float64).index_add_(
        0, inverse, contribution[shared]
    )
    token_of = dict(zip(ids.tolist(), pieces, strict=True))
    return pd.DataFrame(
        {
            "token_id": token_ids.tolist(),
            "token": [token_of[i] for i in token_ids.tolist()],
            "contribution": totals.tolist(),
        }
    )


def _word_table(
    ids: torch.Tensor,
    valid: torch.Tensor,
    contribution: torch.Tensor,
    shared: torch.Tensor,
    tokenizer,
) -> pd.DataFrame:
    """The training text's whole words holding a shared token."""
    rows = [
        (word_text(ids, start, end, tokenizer), start, end, float(contribution[start:end].sum()))
        for start, end in word_spans(ids, valid, tokenizer)
        if shared[start:end].any()
    ]
    return pd.DataFrame(rows, columns=["word", "start", "end", "contribution"])
