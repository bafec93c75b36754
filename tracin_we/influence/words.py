"""Word-level decomposition of a TracIn-WE score: one term per shared token (arXiv 2202.11844
v1 eq. 2).

    score(z, z') = Σ_c η_c Σ_{w shared} g_w(z) · g_w(z')
                 = Σ_c η_c Σ_{positions i of z} ∂ℓ/∂e_i · g_{x_i}(z')    (c = checkpoint),

so the score splits exactly over shared token ids and over the training text's positions, hence
over its whole words (what targeted fixing edits, §6): an identity, so in floating point the
parts sum to the score up to rounding. Positive = proponent.
"""

from __future__ import annotations

import contextlib
import json
import os
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from tracin_we.core.checkpoints import StateDict, resolve_checkpoints
from tracin_we.core.inputs import Tensors
from tracin_we.core.models import as_classifier, pad_token_id
from tracin_we.core.tokenizer import VOCAB_SIZE, load_tokenizer
from tracin_we.influence.context import Run, prepared
from tracin_we.influence.embedding import embedding_rows, kept_positions
from tracin_we.influence.gradients import batches, embedding_grads
from tracin_we.influence.options import Options, model_sizes, prepare_data


@dataclass(frozen=True)
class WordScores:
    """One (train, test) pair's TracIn-WE score and its split, exact up to rounding (positive =
    proponent).

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
    shipped BERT uncased tokenizer (``core.tokenizer``) when the model's word embedding has
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
                "(tracin_we.core.tokenizer.load_tokenizer(name) loads one by name)"
            )
        return tokenizer
    return load_tokenizer() if vocab_size == VOCAB_SIZE else None


def word_spans(
    input_ids: torch.Tensor, valid: torch.Tensor, tokenizer=None
) -> list[tuple[int, int]]:
    """Whole words of one text, as [start, end) position ranges over its ``valid`` positions
    ((T,) bool). Pieces join into words by the tokenizer's ``word_scheme``: WordPiece's ``##``
    continues a word; byte-level BPE's ``Ġ`` and SentencePiece's ``▁`` open one (a piece without
    the mark continues the word before it, so a word is what whitespace delimits, punctuation
    included, and whitespace pieces such as newlines open the next word); CLIP's ``</w>``
    closes one. Special tokens ([CLS], <s>, [PAD]; the unknown token only where it also frames
    texts, as GPT-2's <|endoftext|>: elsewhere it can stand inside a word) are words of their
    own. Without a tokenizer every valid position is a word."""
    pieces = _pieces(input_ids, tokenizer)
    scheme, special = word_scheme(tokenizer), _special_tokens(tokenizer)
    unknown = getattr(tokenizer, "unk_token", None)
    spans: list[list[int]] = []
    for i in torch.as_tensor(valid).nonzero().flatten().tolist():
        adjacent = bool(spans) and spans[-1][1] == i
        if adjacent and _continues_word(pieces[i - 1], pieces[i], scheme, special, unknown):
            spans[-1][1] = i + 1
        else:
            spans.append([i, i + 1])
    return [(start, end) for start, end in spans]


def word_text(input_ids: torch.Tensor, start: int, end: int, tokenizer=None) -> str:
    """The word at positions [start, end): its pieces joined without ``##``, or decoded by the
    tokenizer where pieces carry a word-start mark (``Ġ``, ``▁``) or an end-of-word suffix
    (``</w>``); token ids without a tokenizer. A whitespace-only word is shown as its repr."""
    ids = torch.as_tensor(input_ids)[start:end].tolist()
    pieces = _pieces(ids, tokenizer)
    scheme = word_scheme(tokenizer)
    if scheme.continuing_prefix is not None:
        prefix = scheme.continuing_prefix
        return "".join(
            str(i) if p is None else p.removeprefix(prefix)
            for i, p in zip(ids, pieces, strict=True)
        )
    text = _pieces_to_string(pieces, tokenizer, scheme)
    if scheme.end_suffix is not None:
        text = text.replace(scheme.end_suffix, " ")
    return text.strip() or repr(text)


@dataclass(frozen=True)
class WordScheme:
    """How a tokenizer's pieces mark word boundaries (exactly one field is set).

    - ``continuing_prefix``: a piece starting with it continues the word before it (WordPiece's
      ``##``);
    - ``start_mark``: a piece starting with it opens a word, any other piece continues the word
      before it (byte-level BPE's ``Ġ``: GPT-2, RoBERTa; SentencePiece's ``▁``: T5, Llama, XLM-R);
    - ``end_suffix``: a piece ending with it closes its word (CLIP's ``</w>``)."""

    continuing_prefix: str | None = None
    start_mark: str | None = None
    end_suffix: str | None = None


WORDPIECE = WordScheme(continuing_prefix="##")
WORD_START_MARKS = ("Ġ", "▁")
# Pieces that hold only whitespace. Byte-level BPE writes the bytes of tab, newline, vertical
# tab, form feed, carriage return and space as ĉ Ċ ċ Č č Ġ (letters in SentencePiece's
# vocabularies: Czech č). SentencePiece writes the mark (▁), or byte-fallback tokens <0x0A>.
_BYTE_LEVEL_SPACES = frozenset("ĉĊċČčĠ")
_SPACE_BYTES = frozenset({"<0x09>", "<0x0A>", "<0x0B>", "<0x0C>", "<0x0D>", "<0x20>"})
_schemes: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def word_scheme(tokenizer) -> WordScheme:
    """``tokenizer``'s ``WordScheme``: read from a fast tokenizer's model (an end-of-word suffix)
    and decoder (ByteLevel: ``Ġ``; Metaspace, or a Replace of ``▁`` as Llama's: ``▁``; WordPiece:
    its prefix; BPEDecoder: its suffix), else ``start_mark`` = the mark at least a tenth of its
    vocabulary carries, else WordPiece's ``##`` (also a word-level vocabulary's and no
    tokenizer's: no piece then continues a word). Cached per tokenizer object while it lives
    (a decoder swapped in later is not seen)."""
    if tokenizer is None:
        return WORDPIECE
    with contextlib.suppress(KeyError, TypeError):  # TypeError: not weakly referable, uncached
        return _schemes[tokenizer]
    scheme = _backend_scheme(tokenizer) or _vocabulary_scheme(tokenizer)
    with contextlib.suppress(TypeError):
        _schemes[tokenizer] = scheme
    return scheme


def _backend_scheme(tokenizer) -> WordScheme | None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    suffix = getattr(backend.model, "end_of_word_suffix", None)
    if suffix:
        return WordScheme(end_suffix=suffix)
    try:
        decoder = json.loads(backend.decoder.__getstate__())
    except Exception:  # no decoder, or a custom Python one, which cannot be serialized
        return None
    for step in _decoder_steps(decoder):
        kind, pattern = step["type"], step.get("pattern", {}).get("String")
        if kind == "ByteLevel":
            return WordScheme(start_mark="Ġ")
        if kind == "Metaspace":
            return WordScheme(start_mark=step["replacement"])
        if kind == "Replace" and pattern in WORD_START_MARKS:
            return WordScheme(start_mark=pattern)
        if kind == "WordPiece":
            return WordScheme(continuing_prefix=step["prefix"])
        if kind == "BPEDecoder" and step.get("suffix"):
            return WordScheme(end_suffix=step["suffix"])
    return None


def _decoder_steps(decoder: dict) -> list[dict]:
    """A decoder's steps in order, ``Sequence`` decoders flattened."""
    if decoder["type"] == "Sequence":
        return [step for inner in decoder["decoders"] for step in _decoder_steps(inner)]
    return [decoder]


def _vocabulary_scheme(tokenizer) -> WordScheme:
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    shares = {mark: sum(token.startswith(mark) for token in vocab) for mark in WORD_START_MARKS}
    mark = max(shares, key=shares.__getitem__)
    return WordScheme(start_mark=mark) if vocab and shares[mark] >= len(vocab) / 10 else WORDPIECE


def _special_tokens(tokenizer) -> frozenset[str]:
    """Tokens that are words of their own. The unknown token is one only where it also frames or
    pads texts (GPT-2's <|endoftext|>, OPT's </s>): SentencePiece puts it inside a word for a
    character it lacks."""
    roles = getattr(tokenizer, "special_tokens_map", {})
    unknown = roles.get("unk_token")
    framing = {token for role, token in roles.items() if role != "unk_token"}
    special = frozenset(getattr(tokenizer, "all_special_tokens", ()))
    return special if unknown in framing else special - {unknown}


def _continues_word(
    before: str | None,
    piece: str | None,
    scheme: WordScheme,
    special: frozenset[str],
    unknown: str | None,
) -> bool:
    """Whether ``piece`` continues the word that ``before`` (the piece just before it) ends.
    ``unknown``: the unknown token, which closes a word under an end-of-word suffix."""
    if before is None or piece is None or before in special or piece in special:
        return False
    if scheme.end_suffix is not None:
        return not (before.endswith(scheme.end_suffix) or before == unknown)
    if scheme.start_mark is not None:  # whitespace pieces open the next word, whatever follows
        mark = scheme.start_mark
        return _is_space(before, mark) or not (piece.startswith(mark) or _is_space(piece, mark))
    return piece.startswith(scheme.continuing_prefix)


def _is_space(piece: str, mark: str) -> bool:
    """Whether ``piece`` holds only whitespace under the word-start ``mark``."""
    if mark == "Ġ":
        return all(char in _BYTE_LEVEL_SPACES for char in piece)
    return piece in _SPACE_BYTES or all(char == mark or char.isspace() for char in piece)


def _pieces_to_string(pieces: list[str | None], tokenizer, scheme: WordScheme) -> str:
    """The tokenizer's own decoding of ``pieces`` (bytes of byte-level BPE, byte fallback), or,
    for a fast tokenizer without a decoder (which would join them with spaces), the pieces
    concatenated with the word-start mark read as a space."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and backend.decoder is None:
        text = "".join(str(p) for p in pieces)
        return text.replace(scheme.start_mark, " ") if scheme.start_mark else text
    return tokenizer.convert_tokens_to_string(pieces)


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
