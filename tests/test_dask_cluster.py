"""Retrains on a Dask cluster named by its address (``dask_scheduler`` or
``$DASK_SCHEDULER_ADDRESS``): the address reaches the workers from a preset, and notebook 03 gives
there what the joblib backend gives on this machine."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from tests.conftest import local_dask_client
from tracin_we.experiments.deletion import DeletionConfig
from tracin_we.reproduce import reproduce
from tracin_we.training import retrain


def test_the_backend_and_address_are_checked_when_the_config_is_built():
    base = {"model": "cnn", "n_train": 120, "max_length": 16, "ks": [5], "n_test_points": 4}
    with pytest.raises(ValueError, match=r"dask_scheduler='tcp://h:1' needs backend='dask'"):
        DeletionConfig.from_params(**base, backend="joblib", dask_scheduler="tcp://h:1")
    with pytest.raises(ValueError, match="an address such as 'tcp://host:8786'"):
        DeletionConfig.from_params(**base, backend="dask", dask_scheduler="localhost")
    config = DeletionConfig.from_params(**base, backend="dask", dask_scheduler="tcp://h:1")
    assert config.dask_scheduler == "tcp://h:1"


def test_without_a_cluster_the_error_says_how_to_name_one(monkeypatch):
    pytest.importorskip("distributed")
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    with pytest.raises(ValueError, match="give dask_scheduler='tcp://host:8786'"):
        retrain.dask_client()


@pytest.mark.slow
def test_notebook_03_on_a_cluster_by_its_address_equals_joblib(ag_news_dir, tmp_path, monkeypatch):
    """A two-process local cluster stands in for a remote one: the notebook's kernel, a separate
    process, reaches it only through the address in the preset."""
    results = {}
    with local_dask_client() as client:
        address = client.scheduler.address
        for backend in ("joblib", "dask"):
            section = {"backend": backend, "methods": ["tracin-we", "random"], "seeds": [0]}
            if backend == "dask":
                section["dask_scheduler"] = address
            preset = tmp_path / f"{backend}.yaml"
            preset.write_text(yaml.safe_dump({"common": {}, "03_case_deletion": section}))
            runs = tmp_path / backend
            # Its own cache: the dask run retrains everything itself, none read from joblib's.
            monkeypatch.setenv("TRACIN_WE_CACHE", str(runs / "cache"))
            reproduce(str(preset), only=["03"], runs=runs)
            metrics = runs / backend / "metrics" / "03_case_deletion.json"
            results[backend] = json.loads(metrics.read_text())
        served = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.transition_counter)
    assert served > 0  # the cluster ran the retrains
    assert results["dask"]["n_trained"] == results["joblib"]["n_trained"] > 0
    for metric in ("auc_del_plus", "auc_del_minus"):
        for method, value in results["joblib"][metric].items():
            assert results["dask"][metric][method] == pytest.approx(value, abs=1e-6), method


def test_a_worker_that_builds_another_init_fails_instead_of_filing_it():
    """Workers build each model themselves: one that reached the hub (or lacks a pretrained
    file) would train another model than the caller's cache key names."""
    from tracin_we.training.model_init import init_kind
    from tracin_we.training.recipe import TrainConfig

    assert init_kind("random(seed=3)") == "random"
    assert init_kind("pretrained:minilm-l6@0a1b2c") == "pretrained:minilm-l6"
    assert init_kind("random(seed=0)+emb:minilm-l6-pca@ff00") == "random+emb:minilm-l6-pca@ff00"
    config = TrainConfig.from_params(
        model="cnn", n_train=8, epochs=1, checkpoint_epochs=[1], max_length=12, batch_size=4
    )
    texts = {
        "input_ids": torch.randint(1000, 2000, (8, 12)),
        "attention_mask": torch.ones(8, 12, dtype=torch.long),
        "labels": torch.arange(8) % 4,
    }
    job = retrain.RetrainJob.of((1, [0]), 8)
    probabilities = retrain.train_job(config, job, texts, texts, expected_init="random")
    assert probabilities.shape == (8, 4)
    with pytest.raises(RuntimeError, match="workers need the caller's pretrained files"):
        retrain.train_job(config, job, texts, texts, expected_init="hub:google/bert")
