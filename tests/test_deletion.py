"""The case-deletion loop: validation before any retrain, deletion sets, DEL bookkeeping, the
retrain cache, and the joblib and dask backends against plain sequential retraining.

One tiny sweep (CNN, 32 synthetic training texts, 4 test points, TracIn-WE and random, k ∈ {3, 6},
both directions, seeds {0, 1}: 66 retrains of 4 SGD steps) is shared by the module.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from datasets import DatasetDict

from tests.conftest import local_dask_client
from tracin_we import influence
from tracin_we.core.checkpoints import CheckpointError
from tracin_we.core.inputs import model_inputs
from tracin_we.core.stats import crossed_means
from tracin_we.experiments.deletion import (
    DeletionConfig,
    DeletionResult,
    load_deletion,
    run_deletion,
)
from tracin_we.training.loop import predict_proba
from tracin_we.training.retrain import RetrainJob, retrain_cached
from tracin_we.training.train import train

N_TRAIN, N_TEST = 32, 16
SPLITS = {"n_train": N_TRAIN, "n_test": N_TEST}  # conftest's splits, cnn_config, deletion_config
KEYS = ["point", "method", "direction", "k", "seed"]


@pytest.fixture(scope="module")
def sweep(splits, tmp_path_factory, deletion_config, count_retrains) -> tuple[DeletionResult, str]:
    cache = str(tmp_path_factory.mktemp("cache"))
    with count_retrains() as trained:
        result = run_deletion(deletion_config(), splits, cache=cache, progress=False)
    assert len(trained) == result.n_trained
    return result, cache


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"ks": (0, 3)}, r"ks=\[0, 3\]: each k must be a distinct integer with 0 < k < n_train"),
        ({"ks": (3, 3)}, r"ks=\[3, 3\]: each k must be a distinct integer"),
        ({"ks": (32,)}, "0 < k < n_train=32"),
        ({"ks": ()}, "ks="),
        (
            {"methods": ("tracin-we", "tracin-foo")},
            r"methods=.*among \['tracin-we'.*'random', 'trak', 'ekfac'\]",
        ),
        ({"n_test_points": 0}, r"n_test_points=0 must be in \[1, n_test=16\]"),
        ({"n_test_points": 17}, "n_test_points=17"),
        ({"seeds": ()}, "seeds="),
        ({"directions": ("up",)}, "directions="),
        ({"backend": "gpu"}, "backend='gpu'"),
        ({"method_options": {"tracin-last": {}}}, "method_options has"),
        ({"method_options": {"tracin-we": {"k": 3}}}, r"options \['k'\]"),
        ({"ci": 1.0}, "ci=1.0"),
    ],
)
def test_config_refuses_bad_values(changes, message, deletion_config):
    with pytest.raises(ValueError, match=message):
        deletion_config(**changes)


def test_config_from_flat_parameters():
    config = DeletionConfig.from_params(
        model="cnn",
        n_train=N_TRAIN,
        n_test=N_TEST,
        ks=[3, 6],
        methods=["random"],
        seeds=[0, 1],
        n_test_points=4,
    )
    assert config.train.model == "cnn" and config.train.data.n_train == N_TRAIN
    assert config.ks == (3, 6) and config.methods == ("random",)
    with pytest.raises(ValueError, match="unknown parameters"):
        DeletionConfig.from_params(n_trian=10)


def test_every_backend_takes_every_recipe(deletion_config):
    adam = replace(deletion_config().train, optimizer="adam", max_grad_norm=1.0)
    with pytest.raises(ValueError, match="backend='ensemble' is unknown"):
        deletion_config(train=adam, backend="ensemble")  # the stacked ensemble was removed
    for backend in ("sequential", "joblib", "dask"):
        assert deletion_config(train=adam, backend=backend).train.optimizer == "adam"


def test_bad_input_refused_before_any_retraining(splits, tmp_path, deletion_config, count_retrains):
    with count_retrains() as trained:
        config = deletion_config(methods=("random",))
        empty_test = DatasetDict(train=splits["train"], test=splits["test"].select([]))
        with pytest.raises(ValueError, match="n_test_points=4: class 0 has 0 examples, 1 needed"):
            run_deletion(config, empty_test, cache=tmp_path, progress=False)
        with pytest.raises(
            ValueError, match=r"n_test_points=16: class \d has \d examples, 4 needed"
        ):
            run_deletion(
                deletion_config(n_test_points=16),
                DatasetDict(train=splits["train"], test=splits["test"].select(range(12))),
                cache=tmp_path,
            )
        with pytest.raises(ValueError, match="must be < the 4 training examples"):
            run_deletion(
                config,
                DatasetDict(train=splits["train"].select(range(4)), test=splits["test"]),
                cache=tmp_path,
            )
        with pytest.raises(ValueError, match=r"scores\['random'\] has shape \(4, 32\)"):
            run_deletion(config, splits, scores={"random": torch.zeros(4, N_TRAIN)}, cache=tmp_path)
        with pytest.raises(ValueError, match=r"not in config\.methods"):
            run_deletion(
                config, splits, scores={"tracin-we": torch.zeros(N_TEST, N_TRAIN)}, cache=tmp_path
            )
    assert trained == []


def test_deletion_sets_are_top_k(sweep, splits, deletion_config):
    result, cache = sweep
    config = deletion_config()
    original = train(config.train, splits, cache=cache, progress=False)
    train_t, test_t = model_inputs(splits["train"]), model_inputs(splits["test"])
    points = {k: v[result.points] for k, v in test_t.items()}
    for method in config.methods:
        rows = influence.scores(
            method, original.load_model(), original.checkpoint_pairs(), train_t, points
        )
        for (direction, k), plan in result.plan[result.plan["method"] == method].groupby(
            ["direction", "k"]
        ):
            top = influence.top_k(rows, k, proponents=direction == "proponents").indices
            expected = [tuple(sorted(row.tolist())) for row in top]
            assert plan.sort_values("position")["removed"].tolist() == expected
    assert result.plan["removed"].map(len).tolist() == result.plan["k"].tolist()


def test_method_as_data_precomputed_matrix_and_options(sweep, splits, monkeypatch, deletion_config):
    """A precomputed matrix (test split × train split) stands in for the engine; method options
    reach ``influence.scores``."""
    _, cache = sweep
    given = torch.randn(N_TEST, N_TRAIN, generator=torch.Generator().manual_seed(7))
    monkeypatch.setattr(influence, "scores", lambda *a, **k: pytest.fail("engine called"))
    config = deletion_config(methods=("tracin-last",), ks=(3,), seeds=(0,))
    result = run_deletion(
        config, splits, scores={"tracin-last": given}, cache=cache, progress=False
    )
    opponents = result.plan[result.plan["direction"] == "opponents"].sort_values("position")
    expected = influence.top_k(given[result.points], 3, proponents=False).indices
    assert opponents["removed"].tolist() == [tuple(sorted(r.tolist())) for r in expected]
    monkeypatch.undo()
    options = deletion_config(
        methods=("random",), ks=(3,), seeds=(0,), method_options={"random": {"seed": 5}}
    )
    seeded = run_deletion(options, splits, cache=cache, progress=False)
    original = train(options.train, splits, cache=cache, progress=False)
    points = {k: v[seeded.points] for k, v in model_inputs(splits["test"]).items()}
    rows = influence.scores(
        "random",
        original.load_model(),
        original.checkpoint_pairs(),
        model_inputs(splits["train"]),
        points,
        seed=5,
    )
    proponents = seeded.plan[seeded.plan["direction"] == "proponents"].sort_values("position")
    expected = influence.top_k(rows, 3).indices
    assert proponents["removed"].tolist() == [tuple(sorted(r.tolist())) for r in expected]


def test_table_del_and_auc_bookkeeping(sweep, deletion_config):
    result, _ = sweep
    table, config = result.table, deletion_config()
    assert len(table) == 4 * 2 * 2 * 2 * 2
    assert np.bincount(table["label"]).tolist() == [16] * 4  # one point per class
    assert np.allclose(table["DEL"], table["p"] - table["baseline"])
    base = table.groupby("point")["baseline_seed"].agg(lambda s: s.iloc[:2].mean())
    assert np.allclose(table["baseline"], table["point"].map(base))
    per_point = table.groupby(["method", "direction", "point"])["DEL"].mean()
    summary = result.summary.set_index("method")
    for method in config.methods:
        for direction, name in (("proponents", "DEL+"), ("opponents", "DEL-")):
            expected = per_point[method][direction].mean()
            assert summary.loc[method, name] == pytest.approx(expected)
            assert (
                summary.loc[method, f"{name} low"]
                <= expected
                <= summary.loc[method, f"{name} high"]
            )
    assert list(summary.columns[:3]) == ["DEL+", "DEL+ low", "DEL+ high"]


def test_crn_variances_follow_their_formulas(sweep):
    result, _ = sweep
    table = result.table
    part = table[(table["method"] == "random") & (table["direction"] == "opponents")]
    q = part.groupby(["point", "seed"]).agg(q=("p", "mean"), b=("baseline_seed", "first"))
    q["d"] = q["q"] - q["b"]
    var = q.groupby("point").var(ddof=1) / 2
    row = result.crn.set_index(["method", "direction"]).loc[("random", "opponents")]
    assert row["se_paired"] == pytest.approx(np.sqrt(var["d"].mean()))
    assert row["se_independent"] == pytest.approx(np.sqrt((var["q"] + var["b"]).mean()))
    assert row["ci_halfwidth_independent"] >= row["ci_halfwidth"]


def test_removing_nothing_reproduces_the_baseline_exactly(sweep, splits, deletion_config):
    result, cache = sweep
    config = deletion_config()
    test_t = model_inputs(splits["test"])
    original = predict_proba(
        train(config.train, splits, cache=cache, progress=False).load_model(), test_t
    )  # seed 0, the full set
    labels = test_t["labels"][result.points]
    seed0 = result.table[result.table["seed"] == 0].groupby("point")["baseline_seed"].first()
    # Bitwise: the baseline retrain is train()'s fit, step for step, on the same (one) torch
    # thread; training only the present embedding rows changes no bit (test_train).
    assert np.array_equal(
        seed0.loc[result.points].to_numpy(), original[result.points, labels].numpy()
    )
    again = retrain_cached(
        config.train,
        [RetrainJob(0, ())],
        model_inputs(splits["train"]),
        test_t,
        cache=cache,
        backend="sequential",
        progress=False,
    )
    assert again.n_trained == 0 and torch.equal(again.probabilities[0], original)


def test_each_retrain_once_and_reused_on_rerun(sweep, splits, deletion_config, count_retrains):
    result, cache = sweep
    distinct = {(removed, s) for removed in result.plan["removed"] for s in (0, 1)}
    assert result.n_trained == len(distinct | {((), 0), ((), 1)})
    assert result.n_reused == 2 + len(result.plan) * 2 - result.n_trained
    with count_retrains() as trained:
        again = run_deletion(deletion_config(), splits, cache=cache, progress=False)
        assert trained == [] and again.n_trained == 0
        pd.testing.assert_frame_equal(again.table, result.table)
        # Another method list reuses the retrains of the removal sets it shares.
        subset = run_deletion(
            deletion_config(methods=("random",), ks=(3,)), splits, cache=cache, progress=False
        )
    assert trained == [] and subset.n_trained == 0


def test_interrupted_sweep_resumes(splits, tmp_path, deletion_config, count_retrains):
    config = deletion_config(methods=("random",), ks=(3,))  # 2 + 16 retrains
    with pytest.raises(count_retrains.Interrupted), count_retrains(fail_after=5):
        run_deletion(config, splits, cache=tmp_path, progress=False)
    with count_retrains() as trained:
        result = run_deletion(config, splits, cache=tmp_path, progress=False)
    assert result.n_trained == len(trained) == 18 - 5


def test_results_saved_beside_their_config(sweep, splits, deletion_config):
    result, cache = sweep
    saved = load_deletion(result.out_dir)
    assert saved["config"]["ks"] == [3, 6] and "data_fingerprint" in saved["config"]
    assert np.allclose(saved["deletion"]["DEL"], result.table["DEL"])
    assert list(saved["auc_del"]["method"]) == ["tracin-we", "random"]
    other = deletion_config(n_bootstrap=100)
    with pytest.raises(CheckpointError, match="holds another deletion sweep"):
        run_deletion(other, splits, cache=cache, out_dir=result.out_dir, progress=False)
    run_deletion(other, splits, cache=cache, out_dir=result.out_dir, overwrite=True, progress=False)
    assert load_deletion(result.out_dir)["config"]["n_bootstrap"] == 100


def matching_p(result: DeletionResult, reference: DeletionResult) -> tuple[np.ndarray, ...]:
    merged = result.table.merge(reference.table, on=KEYS, suffixes=("", "_ref"))
    assert len(merged) == len(result.table)
    return merged["p"].to_numpy(), merged["p_ref"].to_numpy()


def test_joblib_backend_equals_plain_retraining(sweep, splits, tmp_path, deletion_config):
    config = deletion_config(backend="joblib", methods=("random",))
    fast = run_deletion(config, splits, cache=tmp_path, progress=False)
    assert fast.n_trained == 2 + 4 * 2 * 2 * 2
    p, p_ref = matching_p(fast, sweep[0])
    # Bit for bit: the workers run the same fit on one torch thread each (retrain_threads:
    # cores // workers), as the sequential sweep does here (conftest).
    assert np.array_equal(p, p_ref)


@pytest.mark.slow
def test_dask_backend_matches_local(sweep, splits, tmp_path, deletion_config):
    config = deletion_config(backend="dask", methods=("random",))
    with local_dask_client() as client:
        remote = run_deletion(config, splits, cache=tmp_path, client=client, progress=False)
    assert remote.n_trained == 2 + 4 * 2 * 2 * 2
    p, p_ref = matching_p(remote, sweep[0])
    assert np.abs(p - p_ref).max() < 1e-6


def test_metrics_are_the_summary_as_plain_numbers(sweep):
    """``DeletionResult.metrics`` is what notebook 03 records: JSON-ready, equal to the summary;
    TracIn-WE − TracIn-Last only when both were run (here: tracin-we and random)."""
    result, _ = sweep
    metrics = result.metrics()
    summary = result.summary.set_index("method")
    assert metrics["auc_del_plus"] == {m: float(v) for m, v in summary["DEL+"].items()}
    assert metrics["auc_del_minus"] == {m: float(v) for m, v in summary["DEL-"].items()}
    assert metrics["we_minus_last"] is None and metrics["n_points"] == len(result.points)
    assert json.loads(json.dumps(metrics)) == metrics


def test_metrics_carry_we_minus_last_when_both_ran(sweep):
    """The paired TracIn-WE − TracIn-Last row per metric, as notebook 03 recorded it by hand."""
    result, _ = sweep
    differences = pd.DataFrame(
        [
            {"metric": metric, "reference": reference, "method": method, "difference": d,
             "low": d - 0.1, "high": d + 0.1, "share_better": 0.5}
            for metric, d in (("DEL+", -0.2), ("DEL-", 0.1))
            for reference, method in (("tracin-we", "tracin-last"), ("tracin-last", "random"))
        ]
    )  # fmt: skip
    pair = result.metrics(differences)["we_minus_last"]
    assert pair == {
        "DEL+": {
            "difference": -0.2,
            "low": -0.30000000000000004,
            "high": -0.1,
            "share_better": 0.5,
        },
        "DEL-": {"difference": 0.1, "low": 0.0, "high": 0.2, "share_better": 0.5},
    }
    assert result.metrics(differences.iloc[0:0])["we_minus_last"] is None


def test_a_model_per_seed_explains_and_retrains_its_own_model(
    sweep, splits, deletion_config, count_retrains
):
    """``model_per_seed``: seed s's deletion sets are the top-k of the model trained with seed s,
    retrained at seed s only and compared with seed s's own baseline; seed 0's retrains are the
    paper protocol's (read from the cache), and the CIs resample models and points."""
    one_model, cache = sweep
    config = deletion_config(model_per_seed=True)
    with count_retrains() as trained:
        result = run_deletion(config, splits, cache=cache, progress=False)
    assert set(result.table["model"]) == {0, 1}
    assert (result.table["seed"] == result.table["model"]).all()
    assert np.allclose(result.table["DEL"], result.table["p"] - result.table["baseline_seed"])
    # Seed 0 explains the recipe's model: its rows are the one-model sweep's seed-0 rows.
    mine = result.table[result.table["model"] == 0].set_index(KEYS)["p"]
    theirs = one_model.table.set_index(KEYS)["p"].loc[mine.index]
    assert np.array_equal(mine.to_numpy(), theirs.to_numpy())
    assert len(trained) == result.n_trained <= len(result.table) // 2 + 1  # seed 1's only
    # Seed 1's sets come from the model trained with seed 1.
    seeded = replace(config.train, seed=1)
    model = train(seeded, splits, cache=cache, progress=False)
    points = {k: v[result.points] for k, v in model_inputs(splits["test"]).items()}
    rows = influence.scores(
        "tracin-we", model.load_model(), model.checkpoint_pairs(), model_inputs(splits["train"]),
        points,
    )  # fmt: skip
    plan = result.plan.query("model == 1 and method == 'tracin-we' and direction == 'proponents'")
    top = influence.top_k(rows, 3).indices
    assert plan[plan["k"] == 3].sort_values("position")["removed"].tolist() == [
        tuple(sorted(r.tolist())) for r in top
    ]
    # AUC-DEL's CI: the crossed bootstrap of the (model, point) cells.
    cells = result.table.query("method == 'random' and direction == 'opponents'").pivot_table(
        index="model", columns="point", values="DEL"
    )
    draws = crossed_means(cells.to_numpy()[..., None], config.n_bootstrap, config.bootstrap_seed)
    row = result.summary.set_index("method").loc["random"]
    assert row["DEL-"] == pytest.approx(cells.to_numpy().mean())
    assert (row["DEL- low"], row["DEL- high"]) == pytest.approx(
        tuple(np.quantile(draws[:, 0], [0.025, 0.975]))
    )


def test_a_model_per_seed_refuses_one_models_scores(splits, tmp_path, deletion_config):
    given = {"random": torch.zeros(N_TEST, N_TRAIN)}
    with pytest.raises(ValueError, match="scores: precomputed scores are one model's"):
        run_deletion(
            deletion_config(methods=("random",), model_per_seed=True),
            splits,
            scores=given,
            cache=tmp_path,
            progress=False,
        )
