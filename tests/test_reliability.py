"""Non-finite values are errors (training, checkpoints, scores, top-k, deletion); ``n_val=0``
trains; every model's input length is checked up front with its name; the torch thread count is
part of the recorded config and of the cache key."""

from __future__ import annotations

import json
import math

import pytest
import torch
import transformers

from tracin_we import influence
from tracin_we.core.tasks import load_raw
from tracin_we.experiments.deletion import DeletionConfig, run_deletion
from tracin_we.training import retrain as retrain_module
from tracin_we.training.recipe import TrainConfig
from tracin_we.training.train import train


@pytest.mark.parametrize("model", ["cnn", "bert-tiny"])
def test_exploding_sgd_is_stopped_naming_epoch_and_step(train_config, model):
    config = train_config(model=model, pretrained=False, optimizer="sgd", lr=1e6)
    with pytest.raises(FloatingPointError, match=r"loss is .* at epoch 1, step \d/4.*lower lr"):
        result = train(config, progress=False)
        print(result.history)  # the defect: "succeeds" with a loss of 1e20 or NaN


def test_non_finite_weights_stop_training_before_they_are_saved(
    train_config, tmp_path, monkeypatch
):
    # The epoch's last update overflows one weight (a loss check alone would not see it).
    step = torch.optim.SGD.step

    def overflowing_step(self, *args, **kwargs):
        step(self, *args, **kwargs)
        self.param_groups[0]["params"][-1].data.fill_(float("inf"))

    monkeypatch.setattr(torch.optim.SGD, "step", overflowing_step)
    config = train_config(batch_size=64, epochs=1, checkpoint_epochs=[1])
    with pytest.raises(FloatingPointError, match=r"weights \['classifier.bias'\] are non-finite"):
        train(config, run_dir=tmp_path / "run", progress=False)  # tmp_path holds the data
    assert not list((tmp_path / "run").glob("*.pt"))


def test_scores_refuse_checkpoints_with_non_finite_weights(influence_case):
    model, checkpoints, train_t, test_t = influence_case
    state = {k: v.clone() for k, v in checkpoints[1][0].items()}
    state["classifier.weight"][0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"checkpoints\[1\] has non-finite weights.*classifier"):
        influence.scores("tracin-we", model, [checkpoints[0], (state, 0.05)], train_t, test_t)


def test_scores_refuse_non_finite_results(influence_case):
    model, checkpoints, train_t, test_t = influence_case
    state = {k: v.clone() for k, v in checkpoints[0][0].items()}
    state["classifier.weight"] *= 1e30  # finite weights whose gradients overflow
    with pytest.raises(ValueError, match=r"method='tracin-we' gave \d+ non-finite scores"):
        influence.scores("tracin-we", model, [(state, 0.1)], train_t, test_t)


def test_top_k_refuses_nan_and_ranks_infinities():
    with pytest.raises(ValueError, match=r"NaN in rows \[0\]"):
        influence.top_k(torch.tensor([[1.0, float("nan"), 3.0, 2.0]]), 2)
    top = influence.top_k(torch.tensor([[1.0, float("-inf"), 3.0, float("inf")]]), 2)
    assert top.indices.tolist() == [[3, 2]]  # ±inf (no-overlap masks) still rank


def test_run_deletion_refuses_nan_scores_before_any_retrain(token_splits, tmp_path, monkeypatch):
    monkeypatch.setattr(retrain_module, "train_job", lambda *a, **k: pytest.fail("retrained"))
    config = DeletionConfig(
        train=TrainConfig.from_params(
            model="cnn", n_train=32, n_val=8, n_test=16, max_length=12, epochs=1, batch_size=8,
            checkpoint_epochs=[1],
        ),
        methods=("tracin-we",), ks=(3,), n_test_points=4, seeds=(0,), backend="sequential",
    )  # fmt: skip
    nan = torch.full((16, 32), float("nan"))
    with pytest.raises(ValueError, match=r"scores\['tracin-we'\] has NaN"):
        run_deletion(config, token_splits, scores={"tracin-we": nan}, cache=tmp_path)


def test_n_val_zero_trains_and_reloads(train_config):
    config = train_config(n_val=0, epochs=2, checkpoint_epochs=[2])
    result = train(config, progress=False)
    assert math.isnan(result.metrics["val_accuracy"]) and result.metrics["test_accuracy"] > 0
    assert [h["epoch"] for h in result.history] == [1, 2]
    again = train(config, progress=False)
    assert again.run_dir == result.run_dir and len(again.checkpoint_pairs()) == 1


@pytest.mark.parametrize(
    ("model", "max_length", "match"),
    [
        ("cnn", 8, "max_length=8 does not fit model='cnn': it takes 9 to any number of tokens"),
        ("bert-tiny", 513, "max_length=513 does not fit model='bert-tiny': it takes 1 to 512"),
    ],
)
def test_max_length_outside_a_builtin_model_is_refused_up_front(
    train_config, model, max_length, match
):
    with pytest.raises(ValueError, match=match):
        train_config(model=model, max_length=max_length)


def test_max_length_beyond_a_hugging_face_models_positions_is_refused(train_config, tmp_path):
    config = transformers.BertConfig(
        vocab_size=30522,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=1,
        intermediate_size=8,
        max_position_embeddings=12,
        num_labels=4,
    )
    folder = tmp_path / "small-bert"
    transformers.BertForSequenceClassification(config).save_pretrained(folder)
    with pytest.raises(ValueError, match=f"max_length=16 does not fit model='{folder}'.* 1 to 12"):
        train(train_config(model=str(folder)), progress=False)


def test_scores_refuse_texts_shorter_than_the_model_takes(influence_case):
    model, checkpoints, train_t, test_t = influence_case
    short = {k: v[:, :8] if v.dim() == 2 else v for k, v in train_t.items()}
    with pytest.raises(ValueError, match="train's length=8 does not fit model='CNNClassifier'"):
        influence.scores("tracin-we", model, checkpoints, short, test_t)


def test_thread_count_is_recorded_and_keys_the_run(train_config):
    config = train_config(epochs=1, checkpoint_epochs=[1])
    one = train(config, progress=False)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        two = train(config, progress=False)
    finally:
        torch.set_num_threads(before)
    saved = [json.loads((r.run_dir / "config.json").read_text()) for r in (one, two)]
    assert [s["threads"] for s in saved] == [before, 2] and before != 2
    assert one.run_dir != two.run_dir  # bitwise results differ between thread counts


@pytest.mark.parametrize(
    ("content", "why"),
    [(b"", "empty"), (b"text,label\n\xff\xfe caf\xe9,1\n", "not UTF-8"), (b'"a,1\n', "parse")],
)
def test_unreadable_local_file_is_named(tmp_path, content, why):
    """An empty, non-UTF-8 or malformed data file: an error naming the file, not pandas' own."""
    folder = tmp_path / "ag_news"
    folder.mkdir()
    (folder / "train.csv").write_bytes(content)
    with pytest.raises(ValueError, match=r"train\.csv.*cannot be read"):
        load_raw("ag_news", "train", str(tmp_path))
