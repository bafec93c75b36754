"""experiments.by_hand against the influence engine and against plain autograd, on tiny random
models (float64) that no notebook uses: two checkpoints with different weights and learning
rates, texts with [CLS]/[SEP], padding and repeated tokens."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertForSequenceClassification

from tracin_we.core.hf_models import HFClassifier
from tracin_we.core.inputs import model_inputs
from tracin_we.core.models import CNNClassifier, word_embeddings
from tracin_we.core.tokenizer import load_tokenizer
from tracin_we.experiments import by_hand
from tracin_we.influence import scores, word_scores
from tracin_we.training.recipe import TrainConfig

VOCAB, LENGTH = 90, 12
CLS, SEP, PAD = 1, 2, 0
F64 = {"dtype": torch.float64}


def bert(classes: int = 3) -> nn.Module:
    torch.manual_seed(7)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=12,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=24,
        max_position_embeddings=LENGTH,
        num_labels=classes,
    )
    model = BertForSequenceClassification(config)
    model.set_attn_implementation("eager")
    return HFClassifier(model).double()


def cnn(classes: int = 3) -> nn.Module:
    torch.manual_seed(7)
    return CNNClassifier(classes, vocab_size=VOCAB, embed_dim=6, channels=5).double()


MODELS = {"bert": bert, "cnn": cnn}


def texts(n: int, seed: int, classes: int = 3) -> list[dict]:
    """[CLS] w... [SEP] [PAD]...: 3–8 words drawn from 10 ids, so texts share and repeat words."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        size = int(torch.randint(3, 9, (1,), generator=g))
        tokens = [CLS, *torch.randint(40, 50, (size,), generator=g).tolist(), SEP]
        pad = LENGTH - len(tokens)
        out.append(
            {
                "input_ids": tokens + [PAD] * pad,
                "attention_mask": [1] * len(tokens) + [0] * pad,
                "token_type_ids": [0] * LENGTH,
                "label": i % classes,
            }
        )
    return out


def checkpoints(model: nn.Module) -> list[tuple[dict, float]]:
    g = torch.Generator().manual_seed(3)
    first = {k: v.clone() for k, v in model.state_dict().items()}
    second = {
        k: v + 0.2 * torch.randn(v.shape, generator=g, dtype=v.dtype)
        if v.is_floating_point()
        else v
        for k, v in first.items()
    }
    return [(first, 0.5), (second, 0.02)]


@pytest.fixture(params=list(MODELS))
def make(request: pytest.FixtureRequest):
    return MODELS[request.param]


def present(example: dict) -> set[int]:
    return {w for w, m in zip(example["input_ids"], example["attention_mask"], strict=True) if m}


def test_dense_tracin_we_equals_the_sparse_engine(make) -> None:
    model = make()
    ckpts, train, test = checkpoints(model), texts(6, seed=0), texts(3, seed=1)
    dense = by_hand.dense_tracin_we(model, ckpts, train, test)
    engine = scores("tracin-we", model, ckpts, train, test, **F64)
    assert dense.shape == (3, 6)
    torch.testing.assert_close(dense, engine, rtol=1e-10, atol=1e-12 * float(engine.abs().max()))


def test_dense_gradient_equals_one_backward_per_example(make) -> None:
    model, data = make(), texts(4, seed=2)
    dense = by_hand.dense_embedding_gradient(model, data)
    reference = copy.deepcopy(model).eval()
    weight = word_embeddings(reference).weight
    tensors = model_inputs(data)
    for i in range(len(data)):
        one = {k: v[i : i + 1] for k, v in tensors.items() if k != "labels"}
        loss = F.cross_entropy(reference(**one), tensors["labels"][i : i + 1])
        (expected,) = torch.autograd.grad(loss, [weight])
        torch.testing.assert_close(dense[i], expected, rtol=1e-10, atol=1e-14)


def test_only_rows_of_tokens_present_are_non_zero(make) -> None:
    model, data = make(), texts(5, seed=3)
    dense = by_hand.dense_embedding_gradient(model, data)
    assert dense.shape == (5, VOCAB, word_embeddings(model).embedding_dim)
    for i, example in enumerate(data):
        nonzero = set((dense[i] != 0).any(-1).nonzero().flatten().tolist())
        assert PAD in example["input_ids"] and PAD not in nonzero
        assert nonzero <= present(example)
        if make is bert:  # every position reaches [CLS] through attention: all rows move
            assert nonzero == present(example)


def test_gradient_table_sums_the_positions_of_a_repeated_word(make) -> None:
    model = make()
    example = texts(1, seed=4)[0]
    example["input_ids"][1:4] = [45, 47, 45]  # token 45 twice
    table = by_hand.gradient_table(model, example)
    assert set(table["token_id"]) == present(example)
    assert table.attrs["vocab_size"] == VOCAB
    row = table.set_index("token_id").loc[45]
    assert row["positions"] == (1, 3)
    assert table["max |g_w − Σ positions|"].max() < 1e-12
    positions = by_hand.position_gradients(model, example)
    assert positions["position"].tolist() == list(range(sum(example["attention_mask"])))
    summed = positions[positions["token_id"] == 45]["∂ℓ/∂e_i[0]"].sum()
    assert row["g_w[0]"] == pytest.approx(summed, rel=1e-10, abs=1e-14)


