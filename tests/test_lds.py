"""The linear datamodeling score: a model whose output is exactly additive (known answer), the
margin, the subset draw, and one tiny run of subset retrains (CNN, 32 synthetic training texts,
4 subsets, 4 test points) that a second call reads back from the cache."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from datasets import Dataset, DatasetDict
from scipy.stats import spearmanr

from tracin_we import influence
from tracin_we.core.checkpoints import CheckpointError
from tracin_we.core.inputs import model_inputs
from tracin_we.core.stats import paired_bootstrap, spearman, two_way_means
from tracin_we.experiments.lds import LDSConfig, draw_subsets, load_lds, run_lds, subset_jobs
from tracin_we.experiments.lds_tables import (
    convergence,
    convergence_grid,
    lds_table,
    margins,
    predictions,
    summarize,
    typical_point,
)
from tracin_we.training import retrain as retrain_module
from tracin_we.training.loop import fit, predict_proba
from tracin_we.training.model_init import new_model
from tracin_we.training.recipe import TrainConfig
from tracin_we.training.train import train

N_TRAIN, N_TEST, T = 32, 16, 12


def lds_config(**changes) -> LDSConfig:
    train_config = TrainConfig.from_params(
        model="cnn",
        n_train=N_TRAIN,
        n_val=8,
        n_test=N_TEST,
        max_length=T,
        epochs=1,
        lr=0.1,
        batch_size=8,
        checkpoint_epochs=[1],
    )
    params = dict(
        train=train_config,
        methods=("tracin-we", "tracin-last", "random"),
        n_subsets=4,
        n_test_points=4,
        backend="sequential",
        n_bootstrap=100,
    )
    return LDSConfig(**(params | changes))


# --- a model whose output is exactly additive in its training examples: the known answer ---


def additive_case(n_points: int = 200, n_train: int = 40, n_subsets: int = 64):
    """f_j(S) = Σ_{i∈S} w[j, i] exactly, for random w."""
    w = torch.randn(n_points, n_train, generator=torch.Generator().manual_seed(0))
    masks = draw_subsets(n_train, n_subsets, 0.5, seed=1)
    return w, masks, predictions(w, masks)


def test_true_scores_give_lds_one_and_random_scores_about_zero():
    w, masks, f = additive_case()
    points = list(range(len(w)))
    random_w = torch.randn(w.shape, generator=torch.Generator().manual_seed(9))
    g = {
        "tracin-we": predictions(w, masks),
        "tracin-last": predictions(-w, masks),  # the sign flipped: LDS = −1
        "random": predictions(random_w, masks),
    }
    table = lds_table(f, g, points)
    by_method = table.groupby("method")["LDS"]
    assert np.allclose(table[table["method"] == "tracin-we"]["LDS"], 1.0)
    assert np.allclose(table[table["method"] == "tracin-last"]["LDS"], -1.0)
    assert abs(by_method.mean()["random"]) < 0.05  # 200 points × ρ of sd ≈ 1/√63
    config = LDSConfig(methods=("tracin-we", "tracin-last", "random"), n_bootstrap=200)
    _, summary, differences = summarize(f, g, points, config)
    summary = summary.set_index("method")
    spread = 3 * table[table["method"] == "random"]["LDS"].std() / np.sqrt(len(points))
    assert abs(summary.loc["random", "mean"]) < spread  # within 3 standard errors of 0
    assert summary.loc["tracin-we", "mean"] == pytest.approx(1.0)
    row = differences.set_index(["reference", "method"]).loc[("tracin-we", "random")]
    assert row["verdict"] == "reference better" and row["share_better"] == 1.0


def test_noise_lowers_lds_and_more_subsets_narrow_it():
    w, masks, f = additive_case(n_points=60, n_subsets=64)
    noisy = f + 2.0 * torch.randn(
        f.shape, generator=torch.Generator().manual_seed(3), dtype=f.dtype
    )
    g = {"tracin-we": predictions(w, masks)}
    rho = lds_table(noisy, g, range(60))["LDS"]
    assert 0.3 < rho.mean() < 0.99
    config = LDSConfig(methods=("tracin-we",), n_bootstrap=200)
    curve = convergence(noisy, g, range(60), config)
    assert curve["n_subsets"].tolist() == convergence_grid(64) == [4, 8, 16, 32, 64]
    assert curve["width"].iloc[-1] < curve["width"].iloc[0]
    full = summarize(noisy, g, range(60), config)[1]
    assert curve.iloc[-1]["mean"] == pytest.approx(full["mean"].iloc[0])
    with pytest.raises(ValueError, match="sizes has 65"):
        convergence(noisy, g, range(60), config, sizes=[8, 65])


def test_two_way_bootstrap_resamples_points_and_subsets():
    w, masks, f = additive_case(n_points=30, n_subsets=20)
    noisy = f + 3.0 * torch.randn(
        f.shape, generator=torch.Generator().manual_seed(4), dtype=f.dtype
    )
    ties = predictions(torch.randn(w.shape), masks).round()  # ties before resampling too
    ties[0] = 1.0  # a constant row: ρ := 0
    g = {"tracin-we": predictions(w, masks), "random": ties}
    replicates = two_way_means(noisy, g, n_bootstrap=50, seed=7)
    assert replicates.shape == (50, 2)
    assert np.array_equal(replicates, two_way_means(noisy, g, n_bootstrap=50, seed=7))
    # Replicate 3 by hand: the seed's point draw (as stats.bootstrap_index) and subset draw.
    points = np.random.default_rng(7).integers(0, 30, size=(50, 30))[3]
    subsets = np.random.default_rng([7, 1]).integers(0, 20, size=(50, 20))[3]
    for k, method in enumerate(g):
        rho = [
            spearmanr(noisy[j, subsets].numpy(), g[method][j, subsets].numpy()).statistic
            for j in points
        ]
        rho = np.nan_to_num(rho)  # scipy: NaN for the constant row
        assert replicates[3, k] == pytest.approx(np.mean(rho))
    # Test points only: the per-point values bootstrapped as stats.paired_bootstrap does.
    config = LDSConfig(methods=tuple(g), n_bootstrap=300, resample_subsets=False)
    per_point, one_way, _ = summarize(noisy, g, range(30), config)
    values = per_point.pivot(index="point", columns="method", values="LDS")[list(g)]
    expected, _ = paired_bootstrap(values, True, references=["tracin-we"], n_bootstrap=300)
    pd.testing.assert_frame_equal(one_way.drop(columns="constant"), expected)
    # With 20 subsets the subsets' own sampling noise widens the interval.
    _, two_way, _ = summarize(noisy, g, range(30), replace(config, resample_subsets=True))
    width = (two_way["high"] - two_way["low"]) / (one_way["high"] - one_way["low"])
    assert (width > 1.2).all()


def test_spearman_matches_scipy_and_constant_rows_are_zero():
    rng = np.random.default_rng(0)
    f, g = rng.normal(size=(5, 9)), rng.normal(size=(5, 9))
    g[1, :4] = g[1, 0]  # ties
    g[4] = 1.0  # constant: ρ undefined
    rho, constant = spearman(f, g)
    for j in range(4):
        assert rho[j] == pytest.approx(spearmanr(f[j], g[j]).statistic)
    assert constant.tolist() == [False] * 4 + [True] and rho[4] == 0.0


def test_margin_is_the_log_odds_of_the_true_class():
    logits = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    labels = torch.tensor([0, 3, 1, 2, 2])
    p = logits.softmax(-1)
    true = logits.gather(-1, labels.expand(3, 5).unsqueeze(-1)).squeeze(-1)
    others = logits.scatter(-1, labels.expand(3, 5).unsqueeze(-1), -torch.inf).logsumexp(-1)
    assert torch.allclose(margins(p, labels), true - others)
    assert torch.allclose(
        margins(p, labels), torch.logit(p.gather(-1, labels.expand(3, 5).unsqueeze(-1)).squeeze(-1))
    )
    saturated = margins(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))
    assert torch.isfinite(saturated).all() and saturated[0] > 700 and saturated[1] < -700


def test_subset_draw_is_deterministic_and_prefix_stable():
    masks = draw_subsets(40, 10, 0.5, seed=3)
    assert masks.shape == (10, 40) and masks.sum(1).tolist() == [20] * 10
    assert torch.equal(masks, draw_subsets(40, 10, 0.5, seed=3))
    assert torch.equal(masks[:4], draw_subsets(40, 4, 0.5, seed=3))  # convergence uses prefixes
    assert not torch.equal(masks, draw_subsets(40, 10, 0.5, seed=4))
    assert len({tuple(m.tolist()) for m in masks}) == 10
    assert draw_subsets(40, 3, 0.3, seed=0).sum(1).tolist() == [12] * 3
    jobs = subset_jobs(masks[:2], seeds=(0, 5))
    assert [j.seed for j in jobs] == [0, 5, 0, 5]
    assert torch.equal(jobs[2].keep(40), masks[1]) and jobs[2].removed == jobs[3].removed


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"methods": ("tracin-we", "tracin-foo")}, r"methods=.*unknown: \['tracin-foo'\]"),
        ({"methods": ()}, "methods="),
        ({"method_options": {"representer": {}}}, "method_options has"),
        ({"method_options": {"tracin-we": {"damping": 1.0}}}, "damping"),
        ({"n_subsets": 2}, r"n_subsets=2 must be an integer >= 3"),
        ({"alpha": 1.0}, r"alpha=1.0 must be in \(0, 1\)"),
        ({"alpha": 0.01}, "alpha=0.01"),  # keeps round(0.32) = 0 of 32
        ({"seeds": ()}, "seeds="),
        ({"seeds": (1, 1)}, "seeds="),
        ({"n_test_points": 17}, r"n_test_points=17 must be in \[1, n_test=16\]"),
        ({"backend": "gpu"}, "backend='gpu' is unknown"),
        ({"n_bootstrap": 0}, "n_bootstrap=0"),
        ({"ci": 0.0}, "ci=0.0"),
    ],
)
def test_config_refuses_bad_values(changes, message):
    with pytest.raises(ValueError, match=message):
        lds_config(**changes)


def test_config_from_flat_parameters():
    config = LDSConfig.from_params(
        model="cnn",
        n_train=N_TRAIN,
        n_test=N_TEST,
        n_test_points=4,
        methods=["random"],
        n_subsets=8,
        alpha=0.25,
    )
    assert config.train.model == "cnn" and config.train.data.n_train == N_TRAIN
    assert config.methods == ("random",) and config.references == ()
    assert (config.n_subsets, config.alpha) == (8, 0.25)
    assert lds_config().references == ("tracin-we", "tracin-last")
    with pytest.raises(ValueError, match="unknown parameters"):
        LDSConfig.from_params(n_subset=10)


# --- one tiny run of real subset retrains ---


def split(n: int, seed: int) -> Dataset:
    """Token ids with one label-revealing position (class c → ids 2000 + 3c + {0, 1, 2})."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    ids = torch.randint(1000, 1030, (n, T), generator=g)
    ids[:, 1] = 2000 + 3 * labels + torch.randint(0, 3, (n,), generator=g)
    return Dataset.from_dict(
        {"input_ids": ids.tolist(), "attention_mask": [[1] * T] * n, "label": labels.tolist()}
    )


