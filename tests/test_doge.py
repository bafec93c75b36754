"""DoGE domain reweighting (experiments.doge): the update on constructed gradients with known
answers, the loop's determinism, mixtures at one budget, and the study config's checks."""

from __future__ import annotations

import math

import pytest
import torch

from tracin_we.core.data import make_splits
from tracin_we.experiments.doge import DogeSettings, doge_update, mixture_keep, run_doge
from tracin_we.experiments.pretrain_study import PretrainStudyConfig, class_subset
from tracin_we.training.pretrain import mlm_loss, mlm_tensors, new_mlm_model, pretraining_corpus

UNIFORM = torch.full((3,), 1 / 3, dtype=torch.float64)
TARGET = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
# domain 0 aligned with the target, 1 orthogonal, 2 opposed; every norm 1
GRADS = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]], dtype=torch.float64)


def test_aligned_domain_gains_and_the_others_lose_by_the_known_amount():
    step = doge_update(UNIFORM, GRADS, TARGET, lr=0.01, mu=0.05)
    # W = lr * <g_i, g_T> / mean ||g_i|| = (0.01, 0, -0.01), clipped to [0, 5 lr]
    assert torch.allclose(step.scores, torch.tensor([0.01, 0.0, 0.0], dtype=torch.float64))
    expected = torch.softmax(torch.tensor([0.01 / 0.05, 0.0, 0.0], dtype=torch.float64), 0)
    assert torch.allclose(step.weights, expected)
    assert step.weights[0] > 1 / 3 > step.weights[1] == step.weights[2]
    assert math.isclose(step.weights.sum().item(), 1.0)


def test_negative_clip_bound_separates_opposed_from_orthogonal():
    step = doge_update(UNIFORM, GRADS, TARGET, lr=0.01, mu=0.05, dw_min=-5.0)
    assert step.scores[2] == pytest.approx(-0.01)
    assert step.weights[0] > step.weights[1] > step.weights[2]


def test_scores_are_clipped_at_dw_max_times_lr_and_mu_sets_the_step():
    big = GRADS.clone()
    big[0] *= 1000.0  # mean norm 334: score 0.01 * 1000 / 334 ≈ 0.03 > 0.01 * 2
    step = doge_update(UNIFORM, big, TARGET * 1000, lr=0.01, mu=0.05, dw_max=2.0)
    assert step.scores[0] == pytest.approx(0.02)
    small_mu = doge_update(UNIFORM, GRADS, TARGET, lr=0.01, mu=0.005)
    large_mu = doge_update(UNIFORM, GRADS, TARGET, lr=0.01, mu=0.5)
    assert small_mu.weights[0] > large_mu.weights[0] > 1 / 3


def test_smoothing_and_several_target_gradients():
    targets = torch.stack([TARGET, TARGET])  # two target domains: the scores add
    step = doge_update(UNIFORM, GRADS, targets, lr=0.01, mu=0.05, eps=0.5)
    raw = torch.softmax(torch.tensor([0.02 / 0.05, 0.0, 0.0], dtype=torch.float64), 0)
    assert torch.allclose(step.weights, 0.5 * raw + 0.5 / 3)


def test_bad_shapes_and_settings_are_refused():
    with pytest.raises(ValueError, match="target_grads has 2 parameters"):
        doge_update(UNIFORM, GRADS, TARGET[:2], lr=0.01)
    with pytest.raises(ValueError, match="mu=0"):
        DogeSettings(mu=0.0)
    with pytest.raises(ValueError, match=r"dw_min=1\.0 must be <= dw_max=0\.5"):
        DogeSettings(dw_min=1.0, dw_max=0.5)


def test_mixture_keeps_n_texts_with_the_weights_shares_and_redistributes_what_is_missing():
    domains = ["a"] * 10 + ["b"] * 10 + ["c"] * 4
    keep = mixture_keep(domains, {"a": 0.5, "b": 0.25, "c": 0.25}, 16, seed=0)
    kept = [d for d, k in zip(domains, keep.tolist(), strict=True) if k]
    assert len(kept) == 16 and kept.count("a") == 8 and kept.count("c") == 4
    assert kept.count("b") == 4
    # c holds 4 texts only: its quota of 8 goes to the others, heaviest first
    keep = mixture_keep(domains, {"a": 0.25, "b": 0.25, "c": 0.5}, 16, seed=0)
    kept = [d for d, k in zip(domains, keep.tolist(), strict=True) if k]
    assert kept.count("c") == 4 and len(kept) == 16
    assert torch.equal(keep, mixture_keep(domains, {"a": 0.25, "b": 0.25, "c": 0.5}, 16, 0))
    with pytest.raises(ValueError, match="domains \\['d'\\] have no corpus text"):
        mixture_keep(domains, {"a": 1.0, "d": 1.0}, 4, 0)
    with pytest.raises(ValueError, match=r"n=12: the domains of weights \(\['c'\]\) hold only 4"):
        mixture_keep(domains, {"c": 1.0}, 12, 0)  # weighted domains cannot fill n


def test_the_loop_is_deterministic_and_records_weights_per_step(tiny_data_dir):
    config = PretrainStudyConfig.from_params(
        n_train=40,
        n_val=8,
        n_test=20,
        max_length=16,
        n_corpus=40,
        n_mixture=20,
        k=4,
        pretrain_epochs=1,
        doge_steps=3,
        doge_batch=4,
        pretrained=False,
        data_dir=str(tiny_data_dir),
        target_classes=["World", "Sports"],
    )
    pre = config.pretrain
    corpus = pretraining_corpus(pre)
    tensors = mlm_tensors(corpus, pre)
    splits = class_subset(make_splits(pre.data), config.target_classes, pre.data.task.label_names)
    assert set(splits["train"]["label"]) == {0, 1}
    target = mlm_tensors(splits["train"], pre)
    runs = [
        run_doge(
            new_mlm_model(0), tensors, list(corpus["domain"]), target, pre, config.doge, mlm_loss
        )
        for _ in range(2)
    ]
    assert runs[0].history.equals(runs[1].history)
    assert all(torch.equal(runs[0].state[k], runs[1].state[k]) for k in runs[0].state)
    history = runs[0].history
    assert sorted(history["step"].unique()) == [0, 1, 2, 3]
    assert history.groupby("step")["weight"].sum().round(9).eq(1.0).all()
    assert set(runs[0].average) == set(corpus["domain"])
    assert not torch.equal(
        runs[0].state["model.bert.embeddings.word_embeddings.weight"],
        new_mlm_model(0).state_dict()["model.bert.embeddings.word_embeddings.weight"],
    )


def test_study_config_refuses_unknown_classes_and_other_models():
    with pytest.raises(ValueError, match="target_classes=\\['World', 'Space'\\]"):
        PretrainStudyConfig.from_params(target_classes=["World", "Space"])
    with pytest.raises(ValueError, match="model='cnn'"):
        PretrainStudyConfig.from_params(model="cnn")
    with pytest.raises(ValueError, match="n_mixture=500 must be <= n_corpus=400"):
        PretrainStudyConfig.from_params(n_mixture=500)
