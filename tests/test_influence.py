"""Every influence method against an independent computation: brute-force autograd over the
whole parameter block, captum's TracInCP / TracInCPFast, explicit Hessians and formulas.

Tiny random models (vocab 120, width 8–16) in float64 so that agreement is tight; two checkpoints
with different weights and learning rates; texts with [CLS]/[SEP], padding and repeated tokens.
"""

from __future__ import annotations

import copy
import itertools
import re

import pytest
import torch
import torch.nn.functional as F
from captum.influence import TracInCP, TracInCPFast
from sklearn.feature_extraction.text import TfidfVectorizer
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import nn
from torch.func import functional_call
from torch.utils.data import TensorDataset
from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

from tests.conftest import example, subword_tokenizer, texts
from tracin_we import influence
from tracin_we.core.hf_models import HFClassifier
from tracin_we.core.inputs import model_inputs
from tracin_we.core.models import CNNClassifier, classifier_layer, word_embeddings
from tracin_we.core.tokenizer import load_tokenizer
from tracin_we.influence import attribution, embedding
from tracin_we.influence.options import PEER_METHODS
from tracin_we.influence.words import WordScheme, word_scheme, word_spans, word_text

VOCAB, LENGTH, CLASSES = 120, 12, 3
CLS, SEP, PAD = 101, 102, 0
F64 = {"dtype": torch.float64}


def bert() -> nn.Module:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=CLASSES,
    )
    return HFClassifier(BertForSequenceClassification(config)).double()


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return CNNClassifier(CLASSES, vocab_size=VOCAB, embed_dim=8, channels=6).double()


MODELS = {"bert": bert, "cnn": cnn}


def checkpoints(model: nn.Module) -> list[tuple[dict, float]]:
    """Two different checkpoints: the model's weights and a perturbed copy."""
    g = torch.Generator().manual_seed(1)
    first = {k: v.clone() for k, v in model.state_dict().items()}
    second = {
        k: v + 0.1 * torch.randn(v.shape, generator=g, dtype=v.dtype)
        if v.is_floating_point()
        else v.clone()
        for k, v in first.items()
    }
    return [(first, 0.3), (second, 0.05)]


@pytest.fixture(params=list(MODELS))
def setup(request: pytest.FixtureRequest):
    model = MODELS[request.param]()
    return model, checkpoints(model), texts(6, seed=0), texts(4, seed=1)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5) -> None:
    torch.testing.assert_close(
        actual, expected.to(actual.dtype), rtol=rtol, atol=rtol * float(expected.abs().max())
    )


def per_example_grads(
    model: nn.Module, data: list[dict], params: list[nn.Parameter]
) -> torch.Tensor:
    """(n, P): flattened ∇ℓ of each example w.r.t. ``params``, one backward pass each."""
    tensors = model_inputs(data)
    rows = []
    for i in range(len(data)):
        logits = model(
            tensors["input_ids"][i : i + 1],
            tensors["attention_mask"][i : i + 1],
            tensors["token_type_ids"][i : i + 1],
        )
        grads = torch.autograd.grad(F.cross_entropy(logits, tensors["labels"][i : i + 1]), params)
        rows.append(torch.cat([g.flatten() for g in grads]))
    return torch.stack(rows)


def brute_force(model: nn.Module, ckpts, train, test, pick) -> torch.Tensor:
    """Σ_c η_c ∇ℓ(z') · ∇ℓ(z) over the parameters ``pick(model)``, dense, in eval mode."""
    model = copy.deepcopy(model).eval()
    total = 0
    for state, lr in ckpts:
        model.load_state_dict(state)
        params = pick(model)
        total = (
            total
            + lr
            * per_example_grads(model, test, params)
            @ per_example_grads(model, train, params).T
        )
    return total


def embedding_matrix(model: nn.Module) -> list[nn.Parameter]:
    return [word_embeddings(model).weight]


def last_layer(model: nn.Module) -> list[nn.Parameter]:
    layer = classifier_layer(model)
    return [layer.weight, layer.bias]