@pytest.fixture(scope="module")
def splits() -> DatasetDict:
    return DatasetDict(train=split(N_TRAIN, 0), validation=split(8, 1), test=split(N_TEST, 2))


@pytest.fixture(scope="module")
def run(splits, tmp_path_factory):
    cache = str(tmp_path_factory.mktemp("cache"))
    return run_lds(lds_config(), splits, cache=cache, progress=False), cache


def test_outputs_are_margins_of_subset_retrains_and_sums_of_scores(run, splits):
    result, cache = run
    config = lds_config()
    assert result.n_trained == 4 and result.masks.shape == (4, N_TRAIN)
    assert torch.equal(result.masks, draw_subsets(N_TRAIN, 4, 0.5, 0))
    train_t, test_t = model_inputs(splits["train"]), model_inputs(splits["test"])
    # f of subset 2, from a plain fit on its kept examples.
    model = new_model(config.train)[0]
    fit(model, train_t, config.train, keep=result.masks[2], progress=False)
    p = predict_proba(model, test_t)[result.points]
    expected = margins(p, test_t["labels"][result.points])
    got = result.outputs[result.outputs["subset"] == 2].set_index("point").loc[result.points, "f"]
    assert np.allclose(got.to_numpy(), expected.numpy())
    # g: the sum of the method's scores over the kept examples.
    original = train(config.train, splits, cache=cache, progress=False)
    points = {k: v[result.points] for k, v in test_t.items()}
    rows = influence.scores(
        "tracin-we", original.load_model(), original.checkpoint_pairs(), train_t, points
    )
    g = result.outputs.pivot(index="point", columns="subset", values="tracin-we")
    assert np.allclose(g.loc[result.points].to_numpy(), (rows.double() @ result.masks.double().T))
    # LDS and the tables built from them.
    table = result.per_point
    assert len(table) == 4 * 3 and set(table["method"]) == set(config.methods)
    assert table["LDS"].between(-1, 1).all()
    assert (table["label"] == test_t["labels"].numpy()[table["point"]]).all()
    assert sorted(table["label"].unique()) == [0, 1, 2, 3]  # one point per class
    assert result.summary["method"].tolist() == list(config.methods)
    assert set(result.differences["reference"]) == {"tracin-we", "tracin-last"}
    assert result.convergence["n_subsets"].unique().tolist() == [4]
    assert typical_point(table) in result.points


