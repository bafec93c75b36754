from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from tests.conftest import tiny_train_config
from tracin_we.core.checkpoints import CheckpointError, load_checkpoint, trainer_checkpoints
from tracin_we.core.data import make_splits
from tracin_we.core.hf_models import HFClassifier
from tracin_we.core.inputs import model_inputs
from tracin_we.core.models import CNNClassifier, build_model, classifier_layer, word_embeddings
from tracin_we.training import cached_run
from tracin_we.training.loop import fit, predict_proba
from tracin_we.training.train import train, trained


def state(path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["state_dict"]


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize(
    ("model", "optimizer"), [("cnn", "sgd"), ("cnn", "adam"), ("bert-tiny", "sgd")]
)
def test_same_seed_gives_identical_checkpoints(tiny_data_dir, tmp_path, model, optimizer):
    config = tiny_train_config(tiny_data_dir, model=model, pretrained=False, optimizer=optimizer)
    first = train(config, cache=tmp_path / "a", progress=False)
    second = train(config, cache=tmp_path / "b", progress=False)
    for c1, c2 in zip(
        [*first.checkpoints, first.final], [*second.checkpoints, second.final], strict=True
    ):
        assert_same_tensors(state(c1.path), state(c2.path))
    other = train(
        tiny_train_config(tiny_data_dir, model=model, pretrained=False, seed=1),
        cache=tmp_path / "a",
        progress=False,
    )
    assert not torch.equal(
        state(other.final.path)[
            "classifier.weight" if model == "cnn" else "model.classifier.weight"
        ],
        state(first.final.path)[
            "classifier.weight" if model == "cnn" else "model.classifier.weight"
        ],
    )


def test_cnn_learns_the_tiny_task(tiny_data_dir):
    result = train(
        tiny_train_config(tiny_data_dir, epochs=8, checkpoint_epochs=[8]), progress=False
    )
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.metrics["test_accuracy"] > 0.5  # chance is 0.25


def test_rerun_reuses_the_saved_result(tiny_data_dir, monkeypatch):
    config = tiny_train_config(tiny_data_dir)
    first = train(config, progress=False)
    monkeypatch.setattr(cached_run, "fit", lambda *a, **k: pytest.fail("trained again"))
    second = train(config, progress=False)
    assert second.run_dir == first.run_dir and second.metrics == first.metrics


def test_trained_finds_a_finished_run_without_training(tiny_data_dir, tmp_path, monkeypatch):
    config = tiny_train_config(tiny_data_dir)
    assert trained(config, cache=tmp_path) is None
    first = train(config, cache=tmp_path, progress=False)
    monkeypatch.setattr(cached_run, "fit", lambda *a, **k: pytest.fail("trained"))
    found = trained(config, cache=tmp_path)
    assert found.run_dir == first.run_dir and found.metrics == first.metrics
    assert trained(tiny_train_config(tiny_data_dir, lr=0.04), cache=tmp_path) is None
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)  # another thread count: another run (its cache key)
    try:
        assert trained(config, cache=tmp_path) is None
    finally:
        torch.set_num_threads(threads)
    (first.run_dir / "result.json").unlink()  # as an interrupted run leaves it
    assert trained(config, cache=tmp_path) is None


def test_another_config_never_reuses(tiny_data_dir):
    first = train(tiny_train_config(tiny_data_dir), progress=False)
    second = train(tiny_train_config(tiny_data_dir, lr=0.04), progress=False)
    assert second.run_dir != first.run_dir


def test_interrupted_run_resumes_to_the_same_result(tiny_data_dir, tmp_path, monkeypatch):
    config = tiny_train_config(tiny_data_dir)
    reference = train(config, cache=tmp_path / "ref", progress=False)
    real_fit = cached_run.fit

    def interrupted_fit(*args, on_epoch, **kwargs):
        def stop_after_first(epoch, *rest):
            on_epoch(epoch, *rest)
            raise KeyboardInterrupt

        return real_fit(*args, on_epoch=stop_after_first, **kwargs)

    monkeypatch.setattr(cached_run, "fit", interrupted_fit)
    with pytest.raises(KeyboardInterrupt):
        train(config, cache=tmp_path / "run", progress=False)
    run_dir = next((tmp_path / "run" / "train").iterdir())
    assert (run_dir / "resume.pt").is_file() and not (run_dir / "result.json").exists()
    monkeypatch.setattr(cached_run, "fit", real_fit)
    resumed = train(config, cache=tmp_path / "run", progress=False)
    assert not (run_dir / "resume.pt").exists()
    assert_same_tensors(state(resumed.final.path), state(reference.final.path))
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]


