"""Notebook 09's study (experiments.pretrain_study): re-pretraining reproduces the cached run
(common random numbers), the counterfactual table, the mixtures comparison and the summary."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from tests.conftest import TINY_FINE_TUNING, tiny_table, word_level_tokenizer
from tracin_we.core.data import make_splits
from tracin_we.core.models import word_embeddings
from tracin_we.experiments.pretrain_study import (
    METHODS,
    PretrainStudyConfig,
    class_subset,
    compare_mixtures,
    counterfactual,
    counterfactual_store,
    counterfactual_summary,
    finetune,
    pick_points,
    repretrain,
    subtask_tensors,
)
from tracin_we.training.pretrain import pretrain


def study_config(data_dir, **changes) -> PretrainStudyConfig:
    return PretrainStudyConfig.from_params(
        **(
            TINY_FINE_TUNING
            | dict(
                n_corpus=40,
                n_mixture=20,
                k=4,
                n_test_points=2,
                pretrain_epochs=1,
                data_dir=str(data_dir),
                target_classes=["World", "Sports"],
            )
            | changes
        )
    )


@pytest.fixture
def study(tiny_data_dir):
    config = study_config(tiny_data_dir)
    pre = pretrain(config.pretrain, progress=False)
    names = config.train.data.task.label_names
    splits = class_subset(make_splits(config.train.data), config.target_classes, names)
    return config, pre, subtask_tensors(splits)


def test_repretraining_on_every_text_reproduces_the_cached_run(study):
    _, pre, _ = study
    final = pre.final.load()["state_dict"]
    again = repretrain(pre, torch.ones(len(pre.corpus), dtype=torch.bool))
    # Bitwise: the same fit, step for step, on the same (one) torch thread; training only the
    # present embedding rows changes no bit (test_train).
    assert all(torch.equal(final[k], again[k]) for k in final)


def test_counterfactual_removes_k_texts_per_point_and_method(study, monkeypatch, tmp_path):
    config, pre, data = study
    n_test, n = len(data["test"]["labels"]), len(pre.corpus)
    scores = torch.arange(n, dtype=torch.float).repeat(n_test, 1)  # top-k: the last k texts
    kept = []
    real = repretrain

    def spy(pre, keep, device="cpu"):
        kept.append(keep.clone())
        return real(pre, keep, device)

    monkeypatch.setattr("tracin_we.experiments.pretrain_study.repretrain", spy)
    points = pick_points(config, data["test"]["labels"])
    table = counterfactual(config, pre, scores, data, points, cache=tmp_path)
    # Every distinct kept set trains once: the full corpus, the top-k (the same for every point,
    # as every row of scores is), and a random k per point.
    assert len(kept) == 2 + len(points) and kept[0].all()
    assert len({tuple(keep.tolist()) for keep in kept}) == len(kept)
    assert torch.equal((~kept[1]).nonzero().flatten(), torch.arange(n - config.k, n))
    assert all(int((~keep).sum()) == config.k for keep in kept[1:])
    assert len(table) == 2 * len(points) and set(table["method"]) == set(METHODS)
    assert (table.groupby("point")["p_full"].nunique() == 1).all()
    assert torch.allclose(
        torch.tensor(table["delta"].to_numpy()),
        torch.tensor((table["p_removed"] - table["p_full"]).to_numpy()),
    )
    with pytest.raises(ValueError, match="scores has shape"):
        counterfactual(config, pre, scores[:, :3], data, points)


def test_counterfactual_runs_are_cached_and_resume(study, monkeypatch, tmp_path):
    config, pre, data = study
    n_test, n = len(data["test"]["labels"]), len(pre.corpus)
    scores = torch.arange(n, dtype=torch.float).repeat(n_test, 1)
    points = pick_points(config, data["test"]["labels"])
    first = counterfactual(config, pre, scores, data, points, cache=tmp_path)
    store = counterfactual_store(config, pre, data, tmp_path)
    runs = sorted(store.path.glob("*.pt"))
    assert len(runs) == 2 + len(points)  # full corpus, the shared top-k, one random k per point
    calls = []
    real = repretrain
    monkeypatch.setattr(
        "tracin_we.experiments.pretrain_study.repretrain",
        lambda pre, keep, device="cpu": calls.append(keep) or real(pre, keep, device),
    )
    again = counterfactual(config, pre, scores, data, points, cache=tmp_path)
    pd.testing.assert_frame_equal(first, again)
    assert calls == []  # every run came from the cache
    runs[-1].unlink()  # as if interrupted before that run was saved
    resumed = counterfactual(config, pre, scores, data, points, cache=tmp_path)
    pd.testing.assert_frame_equal(first, resumed)
    assert len(calls) == 1  # only the missing run trains


def test_summary_pairs_the_methods_over_points():
    table = pd.DataFrame(
        {
            "point": [0, 0, 1, 1, 2, 2],
            "method": list(METHODS) * 3,
            "delta": [-0.3, 0.0, -0.2, 0.1, -0.4, 0.0],
        }
    )
    means, paired = counterfactual_summary(table, n_bootstrap=200)
    assert means.set_index("method")["mean"].to_dict() == pytest.approx(
        {METHODS[0]: -0.3, METHODS[1]: 1 / 30}
    )
    row = paired.iloc[0]
    assert row["difference"] == pytest.approx(-0.3 - 1 / 30)
    assert row["verdict"] == "reference better" and row["share_better"] == 1.0


def test_mixtures_at_one_budget(study):
    config, pre, data = study
    weights = {"World": 1.0, "Sports": 1.0, "Business": 0.0, "Sci/Tech": 0.0}
    table = compare_mixtures(config, pre, {"targets": weights}, data)
    counts = table["texts_by_domain"].iloc[0]
    assert sum(counts.values()) == config.n_mixture
    assert counts["Business"] == counts["Sci/Tech"] == 0
    assert 0 <= table["val_accuracy"].iloc[0] <= 1 and table["val_loss"].iloc[0] > 0


def test_the_study_fine_tunes_with_its_own_tokenizer(tiny_data_dir, tmp_path):
    """Another tokenizer (word-level, with <mask>): the study's fine-tuning runs, whose models
    were once built with BERT's 30,522 rows whatever the tokenizer, load the pretraining run's
    embedding of that tokenizer's size."""
    words = sorted({w for text in tiny_table(220)["text"] for w in text.split()})
    folder = tmp_path / "tokenizer"
    word_level_tokenizer(words, mask=True).save_pretrained(folder)
    config = study_config(tiny_data_dir, tokenizer=str(folder))
    pre = pretrain(config.pretrain, progress=False)
    names = config.train.data.task.label_names
    data = subtask_tensors(
        class_subset(make_splits(config.train.data), config.target_classes, names)
    )
    model = finetune(repretrain(pre, None), config.train, data["train"])
    assert word_embeddings(model).num_embeddings == len(words) + 5  # 4 specials + <mask>
    uniform = dict.fromkeys(names, 1.0)
    assert compare_mixtures(config, pre, {"uniform": uniform}, data).shape[0] == 1
    without_mask = tmp_path / "no-mask"
    word_level_tokenizer(words).save_pretrained(without_mask)
    with pytest.raises(ValueError, match="mask"):  # refused before anything trains
        study_config(tiny_data_dir, tokenizer=str(without_mask))
