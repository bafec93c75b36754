"""Retraining against plain ``fit``: the backends, edited training sets, the store.

Synthetic token tensors (48 examples of 12 tokens) and the CNN for 2 epochs of batch 8: a
retrain takes a fraction of a second.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
import torch
from datasets import Dataset, DatasetDict

from tracin_we.training.loop import epoch_order, fit, predict_proba
from tracin_we.training.model_init import new_model
from tracin_we.training.recipe import TrainConfig
from tracin_we.training.retrain import (
    RetrainJob,
    RetrainStore,
    retrain_cached,
    retrain_probabilities,
)
from tracin_we.training.train import train

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
def test_sequential_equals_plain_fit_on_reduced_sets(freeze):
    cfg, train_t, test_t = config(freeze_embeddings=freeze), tensors(), tensors(16, seed=1)
    jobs = hard_jobs()
    reference = torch.stack([plain(cfg, job, train_t, test_t) for job in jobs])
    out = retrain_probabilities(cfg, jobs, train_t, test_t, "sequential", progress=False)
    assert torch.equal(out, reference)
    # The removals matter, so the agreement is not that of untrained models.
    assert (reference[1:5] - reference[0]).abs().amax(dim=(1, 2)).min() > 1e-4


def test_jobs_are_independent_of_their_order_even_with_dropout():
    """Each job seeds its own init, batch order and dropout (an HF BERT has dropout), so the
    order jobs run in, hence the backend, changes no probability."""
    cfg = config(model="bert-tiny", pretrained=False, epochs=1, checkpoint_epochs=[1])
    train_t, test_t = tensors(16), tensors(4, seed=1)
    jobs = [RetrainJob(0, ()), RetrainJob(1, (1, 2, 3)), RetrainJob(0, (1, 2, 3))]
    forward = retrain_probabilities(cfg, jobs, train_t, test_t, "sequential", progress=False)
    backward = retrain_probabilities(cfg, jobs[::-1], train_t, test_t, "sequential", progress=False)
    assert torch.equal(forward, backward.flip(0))
    assert not torch.equal(forward[0], forward[2])


def test_edited_jobs_train_on_their_edit_and_are_stored_apart(tmp_path):
    cfg, train_t, test_t = config(), tensors(), tensors(16, seed=1)
    edit = Blank(rows=(0, 5))
    jobs = [RetrainJob(0, ()), RetrainJob(0, ()), RetrainJob(0, (3,)), RetrainJob(0, ())]
    edits = [None, edit, edit, Blank(rows=(0, 5))]
    out = retrain_cached(
        cfg,
        jobs,
        train_t,
        test_t,
        cache=tmp_path,
        edits=edits,
        backend="sequential",
        progress=False,
    )
    assert (out.n_trained, out.n_reused) == (3, 1)  # the last is the second again
    assert torch.equal(out.probabilities[0], plain(cfg, jobs[0], train_t, test_t))
    edited = edit(train_t)
    assert torch.equal(out.probabilities[1], plain(cfg, jobs[1], edited, test_t))
    assert torch.equal(out.probabilities[2], plain(cfg, jobs[2], edited, test_t))
    assert torch.equal(out.probabilities[3], out.probabilities[1])
    assert not torch.equal(out.probabilities[1], out.probabilities[0])
    again = retrain_cached(cfg, jobs, train_t, test_t, cache=tmp_path, edits=edits)
    assert again.n_trained == 0 and torch.equal(again.probabilities, out.probabilities)
    # The edited set's store is the store of the edited tensors.
    direct = retrain_cached(cfg, jobs[2:3], edited, test_t, cache=tmp_path)
    assert direct.n_trained == 0 and torch.equal(direct.probabilities[0], out.probabilities[2])
    with pytest.raises(ValueError, match="edits has 1 entries for 4 jobs"):
        retrain_probabilities(cfg, jobs, train_t, test_t, edits=[None])


@dataclass(frozen=True)
class Blank:
    """An edit: the rows ``rows`` of the training set lose every token but the first."""

    rows: tuple[int, ...]

    def __call__(self, train: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = dict(train, attention_mask=train["attention_mask"].clone())
        out["attention_mask"][list(self.rows), 1:] = 0
        return out


def as_dataset(t: dict[str, torch.Tensor]) -> Dataset:
    return Dataset.from_dict({("label" if k == "labels" else k): v.tolist() for k, v in t.items()})


def test_removing_nothing_reproduces_training_exactly(tmp_path):
    """A job with nothing removed is the model ``train`` saves, bit for bit (sequential): the
    same fit, step for step, on the same (one) torch thread; training only the present embedding
    rows changes no bit (test_train)."""
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


def test_job_forms_and_refusals():
    mask = torch.ones(N, dtype=torch.bool)
    mask[[4, 2]] = False
    assert RetrainJob.of((1, mask), N) == RetrainJob.of((1, [4, 2, 2]), N) == RetrainJob(1, (2, 4))
    assert torch.equal(RetrainJob(1, (2, 4)).keep(N), mask)
    cfg, train_t = config(), tensors()
    with pytest.raises(ValueError, match="outside the 48"):
        RetrainJob.of((0, [48]), N)
    with pytest.raises(ValueError, match="indices must be >= 0"):
        RetrainJob(0, (-1,))
    with pytest.raises(ValueError, match="keep mask of shape"):
        RetrainJob.of((0, mask[:5]), N)
    for backend in ("gpu", "ensemble"):  # the stacked-ensemble engine was removed
        with pytest.raises(ValueError, match=f"backend='{backend}' is unknown"):
            retrain_probabilities(cfg, [RetrainJob(0)], train_t, train_t, backend)
    with pytest.raises(ValueError, match="jobs is empty"):
        retrain_probabilities(cfg, [], train_t, train_t)
    with pytest.raises(TypeError, match="worker"):
        retrain_cached(cfg, [RetrainJob(0)], train_t, train_t, worker="plain")


def test_store_trains_each_job_once_and_resumes(tmp_path, count_retrains):
    with count_retrains() as trained:
        cfg, train_t, test_t = config(), tensors(), tensors(16, seed=1)
        jobs = [RetrainJob(0, (1,)), RetrainJob(0, (2,)), RetrainJob(1, (1,))]
        # An interrupted sweep: only the first job finished.
        first = retrain_cached(
            cfg, jobs[:1], train_t, test_t, cache=tmp_path, backend="sequential", progress=False
        )
        assert (first.n_trained, first.n_reused) == (1, 0)
        repeated = [*jobs, (0, [2, 2]), jobs[0]]  # the same removed set given twice more
        out = retrain_cached(
            cfg, repeated, train_t, test_t, cache=tmp_path, backend="sequential", progress=False
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
    out = retrain_probabilities(
        cfg, jobs, train_t, test_t, "joblib", n_workers=2, threads=1, progress=False
    )
    assert torch.equal(out, reference)  # both on one torch thread (conftest's)