class Positional(nn.Module):
    """captum calls model(*inputs)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.inner = model

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.inner(input_ids, attention_mask, token_type_ids)


def captum_inputs(data: list[dict]) -> tuple[torch.Tensor, ...]:
    t = model_inputs(data)
    return t["input_ids"], t["attention_mask"], t["token_type_ids"], t["labels"]


def load_for_captum(model: nn.Module, checkpoint: tuple[dict, float]) -> float:
    model.inner.load_state_dict(checkpoint[0])
    model.eval()
    return checkpoint[1]


def module_name(root: nn.Module, module: nn.Module) -> str:
    return next(name for name, m in root.named_modules() if m is module)


def test_tracin_we_equals_brute_force_and_captum(setup) -> None:
    model, ckpts, train, test = setup
    ours = influence.scores("tracin-we", model, ckpts, train, test, **F64)
    assert ours.shape == (len(test), len(train)) and ours.dtype == torch.float64
    assert_close(ours, brute_force(model, ckpts, train, test, embedding_matrix))
    wrapped = Positional(copy.deepcopy(model))
    tracin = TracInCP(
        wrapped,
        TensorDataset(*captum_inputs(train)),
        ckpts,
        load_for_captum,
        layers=[module_name(wrapped, word_embeddings(wrapped.inner))],
        loss_fn=nn.CrossEntropyLoss(reduction="none"),
        batch_size=4,
        sample_wise_grads_per_batch=False,
    )
    assert_close(ours, tracin.influence(captum_inputs(test)))


def test_tracin_we_float32_default(setup) -> None:
    model, ckpts, train, test = setup
    model.float()
    ours = influence.scores("tracin-we", model, ckpts, train, test)
    assert ours.dtype == torch.float32
    expected = brute_force(model.double(), ckpts, train, test, embedding_matrix)
    assert_close(ours, expected, rtol=1e-4)


def test_tracin_last_equals_autograd_and_captum_fast(setup) -> None:
    model, ckpts, train, test = setup
    ours = influence.scores("tracin-last", model, ckpts, train, test, **F64)
    assert_close(ours, brute_force(model, ckpts, train, test, last_layer))
    wrapped = Positional(copy.deepcopy(model))
    fast = TracInCPFast(
        wrapped,
        classifier_layer(wrapped.inner),
        TensorDataset(*captum_inputs(train)),
        ckpts,
        load_for_captum,
        loss_fn=nn.CrossEntropyLoss(reduction="sum"),
        batch_size=4,
    )
    # captum's TracInCPFast leaves out the bias: its gradient is ∂ℓ/∂f, the +1 term.
    bias_part = brute_force(model, ckpts, train, test, lambda m: [classifier_layer(m).bias])
    assert_close(ours, fast.influence(captum_inputs(test)) + bias_part)


@pytest.mark.parametrize("name", ["bert", "cnn"])
def test_tracin_layer_equals_brute_force(name: str) -> None:
    model = MODELS[name]()
    ckpts, train, test = checkpoints(model), texts(5, 0), texts(3, 1)
    pattern = r"encoder\.layer\.0\.attention\.self\.query" if name == "bert" else r"convs\.2\."
    chosen = [n for n, _ in model.named_parameters() if re.search(pattern, n)]
    assert len(chosen) == 2
    ours = influence.scores("tracin-layer", model, ckpts, train, test, params=pattern, **F64)
    pick = lambda m: [dict(m.named_parameters())[n] for n in chosen]  # noqa: E731
    assert_close(ours, brute_force(model, ckpts, train, test, pick))
    by_names = influence.scores("tracin-layer", model, ckpts, train, test, params=chosen, **F64)
    assert torch.equal(ours, by_names)  # the same parameters, so the same computation


def explicit_influence_last(
    model: nn.Module, ckpts, train: list[dict], test: list[dict], damping: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """By autograd at the last checkpoint, θ = the last layer's (W, b) flattened: the explicit
    Hessian H of the mean training loss over θ, and per-example gradients. Returns
    v = (H + damping·I)⁻¹ ∇ℓ(z') (n_test, P), ∇ℓ(z) (n_train, P) and the scores v · ∇ℓ(z)."""
    model = copy.deepcopy(model).eval()
    model.load_state_dict(ckpts[-1][0])  # the last checkpoint only
    layer = classifier_layer(model)
    names = [module_name(model, layer) + ".weight", module_name(model, layer) + ".bias"]
    t = model_inputs(train)

    def mean_loss(flat: torch.Tensor) -> torch.Tensor:
        weight = flat[: layer.weight.numel()].view_as(layer.weight)
        bias = flat[layer.weight.numel() :]
        logits = functional_call(
            model,
            dict(zip(names, (weight, bias), strict=True)),
            (t["input_ids"], t["attention_mask"], t["token_type_ids"]),
        )
        return F.cross_entropy(logits, t["labels"])

    flat = torch.cat([layer.weight.detach().flatten(), layer.bias.detach()])
    hessian = torch.autograd.functional.hessian(mean_loss, flat)
    hessian += damping * torch.eye(len(flat), dtype=flat.dtype)
    test_grads = per_example_grads(model, test, [layer.weight, layer.bias])
    train_grads = per_example_grads(model, train, [layer.weight, layer.bias])
    vectors = torch.linalg.solve(hessian, test_grads.T).T
    return vectors, train_grads, vectors @ train_grads.T


def test_influence_last_equals_explicit_inverse_hessian(setup) -> None:
    model, ckpts, train, test = setup
    damping = 1e-2
    ours = influence.scores("influence-last", model, ckpts, train, test, damping=damping, **F64)
    assert_close(ours, explicit_influence_last(model, ckpts, train, test, damping)[2])


def test_influence_last_vectors_and_positions_equal_explicit_inverse_hessian(setup) -> None:
    """The vectors v(z') and the score Σ_c δ_c (v_c · [a, 1]) that the position split starts
    from are Influence-Last's, against the explicit Hessian."""
    model, ckpts, train, test = setup
    damping = 1e-2
    expected_vectors, _, expected = explicit_influence_last(model, ckpts, train, test, damping)
    train_t, test_t = model_inputs(train), model_inputs(test)
    vectors = attribution.influence_last_vectors(model, ckpts, train_t, test_t, damping, **F64)
    classes, width = classifier_layer(model).weight.shape
    assert vectors.shape == (len(test), classes, width + 1)
    as_w_then_b = torch.cat([vectors[..., :width].flatten(1), vectors[..., width]], 1)
    assert_close(as_w_then_b, expected_vectors)  # [W | b] per class vs W flattened, then b
    for j in range(len(test)):
        got = attribution.influence_last_positions(model, ckpts, train_t, vectors[j], **F64).score
        torch.testing.assert_close(got, expected[j], rtol=1e-3, atol=1e-5)


def test_position_influence_is_gradient_times_input(setup) -> None:
    """Σ_i (∂I/∂e_i)·e_i = d/dt I(t·e) at t = 1 (central difference), and 0 where masked."""
    model, ckpts, train, test = setup
    train_t, test_t = model_inputs(train), model_inputs(test[:1])
    vector = attribution.influence_last_vectors(model, ckpts, train_t, test_t, **F64)[0]
    examples = {k: v[:4] for k, v in train_t.items()}
    split_up = attribution.influence_last_positions(model, ckpts, examples, vector, **F64)
    eps, scaled = 1e-3, []
    for t in (1 + eps, 1 - eps):
        handle = word_embeddings(model).register_forward_hook(lambda _m, _i, out, t=t: out * t)
        try:
            scaled.append(
                attribution.influence_last_positions(model, ckpts, examples, vector, **F64).score
            )
        finally:
            handle.remove()
    derivative = (scaled[0] - scaled[1]).double() / (2 * eps)
    torch.testing.assert_close(split_up.positions.sum(1).double(), derivative, rtol=2e-2, atol=1e-4)
    assert (split_up.positions[examples["attention_mask"] == 0] == 0).all()
    assert split_up.positions.abs().sum() > 0


def test_influence_last_words_sum_positions_over_whole_words() -> None:
    model = cnn()
    ckpts = checkpoints(model)
    train = [example([CLS, 103, 104, 104, 105, SEP], 0), example([CLS, 106, SEP], 1)]
    test_t = model_inputs(texts(1, seed=1))
    train_t = model_inputs(train)
    vector = attribution.influence_last_vectors(model, ckpts, train_t, test_t, **F64)[0]
    positions = attribution.influence_last_positions(model, ckpts, train_t, vector, **F64)
    tables = attribution.influence_last_words(model, ckpts, train_t, vector, Pieces(), **F64)
    assert list(tables[0].word) == ["playinging", "now"] and list(tables[1].word) == ["w106"]
    assert list(zip(tables[0].start, tables[0].end, strict=True)) == [(1, 4), (4, 5)]
    words_only = ~torch.isin(train_t["input_ids"], torch.tensor([PAD, CLS, SEP]))
    for table, row, keep in zip(tables, positions.positions, words_only, strict=True):
        assert table.contribution.sum() == pytest.approx(float(row[keep].sum()), rel=1e-10)
        assert list(table.columns) == ["word", "start", "end", "contribution"]


class Pieces:
    """A tokenizer's ``convert_ids_to_tokens``: 104 is a "##" piece."""

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        names = {CLS: "[CLS]", SEP: "[SEP]", PAD: "[PAD]", 103: "play", 104: "##ing", 105: "now"}
        return [names.get(i, f"w{i}") for i in ids]


def test_word_spans_join_word_pieces_and_skip_specials() -> None:
    tokenizer = load_tokenizer()
    encoded = tokenizer("the unaffordable cat", padding="max_length", max_length=10)
    ids = torch.tensor(encoded["input_ids"])
    mask = torch.tensor(encoded["attention_mask"])
    valid = mask.bool() & ~torch.isin(ids, torch.tensor([PAD, CLS, SEP]))
    spans = word_spans(ids, valid, tokenizer)
    assert [tokenizer.decode(ids[s:e].tolist()) for s, e in spans] == ["the", "unaffordable", "cat"]
    assert [word_text(ids, s, e, tokenizer) for s, e in spans] == [
        "the",
        "unaffordable",
        "cat",
    ]
    assert spans[0] == (1, 2) and spans[1][1] - spans[1][0] > 1
    assert word_spans(ids, valid) == [(i, i + 1) for i in range(1, int(mask.sum()) - 1)]
    # A piece continues only the word ending just before it, never across a left-out position.
    ids = torch.tensor([CLS, 103, 104, PAD, 104, SEP])
    keep = torch.tensor([False, True, True, False, True, False])
    assert word_spans(ids, keep, Pieces()) == [(1, 3), (4, 5)]


@pytest.mark.parametrize("style", ["byte-bpe", "sentencepiece"])
def test_word_spans_join_pieces_of_marked_word_starts(style: str) -> None:
    """Byte-level BPE (Ġ) and SentencePiece (▁) mark a word's first piece, not its continuations:
    a word the vocabulary splits is still one word, and special tokens stay words of their own."""
    tokenizer = subword_tokenizer(style, CORPUS)
    encoded = tokenizer("the unaffordable cat sat", padding="max_length", max_length=16)
    ids, mask = torch.tensor(encoded["input_ids"]), torch.tensor(encoded["attention_mask"])
    assert len(tokenizer.tokenize(" unaffordable")) > 2  # the word does split into pieces
    words = ["the", "unaffordable", "cat", "sat"]
    special = torch.tensor(tokenizer.all_special_ids)
    spans = word_spans(ids, mask.bool() & ~torch.isin(ids, special), tokenizer)
    assert [word_text(ids, s, e, tokenizer) for s, e in spans] == words
    spans = word_spans(ids, torch.ones_like(mask, dtype=torch.bool), tokenizer)
    n_pad = int((mask == 0).sum())
    assert [word_text(ids, s, e, tokenizer) for s, e in spans] == [
        "<s>",
        *words,
        "</s>",
        *["<pad>"] * n_pad,
    ]


class MarkedPieces:
    """A tokenizer without a fast backend whose vocabulary opens words with ▁ (SentencePiece)."""

    def __init__(self) -> None:
        self.vocab = {"<s>": 0, "▁the": 1, "▁un": 2, "able": 3, "▁cat": 4, "</s>": 5}
        self.all_special_tokens = ["<s>", "</s>"]

    def get_vocab(self) -> dict[str, int]:
        return self.vocab

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [next(t for t, i in self.vocab.items() if i == j) for j in ids]

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return "".join(tokens).replace("▁", " ")


def test_word_scheme_from_the_vocabulary_without_a_fast_backend() -> None:
    tokenizer = MarkedPieces()
    assert word_scheme(tokenizer) == WordScheme(start_mark="▁")
    assert word_scheme(Pieces()) == word_scheme(None) == WordScheme(continuing_prefix="##")
    assert word_scheme(load_tokenizer()) == WordScheme(continuing_prefix="##")  # BERT WordPiece
    ids = torch.tensor([0, 1, 2, 3, 4, 5])
    spans = word_spans(ids, torch.ones(6, dtype=torch.bool), tokenizer)
    assert [word_text(ids, s, e, tokenizer) for s, e in spans] == [
        "<s>",
        "the",
        "unable",
        "cat",
        "</s>",
    ]


def words_of(text: str, tokenizer) -> list[str]:
    """``text``'s words by ``word_spans`` over its positions but <s>, </s> (not <unk>), as
    ``word_text``."""
    ids = torch.tensor(tokenizer(text)["input_ids"])
    framing = set(tokenizer.all_special_ids) - {tokenizer.unk_token_id}
    valid = ~torch.isin(ids, torch.tensor(sorted(framing)))
    return [word_text(ids, s, e, tokenizer) for s, e in word_spans(ids, valid, tokenizer)]


CORPUS = ["we can afford it", "un doing able people", "the cat sat on the mat"] * 3


def test_words_of_an_end_of_word_suffix_tokenizer_as_clip() -> None:
    """CLIP's BPE closes a word with ``</w>`` and decodes with ByteLevel: its pieces carry no
    Ġ, so reading the decoder alone would make the whole text one word."""
    backend = Tokenizer(models.BPE(unk_token="<unk>", end_of_word_suffix="</w>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=60, special_tokens=["<s>", "<pad>", "</s>", "<unk>"], end_of_word_suffix="</w>"
    )
    backend.train_from_iterator(CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    assert word_scheme(tokenizer) == WordScheme(end_suffix="</w>")
    assert len(tokenizer.tokenize("unaffordable")) > 2
    assert words_of("the unaffordable cat sat", tokenizer) == ["the", "unaffordable", "cat", "sat"]
    # An unknown character carries no </w>: it ends its word rather than swallowing the next.
    assert words_of("the caté sat on", tokenizer) == ["the", "cat<unk>", "sat", "on"]


def test_words_across_newlines_unknown_characters_and_decoder_sequences() -> None:
    """A newline piece (byte-level Ċ) opens the next word instead of gluing two words; an unknown
    character inside a SentencePiece word stays in that word; Llama's decoder (a Sequence that
    replaces ▁) and no decoder at all both give the same words."""
    byte_bpe = subword_tokenizer("byte-bpe", CORPUS)
    assert "Ċ" in byte_bpe.tokenize("the cat\nsat")
    assert words_of("the cat\nsat on\n\nthe mat", byte_bpe) == [
        "the",
        "cat",
        "sat",
        "on",
        "the",
        "mat",
    ]
    pieces = subword_tokenizer("sentencepiece", CORPUS)
    assert "<unk>" in pieces.tokenize("the caté sat")
    assert words_of("the caté sat", pieces) == ["the", "cat<unk>", "sat"]
    tokenizer = subword_tokenizer("sentencepiece", CORPUS)
    tokenizer.backend_tokenizer.decoder = None  # convert_tokens_to_string would join with spaces
    assert words_of("the unaffordable cat", tokenizer) == ["the", "unaffordable", "cat"]


def character_tokenizer(decoder, chars: str = "thecatsku", **special) -> PreTrainedTokenizerFast:
    """A SentencePiece-style tokenizer of single characters (and ▁, a twelfth of its vocabulary:
    too few for the vocabulary's guess, so only ``decoder`` tells its word scheme)."""
    vocab = {token: i for i, token in enumerate(["<unk>", "▁", *chars, "č"])}
    backend = Tokenizer(models.BPE(vocab, [], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoder
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", **special)


def test_word_scheme_read_from_decoder_sequences_and_bpe_decoders() -> None:
    llama = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    assert word_scheme(character_tokenizer(None)) == WordScheme(continuing_prefix="##")
    assert word_scheme(character_tokenizer(llama)) == WordScheme(start_mark="▁")
    assert word_scheme(character_tokenizer(decoders.Metaspace())) == WordScheme(start_mark="▁")
    bpe = character_tokenizer(decoders.BPEDecoder(suffix="</w>"))
    assert word_scheme(bpe) == WordScheme(end_suffix="</w>")
    # Czech č is a letter here, not byte-level BPE's carriage return: "kuča" stays one word.
    assert words_of("the kuča", character_tokenizer(llama)) == ["the", "kuča"]


def test_an_unknown_token_that_also_ends_texts_stays_a_word_of_its_own() -> None:
    """GPT-2's <|endoftext|> is its unknown, end and pad token: it must not join the word before
    it (an unknown token inside a SentencePiece word does)."""
    end = "<|endoftext|>"
    backend = Tokenizer(models.BPE({end: 0, "the": 1, "Ġcat": 2, "Ġsat": 3}, []))
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=end, eos_token=end, unk_token=end, pad_token=end
    )
    ids = torch.tensor([0, 1, 2, 3, 0, 0])
    spans = word_spans(ids, torch.ones(6, dtype=torch.bool), tokenizer)
    assert [word_text(ids, s, e, tokenizer) for s, e in spans] == [
        end,
        "the",
        "cat",
        "sat",
        end,
        end,
    ]


def test_representer_equals_formula(setup) -> None:
    model, ckpts, train, test = setup
    l2 = 0.05
    ours = influence.scores("representer", model, ckpts, train, test, l2=l2, **F64)
    model = copy.deepcopy(model).eval()
    model.load_state_dict(ckpts[-1][0])

    def activations_and_logit_grads(data: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
        seen = []
        handle = classifier_layer(model).register_forward_hook(
            lambda _m, inputs, _out: seen.append(inputs[0])
        )
        t = model_inputs(data)
        logits = model(t["input_ids"], t["attention_mask"], t["token_type_ids"])
        handle.remove()
        loss = F.cross_entropy(logits, t["labels"], reduction="sum")
        return seen[0].detach(), torch.autograd.grad(loss, logits)[0]

    a_train, dl_df = activations_and_logit_grads(train)
    a_test, _ = activations_and_logit_grads(test)
    expected = torch.zeros(len(test), len(train), dtype=torch.float64)
    for j, ex in enumerate(test):
        for i in range(len(train)):
            alpha = -dl_df[i, ex["label"]] / (2 * l2 * len(train))
            expected[j, i] = alpha * (a_train[i] @ a_test[j])
    assert_close(ours, expected)


def test_tracin_tfidf_equals_sklearn_cosine_times_logit_gradients(setup) -> None:
    model, ckpts, train, test = setup
    ours = influence.scores("tracin-tfidf", model, ckpts, train, test, **F64)

    def words(ex: dict) -> str:
        return " ".join(
            str(i)
            for i, m in zip(ex["input_ids"], ex["attention_mask"], strict=True)
            if m and i not in (PAD, CLS, SEP)
        )

    vectorizer = TfidfVectorizer(token_pattern=r"\S+").fit([words(ex) for ex in train])
    cosine = (
        vectorizer.transform([words(ex) for ex in test])
        @ vectorizer.transform([words(ex) for ex in train]).T
    ).toarray()
    bias_part = brute_force(model, ckpts, train, test, lambda m: [classifier_layer(m).bias])
    assert_close(ours, torch.as_tensor(cosine) * bias_part)


def position_grads(model: nn.Module, ex: dict) -> torch.Tensor:
    """(T, d): ∂ℓ/∂e_i of one example, by retaining the embedding output's gradient."""
    seen = []

    def keep(_module: nn.Module, _inputs: tuple, out: torch.Tensor) -> None:
        out.retain_grad()
        seen.append(out)

    handle = word_embeddings(model).register_forward_hook(keep)
    t = model_inputs([ex])
    logits = model(t["input_ids"], t["attention_mask"], t["token_type_ids"])
    handle.remove()
    F.cross_entropy(logits, t["labels"]).backward()
    return seen[0].grad[0]


def topk_brute_force(model: nn.Module, ckpts, train, test, top_tokens: int) -> torch.Tensor:
    """TracIn-WE-Topk from per-position gradients: g_w from each text's ``top_tokens`` largest
    positions."""
    model = copy.deepcopy(model).eval()
    total = torch.zeros(len(test), len(train), dtype=torch.float64)
    for state, lr in ckpts:
        model.load_state_dict(state)

        def rows(ex: dict) -> dict[int, torch.Tensor]:
            grads = position_grads(model, ex)
            valid = torch.tensor(ex["attention_mask"]).bool()
            norms = grads.norm(dim=-1).masked_fill(~valid, -1)
            out: dict[int, torch.Tensor] = {}
            for i in norms.topk(min(top_tokens, int(valid.sum()))).indices.tolist():
                out[ex["input_ids"][i]] = out.get(ex["input_ids"][i], 0) + grads[i]
            return out

        train_rows = [rows(ex) for ex in train]
        for j, ex in enumerate(test):
            test_rows = rows(ex)
            for i, tr in enumerate(train_rows):
                total[j, i] += lr * sum((tr[w] @ g for w, g in test_rows.items() if w in tr), 0.0)
    return total


def test_topk_equals_brute_force_and_full_when_top_tokens_cover_text(setup) -> None:
    model, ckpts, train, test = setup
    topk = influence.scores("tracin-we-topk", model, ckpts, train, test, top_tokens=3, **F64)
    assert_close(topk, topk_brute_force(model, ckpts, train, test, top_tokens=3))
    full = influence.scores("tracin-we", model, ckpts, train, test, **F64)
    # Every position kept: the same gradients, rows and sums as TracIn-WE's, bitwise.
    assert torch.equal(
        influence.scores("tracin-we-topk", model, ckpts, train, test, top_tokens=LENGTH, **F64),
        full,
    )


def test_syn_with_identical_words_only_equals_topk(setup) -> None:
    model, ckpts, train, test = setup
    syn = influence.scores(
        "tracin-we-syn", model, ckpts, train, test, top_tokens=4, threshold=0.999, **F64
    )
    topk = influence.scores("tracin-we-topk", model, ckpts, train, test, top_tokens=4, **F64)
    assert_close(syn, topk)


def test_syn_matches_synonyms_one_to_one() -> None:
    """Ids 103 and 104 get the same embedding row (cosine 1): the optimal one-to-one matching of
    each pair's top words, found by enumerating all matchings, gives the score."""
    model = cnn()
    ckpts = checkpoints(model)
    for state, _ in ckpts:
        state["embeddings.weight"][104] = state["embeddings.weight"][103]
    train = [
        example([103, 104, 103, 105, 106, 107, 108, 109, 110], 0),
        example([104, 111, 112, 113, 114, 105, 106, 107, 108, 109], 1),
    ]
    test = [example([104, 103, 115, 116, 117, 105, 118, 119, 111], 2)]
    top_tokens, threshold = 4, 0.7
    ours = influence.scores(
        "tracin-we-syn", model, ckpts, train, test, top_tokens=top_tokens, **F64
    )
    expected = torch.zeros(1, len(train), dtype=torch.float64)
    model = copy.deepcopy(model).eval()
    for state, lr in ckpts:
        model.load_state_dict(state)
        unit = F.normalize(word_embeddings(model).weight.detach(), dim=-1)
        test_rows = _top_rows(model, test[0], top_tokens)
        for i, ex in enumerate(train):
            expected[0, i] += lr * _best_matching(
                _top_rows(model, ex, top_tokens), test_rows, unit, threshold
            )
    assert_close(ours, expected)


def _top_rows(model: nn.Module, ex: dict, top_tokens: int) -> dict[int, torch.Tensor]:
    grads = position_grads(model, ex)
    norms = grads.norm(dim=-1).masked_fill(~torch.tensor(ex["attention_mask"]).bool(), -1)
    rows: dict[int, torch.Tensor] = {}
    for i in norms.topk(top_tokens).indices.tolist():
        rows[ex["input_ids"][i]] = rows.get(ex["input_ids"][i], 0) + grads[i]
    return rows


def _best_matching(a: dict, b: dict, unit: torch.Tensor, threshold: float) -> float:
    """Σ g·g' over the one-to-one matching of allowed pairs maximising Σ |g·g'|, by enumeration."""
    wa, wb = list(a), list(b) + [None] * len(a)
    best, best_abs = 0.0, -1.0
    for perm in itertools.permutations(wb, len(wa)):
        pairs = [
            (x, y)
            for x, y in zip(wa, perm, strict=True)
            if y is not None and float(unit[x] @ unit[y]) > threshold
        ]
        value = sum(float(a[x] @ b[y]) for x, y in pairs)
        magnitude = sum(abs(float(a[x] @ b[y])) for x, y in pairs)
        if magnitude > best_abs + 1e-12:
            best, best_abs = value, magnitude
    return best


def test_noc_drops_cls_and_sep_word_scores(setup) -> None:
    model, ckpts, train, test = setup
    full = influence.scores("tracin-we", model, ckpts, train, test, **F64)
    noc = influence.scores("tracin-we-noc", model, ckpts, train, test, **F64)
    explicit = influence.scores(
        "tracin-we-noc", model, ckpts, train, test, special_token_ids=[CLS, SEP], **F64
    )
    common = set.intersection(
        *(set(ex["input_ids"][: sum(ex["attention_mask"])]) for ex in train + test)
    )
    assert common == {CLS, SEP}  # so the default drops exactly these
    assert torch.equal(noc, explicit)  # the same ids dropped: the same computation
    for j, i in [(0, 0), (1, 3), (3, 5)]:
        tokens = influence.word_scores(model, ckpts, train[i], test[j], **F64).tokens
        special = tokens[tokens.token_id.isin([CLS, SEP])].contribution.sum()
        assert abs(noc[j, i] - (full[j, i] - special)) <= 1e-9 * full.abs().max()


def test_no_shared_token_scores_exactly_zero(setup) -> None:
    model, ckpts, _, _ = setup
    train = [example(list(range(3, 12)), 0), example([CLS, 20, 21, 22, 23, 24, 25, 26, SEP], 1)]
    test = [example(list(range(30, 40)), 2)]
    for method in ("tracin-we", "tracin-we-topk", "tracin-we-noc", "tracin-we-syn"):
        options = {"threshold": 0.999} if method == "tracin-we-syn" else {}
        assert torch.equal(
            influence.scores(method, model, ckpts, train, test, **options), torch.zeros(1, 2)
        ), method
    assert influence.scores("tracin-we", model, ckpts, train, [train[1]])[0, 1] != 0


SELF_OPTIONS = {"tracin-layer": {"params": "classifier"}, "grad-cos": {"layer": "embedding"}}


@pytest.mark.parametrize(
    "method", [m for m in influence.METHODS if m not in ("random", *PEER_METHODS)]
)
def test_self_influence_is_the_diagonal(method: str) -> None:
    model = cnn()
    ckpts, data = checkpoints(model), texts(5, seed=2)
    options = SELF_OPTIONS.get(method, {}) | F64
    pairwise = influence.scores(method, model, ckpts, data, data, **options)
    assert_close(
        influence.self_influence(method, model, ckpts, data, **options), pairwise.diagonal()
    )


def test_bert_self_influence_is_the_diagonal() -> None:
    model = bert()
    ckpts, data = checkpoints(model), texts(4, seed=2)
    for method in ("tracin-we", "tracin-last"):
        pairwise = influence.scores(method, model, ckpts, data, data, **F64)
        assert_close(
            influence.self_influence(method, model, ckpts, data, **F64), pairwise.diagonal()
        )


@pytest.mark.parametrize("layer", ["last", "embedding", r"convs\.0\.weight"])
def test_grad_cos_is_tracin_of_unit_gradients(layer: str) -> None:
    model = cnn()
    ckpts, train, test = checkpoints(model), texts(5, 0), texts(3, 1)
    pick = {
        "last": last_layer,
        "embedding": embedding_matrix,
        r"convs\.0\.weight": lambda m: [m.convs[0].weight],
    }[layer]
    expected = 0
    for ckpt in ckpts:
        copy_ = copy.deepcopy(model).eval()
        copy_.load_state_dict(ckpt[0])
        g_test = F.normalize(per_example_grads(copy_, test, pick(copy_)), dim=-1)
        g_train = F.normalize(per_example_grads(copy_, train, pick(copy_)), dim=-1)
        expected = expected + ckpt[1] * g_test @ g_train.T
    assert_close(
        influence.scores("grad-cos", model, ckpts, train, test, layer=layer, **F64), expected
    )


def test_word_scores_sum_to_the_score() -> None:
    """Token and merged-word contributions sum to the TracIn-WE score; "##" pieces join."""
    model = bert()
    ckpts = checkpoints(model)
    train = example([CLS, 103, 104, 104, 105, 106, 103, SEP], 0)
    test = example([CLS, 104, 103, 107, 106, SEP], 1)

    result = influence.word_scores(model, ckpts, train, test, tokenizer=Pieces(), **F64)
    score = influence.scores("tracin-we", model, ckpts, [train], [test], **F64)[0, 0]
    assert abs(result.score - float(score)) <= 1e-10 * abs(float(score))
    assert set(result.tokens.token_id) == {CLS, SEP, 103, 104, 106}
    assert result.tokens.contribution.sum() == pytest.approx(result.score, rel=1e-10)
    assert list(result.words.word) == ["[CLS]", "playinging", "w106", "play", "[SEP]"]
    assert list(result.words.start) == [0, 1, 5, 6, 7]
    assert result.words.contribution.sum() == pytest.approx(result.score, rel=1e-10)
    topk = influence.word_scores(model, ckpts, train, test, top_tokens=3, **F64)
    topk_score = influence.scores(
        "tracin-we-topk", model, ckpts, [train], [test], top_tokens=3, **F64
    )
    assert topk.score == pytest.approx(float(topk_score[0, 0]), rel=1e-10)
    assert topk.tokens.token.isna().all()


class MeanBag(nn.Module):
    """Averages the embeddings of every position, [PAD] included: [PAD] rows get gradient."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embedding = nn.Embedding(VOCAB, 8)
        self.classifier = nn.Linear(8, CLASSES)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        return self.classifier(self.embedding(input_ids).mean(1))

    def word_embeddings(self) -> nn.Embedding:
        return self.embedding

    def classifier_layer(self) -> nn.Linear:
        return self.classifier


def test_pad_positions_never_contribute() -> None:
    model = MeanBag().double()
    ckpts, train, test = checkpoints(model), texts(5, 0), texts(3, 1)
    ours = influence.scores("tracin-we", model, ckpts, train, test, **F64)
    with_pad = brute_force(model, ckpts, train, test, embedding_matrix)
    model = copy.deepcopy(model)
    pad_part = 0
    for state, lr in ckpts:
        model.load_state_dict(state)
        test_pad, train_pad = (
            per_example_grads(model, data, embedding_matrix(model)).view(len(data), VOCAB, -1)[
                :, PAD
            ]
            for data in (test, train)
        )
        pad_part = pad_part + lr * test_pad @ train_pad.T
    assert float(pad_part.abs().max()) > 0  # this model does send gradient to the [PAD] row
    assert_close(ours, with_pad - pad_part)


def test_sparse_dot_chunks_agree(setup, monkeypatch: pytest.MonkeyPatch) -> None:
    model, ckpts, train, test = setup
    whole = influence.scores("tracin-we", model, ckpts, train, test, **F64)
    monkeypatch.setattr(embedding, "CHUNK_ELEMENTS", 5)  # one test text and few pairs per step
    assert_close(
        influence.scores("tracin-we", model, ckpts, train, test, batch_size=2, **F64),
        whole,
        rtol=1e-12,
    )
