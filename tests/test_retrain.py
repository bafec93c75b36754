"""Retraining engines against plain ``fit``: the stacked ensemble, worker processes, the store.

Synthetic token tensors (48 examples of 12 tokens) and the CNN for 2 epochs of batch 8: a
retrain takes a fraction of a second.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from datasets import Dataset, DatasetDict
from torch import nn

from tracin_we import retrain as retrain_module
from tracin_we.retrain import RetrainJob, RetrainStore, retrain_cached, retrain_probabilities
from tracin_we.train import TrainConfig, epoch_order, fit, new_model, predict_proba, train

N, T, BATCH = 48, 12, 8


def tensors(n: int = N, seed: int = 0) -> dict[str, torch.Tensor]:
    """Token ids with one label-revealing position, so training moves the probabilities."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    ids = torch.randint(1000, 1040, (n, T), generator=g)
    ids[:, 1] = 2000 + 3 * labels + torch.randint(0, 3, (n,), generator=g)
    ids[:, -2:] = 0  # padding
    mask = (ids != 0).long()
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "token_type_ids": torch.zeros_like(ids),
        "labels": labels,
    }


def config(**changes) -> TrainConfig:
    params = dict(
        model="cnn",
        n_train=N,
        n_test=16,
        max_length=T,
        epochs=2,
        lr=0.05,
        batch_size=BATCH,
        checkpoint_epochs=[2],
    )
    return TrainConfig.from_params(**(params | changes))


def plain(cfg: TrainConfig, job: RetrainJob, train_t: dict, test_t: dict) -> torch.Tensor:
    """The reference: ``fit`` on the reduced set with the job's seed, as written in train.py."""
    seeded = replace(cfg, seed=job.seed)
    model = fit(new_model(seeded)[0], train_t, seeded, keep=job.keep(N), progress=False)
    return predict_proba(model, test_t)


def hard_jobs() -> list[RetrainJob]:
    """Seeds 3 and 4; removals that empty whole batches (the first one, so SGD's first step is
    a later one), thin them, or remove nothing."""
    first_batch = epoch_order(N, 3, 0)[:BATCH].tolist()
    second_epoch_batch = epoch_order(N, 3, 1)[BATCH : 2 * BATCH].tolist()
    return [
        RetrainJob(3, ()),
        RetrainJob(3, (1, 5, 9)),
        RetrainJob(3, first_batch),
        RetrainJob(3, first_batch + second_epoch_batch),
        RetrainJob(3, range(0, N, 3)),
        RetrainJob(4, (2, 7)),
        RetrainJob(4, range(40)),
    ]


@pytest.mark.parametrize("freeze", [False, True])
def test_ensemble_equals_plain_fit_on_reduced_sets(freeze):
    cfg, train_t, test_t = config(freeze_embeddings=freeze), tensors(), tensors(16, seed=1)
    jobs = hard_jobs()
    reference = torch.stack([plain(cfg, job, train_t, test_t) for job in jobs])
    fast = retrain_probabilities(
        cfg, jobs, train_t, test_t, "ensemble", chunk_size=3, progress=False
    )
    assert (fast - reference).abs().max() < 1e-5
    # The removals matter, so the agreement is not that of untrained models.
    assert (reference[1:5] - reference[0]).abs().amax(dim=(1, 2)).min() > 1e-4


@pytest.mark.filterwarnings("ignore:There is a performance drop")
def test_ensemble_exact_for_dropout_free_bert(monkeypatch):
    """The embedding-row trick also holds for an HF BERT (dropout off: vmap draws other masks)."""

    def no_dropout(cfg):
        model, init = new_model(cfg)
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = 0.0
        return model, init

    monkeypatch.setattr(retrain_module, "new_model", no_dropout)
    cfg = config(model="bert-tiny", pretrained=False, epochs=1, checkpoint_epochs=[1])
    train_t, test_t = tensors(16), tensors(4, seed=1)
    jobs = [RetrainJob(0, ()), RetrainJob(0, (1, 2, 3))]
    reference = retrain_probabilities(cfg, jobs, train_t, test_t, "sequential", progress=False)
    fast = retrain_probabilities(cfg, jobs, train_t, test_t, "ensemble", progress=False)
    assert (fast - reference).abs().max() < 1e-5


def as_dataset(t: dict[str, torch.Tensor]) -> Dataset:
    return Dataset.from_dict({("label" if k == "labels" else k): v.tolist() for k, v in t.items()})