def test_cached_subset_retrains_are_reused(run, splits, monkeypatch):
    result, cache = run
    monkeypatch.setattr(
        retrain_module,
        "retrain_probabilities",
        lambda *a, **k: pytest.fail("a cached subset was retrained"),
    )
    again = run_lds(lds_config(), splits, cache=cache, progress=False)
    assert again.n_trained == 0 and again.n_reused == 4
    pd.testing.assert_frame_equal(again.per_point, result.per_point)
    pd.testing.assert_frame_equal(again.outputs, result.outputs)
    # Fewer subsets and other methods: a prefix of the same retrains, nothing new to train.
    fewer = run_lds(
        lds_config(n_subsets=3, methods=("random",)), splits, cache=cache, progress=False
    )
    assert fewer.n_trained == 0 and torch.equal(fewer.masks, result.masks[:3])


def test_results_saved_beside_their_config(run, splits):
    result, cache = run
    saved = load_lds(result.out_dir)
    assert saved["config"]["n_subsets"] == 4 and "data_fingerprint" in saved["config"]
    assert np.allclose(saved["lds"]["LDS"], result.per_point["LDS"])
    assert saved["lds_summary"]["method"].tolist() == list(lds_config().methods)
    assert saved["lds_subsets"]["kept"].str.split().map(len).tolist() == [16] * 4
    other = lds_config(n_bootstrap=50)
    with pytest.raises(CheckpointError, match="holds another LDS evaluation"):
        run_lds(other, splits, cache=cache, out_dir=result.out_dir, progress=False)
    with pytest.raises(ValueError, match="holds no LDS evaluation"):
        load_lds(result.out_dir / "missing")