def test_shared_word_terms_sum_to_the_score_word_by_word(make) -> None:
    model = make()
    ckpts, train, test = checkpoints(model), texts(3, seed=5), texts(2, seed=6)
    engine = scores("tracin-we", model, ckpts, train, test, **F64)
    for i, j in [(0, 0), (2, 1)]:
        terms = by_hand.shared_word_terms(model, ckpts, train[i], test[j])
        shared = present(train[i]) & present(test[j])
        assert set(terms["token_id"]) == shared
        assert (terms.groupby("checkpoint").size() == len(shared)).all()
        assert terms["term"].sum() == pytest.approx(float(engine[j, i]), rel=1e-10)
        words = word_scores(model, ckpts, train[i], test[j], **F64).tokens.set_index("token_id")
        per_token = terms.groupby("token_id")["term"].sum()
        assert per_token.to_numpy() == pytest.approx(
            words.loc[per_token.index, "contribution"].to_numpy(), rel=1e-9
        )


def test_last_layer_terms_sum_to_tracin_last(make) -> None:
    model = make()
    ckpts, train, test = checkpoints(model), texts(4, seed=7), texts(1, seed=8)
    terms = by_hand.last_layer_terms(model, ckpts, train, test[0])
    assert len(terms) == len(ckpts) * len(train)
    product = terms["lr"] * terms["a·a′ + 1"] * terms["δ·δ′"]
    assert terms["term"].to_numpy() == pytest.approx(product.to_numpy(), rel=1e-12)
    expected = scores("tracin-last", model, ckpts, train, test, **F64)[0]
    assert terms.groupby("train_index")["term"].sum().to_numpy() == pytest.approx(
        expected.numpy(), rel=1e-10
    )


def test_two_class_cnn_tracin_last_sign_is_label_agreement() -> None:
    """a ≥ 0 after ReLU and max-pool, so a·a′ + 1 > 0; with two classes δ·δ′ = 2(p₁ − y₁)(p₁′ − y₁′)
    is positive exactly when the labels agree (notebook 00, exercise 3)."""
    model = cnn(classes=2)
    train, test = texts(6, seed=9, classes=2), texts(2, seed=10, classes=2)
    terms = by_hand.last_layer_terms(model, checkpoints(model), train, test[1])
    assert (terms["a·a′ + 1"] > 0).all()
    agree = torch.tensor([ex["label"] == test[1]["label"] for ex in train]).repeat(2).numpy()
    assert ((terms["δ·δ′"] > 0).to_numpy() == agree).all()


def test_functions_leave_the_model_as_they_found_it() -> None:
    model = bert().train()
    before = copy.deepcopy(model.state_dict())
    ckpts = checkpoints(model)
    ckpts[1][0]["model.classifier.bias"] += 1.0
    by_hand.dense_tracin_we(model, ckpts, texts(2, seed=0), texts(1, seed=1))
    by_hand.last_layer_terms(model, ckpts, texts(2, seed=0), texts(1, seed=1)[0])
    assert model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_fit_with_checkpoints_saves_the_chosen_steps() -> None:
    model, data = cnn(), texts(6, seed=11)
    config = TrainConfig(
        optimizer="adam", lr=0.01, epochs=4, batch_size=6, checkpoint_epochs=(2, 4), seed=0
    )
    saved = by_hand.fit_with_checkpoints(model, data, config)
    assert [lr for _, lr in saved] == [0.01, 0.01]
    first, last = saved[0][0], saved[1][0]
    assert not torch.equal(first["classifier.weight"], last["classifier.weight"])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in last.items())


def test_hand_examples_are_tokenized_and_checked() -> None:
    tokenizer = load_tokenizer()
    data = by_hand.hand_examples(["the game", "the bank"], [0, 1], tokenizer, 10)
    assert data["label"] == [0, 1]
    assert tokenizer.convert_ids_to_tokens(data[0]["input_ids"][:4]) == [
        "[CLS]",
        "the",
        "game",
        "[SEP]",
    ]
    assert sum(data[0]["attention_mask"]) == 4 and len(data[0]["input_ids"]) == 10
    with pytest.raises(ValueError, match="labels has 1 entries for 2 sentences"):
        by_hand.hand_examples(["a", "b"], [0], tokenizer, 10)
    with pytest.raises(ValueError, match=r"labels=.* must be non-negative integers"):
        by_hand.hand_examples(["a"], [-1], tokenizer, 10)
    with pytest.raises(ValueError, match="sentences must be a non-empty list"):
        by_hand.hand_examples("the game", [0], tokenizer, 10)
    with pytest.raises(ValueError, match="max_length=4 would truncate"):
        by_hand.hand_examples(["one two three four"], [0], tokenizer, 4)