def test_removing_nothing_reproduces_training_exactly(tmp_path):
    """A job with nothing removed is the model ``train`` saves, bit for bit (sequential)."""
    train_t, test_t = tensors(), tensors(16, seed=1)
    splits = DatasetDict(
        train=as_dataset(train_t), validation=as_dataset(test_t), test=as_dataset(test_t)
    )
    cfg = config(seed=2)
    original = predict_proba(
        train(cfg, splits, cache=tmp_path, progress=False).load_model(), test_t
    )
    job = [RetrainJob(2, ())]
    again = retrain_probabilities(cfg, job, train_t, test_t, "sequential", progress=False)
    assert torch.equal(again[0], original)
    fast = retrain_probabilities(cfg, job, train_t, test_t, "ensemble", progress=False)
    assert (fast[0] - original).abs().max() < 1e-5


def test_job_forms_and_refusals():
    mask = torch.ones(N, dtype=torch.bool)
    mask[[4, 2]] = False
    assert RetrainJob.of((1, mask), N) == RetrainJob.of((1, [4, 2, 2]), N) == RetrainJob(1, (2, 4))
    assert torch.equal(RetrainJob(1, (2, 4)).keep(N), mask)
    assert retrain_module.seed_chunks(
        [RetrainJob(0), RetrainJob(1), RetrainJob(0, (1,)), RetrainJob(0, (2,))], 2
    ) == [[0, 2], [3], [1]]
    cfg, train_t = config(), tensors()
    with pytest.raises(ValueError, match="outside the 48"):
        RetrainJob.of((0, [48]), N)
    with pytest.raises(ValueError, match="indices must be >= 0"):
        RetrainJob(0, (-1,))
    with pytest.raises(ValueError, match="keep mask of shape"):
        RetrainJob.of((0, mask[:5]), N)
    for bad, match in [
        ({"backend": "gpu"}, "backend='gpu'"),
        ({"worker": "x"}, "worker='x'"),
        ({"chunk_size": 0}, "chunk_size=0"),
    ]:
        with pytest.raises(ValueError, match=match):
            retrain_probabilities(cfg, [RetrainJob(0)], train_t, train_t, **bad)
    with pytest.raises(ValueError, match="jobs is empty"):
        retrain_probabilities(cfg, [], train_t, train_t)
    with pytest.raises(ValueError, match="optimizer='adam'"):
        retrain_probabilities(
            config(optimizer="adam"), [RetrainJob(0)], train_t, train_t, "ensemble"
        )


def test_store_trains_each_job_once_and_resumes(tmp_path, monkeypatch):
    trained: list[RetrainJob] = []
    real = retrain_module.train_chunk

    def counting(cfg, jobs, *args, **kwargs):
        trained.extend(jobs)
        return real(cfg, jobs, *args, **kwargs)

    monkeypatch.setattr(retrain_module, "train_chunk", counting)
    cfg, train_t, test_t = config(), tensors(), tensors(16, seed=1)
    jobs = [RetrainJob(0, (1,)), RetrainJob(0, (2,)), RetrainJob(1, (1,))]
    # An interrupted sweep: only the first job finished.
    first = retrain_cached(
        cfg, jobs[:1], train_t, test_t, cache=tmp_path, backend="sequential", progress=False
    )
    assert (first.n_trained, first.n_reused) == (1, 0)
    repeated = [*jobs, (0, [2, 2]), jobs[0]]  # the same removed set given twice more
    out = retrain_cached(
        cfg, repeated, train_t, test_t, cache=tmp_path, backend="ensemble", progress=False
    )
    assert trained == [jobs[0], jobs[1], jobs[2]]
    assert (out.n_trained, out.n_reused) == (2, 3)
    assert torch.equal(out.probabilities[0], first.probabilities[0])
    assert torch.equal(out.probabilities[1], out.probabilities[3])
    store = RetrainStore(cfg, train_t, test_t, cache=tmp_path)
    assert sorted(p.name for p in store.dir.glob("*.pt")) == sorted(
        store.path(job).name for job in jobs
    )
    again = retrain_cached(cfg, repeated, train_t, test_t, cache=tmp_path, progress=False)
    assert again.n_trained == 0 and len(trained) == 3
    assert torch.equal(again.probabilities, out.probabilities)
    # Another recipe or other data never reads these files.
    assert RetrainStore(config(lr=0.1), train_t, test_t, tmp_path).dir != store.dir
    assert RetrainStore(cfg, tensors(seed=5), test_t, tmp_path).dir != store.dir


@pytest.mark.slow
def test_joblib_workers_match_sequential():
    cfg, train_t, test_t = config(), tensors(), tensors(16, seed=1)
    jobs = hard_jobs()[:4]
    reference = retrain_probabilities(cfg, jobs, train_t, test_t, "sequential", progress=False)
    for worker in ("plain", "ensemble"):
        out = retrain_probabilities(
            cfg, jobs, train_t, test_t, "joblib", worker=worker, n_workers=2, progress=False
        )
        assert (out - reference).abs().max() < 1e-5, worker
