"""A plain ``transformers`` classifier, as it is, everywhere the wrapped one works: a real
``Trainer`` run's folder → checkpoints → TracIn-WE scores → word scores, against brute-force
autograd over the whole word-embedding matrix with every text at its own length (no padding);
texts of different lengths and dynamically padded batches; models nothing can wrap."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from torch import nn
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)

from tests.conftest import assert_top_k_close
from tracin_we import influence
from tracin_we.core.checkpoints import trainer_checkpoints
from tracin_we.core.hf_models import HFClassifier
from tracin_we.core.models import as_classifier, build_model
from tracin_we.core.tokenizer import VOCAB_SIZE, load_tokenizer
from tracin_we.training.loop import fit, predict_proba
from tracin_we.training.model_init import new_model
from tracin_we.training.recipe import TrainConfig

F64 = {"dtype": torch.float64}
TRAIN_TEXTS = [
    ("stocks fell as the market slid", 0),
    ("the team won the final game", 1),
    ("bank shares rose in a calm market", 0),
    ("coach praises team after the game", 1),
    ("market rally lifts the stocks of every bank", 0),
    ("a late goal wins the game", 1),
    ("oil prices and stocks", 0),
    ("the team lost", 1),
]
TEST_TEXTS = [("stocks and the market", 0), ("the game of the team", 1), ("bank", 0)]


def tiny_bert(vocab_size: int = VOCAB_SIZE, num_labels: int = 2) -> BertForSequenceClassification:
    """A randomly initialised 2-layer BERT, hidden 16, with the shipped tokenizer's vocabulary."""
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        num_labels=num_labels,
    )
    return BertForSequenceClassification(config)


def ragged(texts: list[tuple[str, int]]) -> Dataset:
    """Tokenized without padding: each text keeps its own length, as the HF collator expects."""
    tokenizer = load_tokenizer()
    encoded = tokenizer([t for t, _ in texts])
    return Dataset.from_dict({**encoded, "label": [y for _, y in texts]})


def embedding_grad(model: nn.Module, example: dict) -> torch.Tensor:
    """∇_E ℓ of one example at its own length (no padding, no mask): (vocab · d,), dense."""
    ids = torch.tensor([example["input_ids"]])
    types = torch.tensor([example["token_type_ids"]])
    logits = model(input_ids=ids, token_type_ids=types).logits
    loss = F.cross_entropy(logits, torch.tensor([example["label"]]))
    (grad,) = torch.autograd.grad(loss, model.get_input_embeddings().weight)
    return grad.flatten()


def brute_force_we(model, ckpts, train: Dataset, test: Dataset) -> torch.Tensor:
    """Σ_c η_c ∇_E ℓ(z'; θ_c) · ∇_E ℓ(z; θ_c), (n_test, n_train), in float64 and eval mode."""
    model = copy.deepcopy(model).double().eval()
    total = torch.zeros(len(test), len(train), dtype=torch.float64)
    for state, lr in ckpts:
        model.load_state_dict(state)
        g_test = torch.stack([embedding_grad(model, ex) for ex in test])
        g_train = torch.stack([embedding_grad(model, ex) for ex in train])
        total += lr * g_test @ g_train.T
    return total


def assert_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-9) -> None:
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * float(expected.abs().max()))