def test_bad_input_refused_before_any_retraining(splits, tmp_path, monkeypatch):
    monkeypatch.setattr(
        retrain_module, "retrain_probabilities", lambda *a, **k: pytest.fail("retrained")
    )
    config = lds_config(methods=("random",))
    with pytest.raises(ValueError, match="n_test_points=4: class 0 has 0 examples, 1 needed"):
        run_lds(
            config,
            DatasetDict(train=splits["train"], test=splits["test"].select([])),
            cache=tmp_path,
        )
    with pytest.raises(ValueError, match=r"scores\['random'\] has shape \(4, 32\)"):
        run_lds(config, splits, scores={"random": torch.zeros(4, N_TRAIN)}, cache=tmp_path)
    with pytest.raises(ValueError, match=r"alpha=0\.2 keeps 0 of 2"):
        tiny = DatasetDict(train=splits["train"].select(range(2)), test=splits["test"])
        run_lds(replace(config, alpha=0.2), tiny, cache=tmp_path)


def test_metrics_are_the_summary_as_plain_numbers(run):
    """``LDSResult.metrics`` is what notebook 08 records: JSON-ready, equal to the summary."""
    result, _ = run
    metrics = result.metrics()
    summary = result.summary.set_index("method")
    assert metrics["lds"] == {m: float(v) for m, v in summary["mean"].items()}
    assert metrics["n_subsets"] == result.masks.shape[0]
    assert set(metrics["tracin_we_minus"]) == set(metrics["tracin_we_verdict"])
    assert json.loads(json.dumps(metrics)) == metrics