def test_run_dir_with_another_config_is_refused(tiny_data_dir, tmp_path):
    train(tiny_train_config(tiny_data_dir), run_dir=tmp_path / "named", progress=False)
    with pytest.raises(CheckpointError, match="another config"):
        train(
            tiny_train_config(tiny_data_dir, epochs=2, checkpoint_epochs=[2]),
            run_dir=tmp_path / "named",
            progress=False,
        )
    result = train(
        tiny_train_config(tiny_data_dir, epochs=2, checkpoint_epochs=[2]),
        run_dir=tmp_path / "named",
        overwrite=True,
        progress=False,
    )
    assert [c.epoch for c in result.checkpoints] == [2]


def test_checkpoint_round_trip_with_learning_rate(tiny_data_dir):
    config = tiny_train_config(tiny_data_dir)
    result = train(config, progress=False)
    saved = torch.load(result.checkpoints[0].path, weights_only=True)
    assert saved["lr"] == config.lr and saved["epoch"] == 1
    assert json.loads(saved["config"])["lr"] == config.lr
    pairs = result.checkpoint_pairs()
    assert [lr for _, lr in pairs] == [config.lr, config.lr]
    model = result.load_model("final")
    data = model_inputs(make_splits(config.data)["test"])
    fresh = build_model("cnn", 4, seed=123)[0]
    fresh.load_state_dict(state(result.final.path))
    assert torch.equal(predict_proba(model, data), predict_proba(fresh, data))


def test_corrupted_checkpoint_is_detected_not_loaded(tiny_data_dir):
    config = tiny_train_config(tiny_data_dir)
    result = train(config, progress=False)
    raw = bytearray(result.checkpoints[0].path.read_bytes())
    raw[-100] ^= 0xFF
    result.checkpoints[0].path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupted"):
        train(config, progress=False)
    with pytest.raises(CheckpointError, match="corrupted"):
        result.checkpoint_pairs()


def test_keep_mask_of_all_true_changes_nothing(tiny_data_dir):
    config = tiny_train_config(tiny_data_dir, epochs=1, checkpoint_epochs=[1])
    data = model_inputs(make_splits(config.data)["train"])
    plain = fit(build_model("cnn", 4, 0)[0], data, config, progress=False)
    masked = fit(
        build_model("cnn", 4, 0)[0],
        data,
        config,
        progress=False,
        keep=torch.ones(len(data["labels"]), dtype=torch.bool),
    )
    assert_same_tensors(plain.state_dict(), masked.state_dict())


@pytest.mark.parametrize(
    ("model", "optimizer", "freeze"),
    [
        ("cnn", "adam", False),
        ("cnn", "sgd", False),
        ("bert-tiny", "adam", False),
        ("cnn", "adam", True),
    ],
)
def test_training_present_rows_only_gives_the_same_model_bit_for_bit(
    tiny_data_dir, model, optimizer, freeze
):
    """The speed-up of ``present_rows_only``: absent tokens' rows never move, so training the
    present rows alone (and some examples removed) must give every weight bit for bit.

    Bitwise is the claim, and the computation is the same: every step is elementwise on each
    embedding row or a per-row gather/scatter in the same order, on one torch thread (conftest),
    and 128-float rows start on whole SIMD blocks in either matrix (no element moves between a
    kernel's vector body and its scalar tail, which may round differently)."""
    config = tiny_train_config(
        tiny_data_dir,
        model=model,
        pretrained=False,
        optimizer=optimizer,
        epochs=2,
        checkpoint_epochs=[2],
        freeze_embeddings=freeze,
    )
    data = model_inputs(make_splits(config.data)["train"])
    keep = torch.arange(len(data["labels"])) % 5 != 0
    models = [
        fit(build_model(model, 4, 0)[0], data, config, keep=keep, progress=False, present_rows=rows)
        for rows in (False, True)
    ]
    full, compact = (m.state_dict() for m in models)
    assert_same_tensors(full, compact)
    embedding = word_embeddings(models[1])
    assert embedding.num_embeddings == 30522  # the full matrix is back after training
    assert embedding.weight.shape == (30522, embedding.embedding_dim)
    init = word_embeddings(build_model(model, 4, 0)[0]).weight
    moved = (embedding.weight != init).any(-1).nonzero().flatten()
    assert set(moved.tolist()) <= set(data["input_ids"].unique().tolist())
    assert len(moved) > 0 if not freeze else len(moved) == 0