@pytest.fixture(scope="module")
def trainer_run(tmp_path_factory: pytest.TempPathFactory):
    """A real ``Trainer`` run on ragged texts with dynamic padding: 4 steps, 2 checkpoints."""
    folder = tmp_path_factory.mktemp("trainer")
    model = tiny_bert()
    args = TrainingArguments(
        output_dir=str(folder),
        per_device_train_batch_size=4,
        num_train_epochs=2,
        learning_rate=0.05,
        lr_scheduler_type="linear",
        save_steps=2,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    collator = DataCollatorWithPadding(load_tokenizer())
    Trainer(
        model=model, args=args, train_dataset=ragged(TRAIN_TEXTS), data_collator=collator
    ).train()
    return model, folder


def test_trainer_folder_to_scores_to_word_scores(trainer_run) -> None:
    model, folder = trainer_run
    ckpts = trainer_checkpoints(folder)
    assert len(ckpts) == 2 and ckpts[0][1] > ckpts[1][1] > 0  # linear decay
    assert not torch.equal(ckpts[0][0]["classifier.weight"], ckpts[1][0]["classifier.weight"])
    train, test = ragged(TRAIN_TEXTS), ragged(TEST_TEXTS)
    assert len({len(ids) for ids in train["input_ids"]}) > 1  # really of different lengths

    ours = influence.scores("tracin-we", model, ckpts, train, test, progress=False, **F64)
    expected = brute_force_we(model, ckpts, train, test)
    assert ours.shape == (3, 8) and float(expected.abs().max()) > 0
    assert_close(ours, expected)
    assert isinstance(model, BertForSequenceClassification) and model.training  # restored

    # word scores name the words with the shipped tokenizer (none given) and sum to the score
    words = influence.word_scores(model, ckpts, train[4], test[0], **F64)
    assert words.score == pytest.approx(float(expected[0, 4]), rel=1e-9)
    assert {"stocks", "market", "the", "[CLS]", "[SEP]"} <= set(words.tokens.token)
    assert words.tokens.contribution.sum() == pytest.approx(words.score, rel=1e-9)
    assert words.words.contribution.sum() == pytest.approx(words.score, rel=1e-9)
    assert {"stocks", "market"} <= set(words.words.word)
    ids_only = influence.word_scores(model, ckpts, train[4], test[0], tokenizer=None, **F64)
    assert ids_only.tokens.token.isna().all()
    assert ids_only.score == words.score  # the tokenizer only names tokens: the same sums


@pytest.mark.parametrize(
    "method, options, pick",
    [
        ("tracin-last", {}, lambda m: [m.classifier.weight, m.classifier.bias]),
        ("tracin-layer", {"params": r"layer\.1\.output"}, None),
    ],
)
def test_plain_model_other_methods_equal_brute_force(method, options, pick) -> None:
    """Other layers of a plain model with texts of different lengths: dense autograd per text."""
    model = tiny_bert(vocab_size=VOCAB_SIZE)
    train, test = ragged(TRAIN_TEXTS[:5]), ragged(TEST_TEXTS)
    ckpts = [(copy.deepcopy(model.state_dict()), 0.5)]
    ours = influence.scores(method, model, ckpts, train, test, progress=False, **options, **F64)
    reference = copy.deepcopy(model).double().eval()
    names = dict(reference.named_parameters())
    params = (
        pick(reference)
        if pick
        else [p for n, p in names.items() if "layer.1.output" in n and n.startswith("bert.")]
    )

    def grad(ex: dict) -> torch.Tensor:
        logits = reference(
            input_ids=torch.tensor([ex["input_ids"]]),
            token_type_ids=torch.tensor([ex["token_type_ids"]]),
        ).logits
        grads = torch.autograd.grad(F.cross_entropy(logits, torch.tensor([ex["label"]])), params)
        return torch.cat([g.flatten() for g in grads])

    expected = 0.5 * torch.stack([grad(e) for e in test]) @ torch.stack([grad(e) for e in train]).T
    assert float(expected.abs().max()) > 0
    assert_close(ours, expected, rtol=1e-8)


def test_dynamically_padded_batches_equal_ragged_texts(trainer_run) -> None:
    """Batches as ``DataCollatorWithPadding`` makes them (each padded to its own length) give the
    scores of the same texts given one by one. Other batches and paddings sum in other orders:
    in float64 the scores agree to ~1e-15 of their scale, so to 1e-10 of it (a text scored
    against the wrong text, or a batch left out, is off by O(1)); the top-k agrees wherever
    neighbouring scores are further apart than that."""
    model, folder = trainer_run
    ckpts = trainer_checkpoints(folder)
    train, test = ragged(TRAIN_TEXTS), ragged(TEST_TEXTS)
    collator = DataCollatorWithPadding(load_tokenizer())
    batches = [collator([train[i] for i in range(s, s + 3) if i < len(train)]) for s in (0, 3, 6)]
    assert len({b["input_ids"].shape[1] for b in batches}) > 1  # different T per batch
    loader = torch.utils.data.DataLoader(test, batch_size=2, collate_fn=collator)
    from_batches = influence.scores(
        "tracin-we", model, ckpts, batches, loader, progress=False, **F64
    )
    from_texts = influence.scores("tracin-we", model, ckpts, train, test, progress=False, **F64)
    assert_close(from_batches, from_texts, rtol=1e-10)
    best = influence.top_k_streaming(
        "tracin-we", model, ckpts, batches, test, k=2, chunk_size=3, progress=False, **F64
    )
    atol = 1e-10 * float(from_texts.abs().max())
    # No two of these scores are that close: every rank's index is checked.
    assert assert_top_k_close(best, from_texts, 2, atol=atol) == 1.0


def test_fit_trains_a_plain_model_in_place_like_the_wrapped_one() -> None:
    config = TrainConfig.from_params(
        model="cnn", epochs=1, lr=1e-3, optimizer="adam", batch_size=4, checkpoint_epochs=[1]
    )
    data = influence.options.model_inputs(ragged(TRAIN_TEXTS))
    plain, wrapped = tiny_bert(), HFClassifier(tiny_bert())
    before = plain.classifier.weight.detach().clone()
    torch.manual_seed(1)  # dropout draws
    assert fit(plain, data, config, progress=False) is plain
    torch.manual_seed(1)
    fit(wrapped, data, config, progress=False)
    assert not torch.equal(plain.classifier.weight, before)
    # Bitwise: fit wraps the plain model in the same HFClassifier, so both run the same steps.
    for (name, p), q in zip(plain.named_parameters(), wrapped.model.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert torch.equal(predict_proba(plain, data), predict_proba(wrapped, data))


class DictOutput(nn.Module):
    """Returns a dict, not logits: nothing can wrap it."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(VOCAB_SIZE, 4)
        self.classifier = nn.Linear(4, 2)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        return {"scores": self.classifier(self.embedding(input_ids).mean(1))}

    def word_embeddings(self) -> nn.Embedding:
        return self.embedding


@pytest.mark.parametrize(
    "make, method, message",
    [
        (lambda: BertModel(tiny_bert().config), "tracin-we", r"BertModel has no \.logits"),
        (
            lambda: BertModel(tiny_bert().config),
            "tracin-last",
            r"BertModel has no nn.Linear with config.num_labels=2 outputs.*allowed: a transformers",
        ),
        (DictOutput, "tracin-we", r"DictOutput returned dict for 1 inputs, not \(B, C\) logits"),
        (DictOutput, "tracin-last", "no identifiable final linear layer; allowed"),
        (lambda: "bert-tiny", "tracin-we", "a str is not a model; allowed: a transformers"),
    ],
)
def test_unwrappable_models_fail_before_any_gradient(
    make, method: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_gradient(*args, **kwargs):
        raise AssertionError("a gradient was taken")

    monkeypatch.setattr(torch.autograd, "grad", no_gradient)
    model = make()
    state = model.state_dict() if isinstance(model, nn.Module) else {}
    with pytest.raises(ValueError, match=message):
        influence.scores(
            method, model, [(state, 0.1)], ragged(TRAIN_TEXTS[:2]), ragged(TEST_TEXTS[:1])
        )


def test_as_classifier_wraps_only_pretrained_models() -> None:
    plain = tiny_bert()
    wrapped = as_classifier(plain)
    assert isinstance(wrapped, HFClassifier) and wrapped.model is plain
    assert as_classifier(wrapped) is wrapped
    cnn = DictOutput()
    assert as_classifier(cnn) is cnn


def test_a_trainer_checkpoint_folder_is_a_model_name(trainer_run) -> None:
    """``model=<checkpoint folder>`` (notebooks, ``TrainConfig``) loads the Trainer's weights."""
    _, folder = trainer_run
    loaded, init = build_model(str(folder / "checkpoint-4"), 2, seed=0)
    assert init.startswith(f"pretrained:{folder / 'checkpoint-4'}@")
    assert isinstance(loaded, HFClassifier)
    state = trainer_checkpoints(folder)[-1][0]
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, state[name]), name


def test_a_model_folder_with_another_head_pretrained_or_not(tmp_path, caplog) -> None:
    """A saved classifier of 2 classes fine-tunes on 3: its encoder loads, a new seeded head of 3
    outputs replaces its own (logged), not a transformers size-mismatch error. ``pretrained=
    False`` builds the same architecture randomly initialised."""
    saved = tiny_bert(vocab_size=120, num_labels=2)
    saved.save_pretrained(tmp_path / "two")
    with caplog.at_level("WARNING", logger="tracin_we.core.hf_models"):
        model, init = build_model(str(tmp_path / "two"), 3, seed=0)
    assert init.startswith(f"pretrained:{tmp_path / 'two'}@") and "head replaced" in caplog.text
    assert model.model.classifier.out_features == 3
    encoder = saved.bert.state_dict()
    assert all(torch.equal(v, encoder[k]) for k, v in model.model.bert.state_dict().items())
    again = build_model(str(tmp_path / "two"), 3, seed=0)[0]  # the new head is seeded
    assert torch.equal(again.model.classifier.weight, model.model.classifier.weight)
    random, init = build_model(str(tmp_path / "two"), 3, seed=1, pretrained=False)
    assert init == f"random(seed=1):{tmp_path / 'two'}"  # (tiny_bert's own seed is 0)
    assert random.model.classifier.out_features == 3
    same = build_model(str(tmp_path / "two"), 3, seed=1, pretrained=False)[0]
    assert all(torch.equal(v, same.state_dict()[k]) for k, v in random.state_dict().items())
    embedding = random.model.bert.embeddings.word_embeddings.weight
    assert embedding.shape == (120, 16) and not torch.equal(
        embedding, saved.bert.embeddings.word_embeddings.weight
    )


def named_head(folder, names: list[str]) -> BertForSequenceClassification:
    """A tiny BERT classifier whose id2label names its outputs ``names``, saved in ``folder``."""
    model = tiny_bert(num_labels=len(names))
    model.config.id2label = dict(enumerate(names))
    model.config.label2id = {name: i for i, name in enumerate(names)}
    model.save_pretrained(folder)
    return model.eval()


def test_a_head_naming_the_datas_classes_in_another_order_is_reordered(tmp_path, caplog):
    """A fine-tuned head whose id2label lists the data's classes in another order would read
    every prediction as another class: its output rows are put in the data's order."""
    saved = named_head(tmp_path / "named", ["pos", "neg"])
    ids = torch.tensor([[101, 2204, 3185, 102]])
    with torch.no_grad():
        expected = saved(input_ids=ids).logits[:, [1, 0]]  # neg, pos
        for data in (("neg", "pos"), ("NEG", "POS")):
            model = build_model(str(tmp_path / "named"), 2, seed=0, label_names=data)[0].eval()
            assert torch.allclose(model(ids), expected)
            assert model.model.config.id2label == dict(enumerate(data))
        same = build_model(str(tmp_path / "named"), 2, seed=0, label_names=("pos", "neg"))[0]
        assert torch.allclose(same.eval()(ids), saved(input_ids=ids).logits)
    with caplog.at_level("WARNING", logger="tracin_we.core.hf_models"):
        build_model(str(tmp_path / "named"), 2, seed=0, label_names=("bad", "good"))
    assert "are not the data's ['bad', 'good']" in caplog.text  # other names: kept, and said


def test_new_model_matches_a_head_to_a_built_in_tasks_classes(tiny_data_dir, tmp_path):
    """Through a TrainConfig (what the notebooks use): AG News's classes come from the task
    itself (label_names stays unset), and a head fine-tuned in another order is reordered."""
    names = ["Sports", "World", "Sci/Tech", "Business"]
    saved = named_head(tmp_path / "agnews", names)
    config = TrainConfig.from_params(
        model=str(tmp_path / "agnews"),
        data_dir=str(tiny_data_dir),
        n_train=40,
        n_val=8,
        n_test=20,
        max_length=16,
    )
    model = new_model(config)[0].eval()
    ids = torch.tensor([[101, 2204, 3185, 102]])
    with torch.no_grad():
        order = [names.index(c) for c in ("World", "Sports", "Business", "Sci/Tech")]
        assert torch.allclose(model(ids), saved(input_ids=ids).logits[:, order])


def test_a_model_folder_trained_again_in_place_is_another_init(tmp_path) -> None:
    """The init description (part of every cache key) names a folder's weights by their digest:
    a folder overwritten with other weights cannot be served the old folder's cached runs."""
    folder = str(tmp_path / "model")
    tiny_bert(vocab_size=120).save_pretrained(folder)
    first = build_model(folder, 2, seed=0)[1]
    assert build_model(folder, 2, seed=0)[1] == first  # the same weights: the same init
    torch.manual_seed(1)
    BertForSequenceClassification(tiny_bert(vocab_size=120).config).save_pretrained(folder)
    assert build_model(folder, 2, seed=0)[1] != first