def test_crossed_lds_bootstrap_resamples_models_points_and_subsets():
    """Rows of (model, point), model-major: replicate b draws the models as
    ``stats.crossed_means`` does, the points and the subsets as the one-model bootstrap does,
    and averages the ρ of the crossed cells, each recomputed on the drawn subsets."""
    w, masks, f = additive_case(n_points=6, n_subsets=12)
    f3 = torch.stack([f + s * torch.randn(f.shape, dtype=f.dtype) for s in (1.0, 2.0, 3.0)])
    g = {"tracin-we": torch.stack([predictions(w, masks)] * 3)}
    flat = {m: v.reshape(-1, 12) for m, v in g.items()}
    replicates = two_way_means(f3.reshape(-1, 12), flat, n_bootstrap=20, seed=5, n_models=3)
    points = np.random.default_rng(5).integers(0, 6, size=(20, 6))[2]
    models = np.random.default_rng([5, 2]).integers(0, 3, size=(20, 3))[2]
    subsets = np.random.default_rng([5, 1]).integers(0, 12, size=(20, 12))[2]
    rho = [
        spearmanr(f3[s, j, subsets].numpy(), g["tracin-we"][s, j, subsets].numpy()).statistic
        for s in models
        for j in points
    ]
    assert replicates[2, 0] == pytest.approx(np.mean(rho))
    # One model: the one-model bootstrap, draw for draw.
    one = two_way_means(f3[0], {m: v[0] for m, v in g.items()}, 20, 5, n_models=1)
    assert np.array_equal(one, two_way_means(f3[0], {m: v[0] for m, v in g.items()}, 20, 5))


def test_a_model_per_seed_explains_and_retrains_its_own_model(run, splits):
    """``model_per_seed``: seed s's g comes from the model trained with seed s and its f from
    the subsets retrained at seed s; seed 0's half is the one-model run (read from its cache)."""
    one_model, cache = run
    config = lds_config(seeds=(0, 1), model_per_seed=True)
    result = run_lds(config, splits, cache=cache, progress=False)
    assert result.n_trained == 4 and result.n_reused == 4  # seed 1's subsets only
    assert set(result.per_point["model"]) == {0, 1}
    seed0 = result.per_point[result.per_point["model"] == 0].drop(columns="model")
    pd.testing.assert_frame_equal(seed0.reset_index(drop=True), one_model.per_point)
    seeded = train(replace(config.train, seed=1), splits, cache=cache, progress=False)
    train_t, test_t = model_inputs(splits["train"]), model_inputs(splits["test"])
    points = {k: v[result.points] for k, v in test_t.items()}
    rows = influence.scores(
        "tracin-we", seeded.load_model(), seeded.checkpoint_pairs(), train_t, points
    )
    mine = result.outputs.query("model == 1").pivot(
        index="point", columns="subset", values="tracin-we"
    )
    assert np.allclose(mine.loc[result.points].to_numpy(), rows.double() @ result.masks.double().T)
    assert result.metrics()["n_models"] == 2
    means = result.per_point.groupby("method")["LDS"].mean()
    summary = result.summary.set_index("method")
    assert np.allclose(summary.loc[means.index, "mean"], means)
    with pytest.raises(ValueError, match="scores: precomputed scores are one model's"):
        run_lds(config, splits, scores={"random": torch.zeros(N_TEST, N_TRAIN)}, cache=cache)
    # One seed: one trained model, whatever model_per_seed says.
    single = run_lds(lds_config(model_per_seed=True), splits, cache=cache, progress=False)
    pd.testing.assert_frame_equal(single.per_point, one_model.per_point)
    pd.testing.assert_frame_equal(single.summary, one_model.summary)