def test_a_tied_embedding_is_trained_whole(tiny_data_dir):
    """A word-embedding matrix shared with another layer (tied output) keeps its full shape: the
    compact swap would untie it."""
    config = tiny_train_config(tiny_data_dir, epochs=1, checkpoint_epochs=[1])
    data = model_inputs(make_splits(config.data)["train"])
    model = build_model("cnn", 4, 0)[0]
    model.tied = nn.Linear(128, 30522, bias=False)
    model.tied.weight = model.embeddings.weight
    seen = []
    model.embeddings.register_forward_hook(lambda m, i, o: seen.append(m.weight.shape[0]))
    fit(model, data, config, progress=False)
    assert set(seen) == {30522}
    assert model.tied.weight is model.embeddings.weight


def test_frozen_embeddings_stay_at_init(tiny_data_dir):
    config = tiny_train_config(
        tiny_data_dir, epochs=1, checkpoint_epochs=[1], freeze_embeddings=True
    )
    data = model_inputs(make_splits(config.data)["train"])
    model = build_model("cnn", 4, 0)[0]
    before = model.embeddings.weight.clone()
    fit(model, data, config, progress=False)
    assert torch.equal(model.embeddings.weight, before)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"lr": 0.0}, "lr=0.0 must be > 0"),
        ({"lr": -1.0}, "lr=-1.0"),
        ({"epochs": 0}, "epochs=0"),
        ({"optimizer": "lbfgs"}, "optimizer=.lbfgs.; allowed"),
        ({"checkpoint_epochs": [4]}, r"checkpoint_epochs=\[4\]"),
        ({"model": "gpt-17"}, "model='gpt-17' is unknown"),
        ({"dataset": "imdb"}, "dataset='imdb'"),
        ({"batch_sise": 3}, r"unknown parameters \['batch_sise'\]"),
    ],
)
def test_bad_training_input_is_refused_before_training(tiny_data_dir, change, match):
    with pytest.raises(ValueError, match=match):
        tiny_train_config(tiny_data_dir, **change)


def test_models_expose_their_embedding_and_final_layer():
    for name in ("cnn", "bert-tiny"):
        model = build_model(name, 3, seed=0, pretrained=False)[0]
        assert word_embeddings(model).weight.shape == (30522, 128)
        assert classifier_layer(model).out_features == 3
        ids = torch.randint(1, 30522, (2, 12))
        assert model(ids, torch.ones_like(ids)).shape == (2, 3)
    with pytest.raises(ValueError, match="no identifiable word-embedding layer"):
        word_embeddings(nn.Linear(3, 3))
    with pytest.raises(ValueError, match="no identifiable final linear layer"):
        classifier_layer(nn.Linear(3, 3))


def test_cnn_padding_gets_no_embedding_gradient():
    model = CNNClassifier(num_labels=2, vocab_size=20, embed_dim=8)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12, 13, 0, 0, 0]])
    mask = (ids != 0).long()
    torch.nn.functional.cross_entropy(model(ids, mask), torch.tensor([1])).backward()
    assert torch.all(model.embeddings.weight.grad[0] == 0)
    assert model.embeddings.weight.grad[5].abs().sum() > 0


def test_trainer_checkpoint_folders_give_state_dicts_and_learning_rates(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from datasets import Dataset

    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        num_labels=2,
    )
    torch.manual_seed(0)
    hf = transformers.BertForSequenceClassification(config)
    rows = Dataset.from_dict(
        {"input_ids": torch.randint(1, 50, (16, 8)).tolist(), "labels": [0, 1] * 8}
    )
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        num_train_epochs=1,
        learning_rate=0.1,
        lr_scheduler_type="linear",
        save_steps=2,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
    )
    transformers.Trainer(model=hf, args=args, train_dataset=rows).train()
    pairs = trainer_checkpoints(tmp_path)
    assert len(pairs) == 2
    lrs = [lr for _, lr in pairs]
    assert lrs[0] > lrs[1] > 0  # linear decay: the lr in force at each saved step
    state_dict, _ = pairs[-1]
    wrapped = HFClassifier(transformers.BertForSequenceClassification(config))
    wrapped.load_state_dict(state_dict)
    assert torch.equal(wrapped.model.classifier.weight, hf.classifier.weight.detach())


def test_additive_mask_gives_the_hf_models_own_logits():
    model = build_model("bert-tiny", 3, seed=0, pretrained=False)[0].eval()
    ids = torch.randint(1, 30522, (3, 10))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    ids[mask == 0] = 0
    own = model.model(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(model(ids, mask), own, atol=1e-6)
