"""Retraining many models: the engine behind case deletion and targeted fixing.

A job is ``RetrainJob(seed, removed)``: the model ``new_model(replace(config, seed=seed))`` trained
with the original recipe (``loop.fit``, batch order ``epoch_order(n, seed, epoch)``) on the
training set minus the examples ``removed``; its result is the softmax probabilities (n_test, C)
it gives the test inputs. A job may also carry an *edit*: a picklable function of the training
tensors returning the tensors it trains on (targeted fixing's [PAD]-ed words), applied where the
job runs, so that no edited copy of the training set is kept for long. ``retrain_probabilities``
runs a list of jobs on one of three backends, every job by plain ``fit``:

- ``"sequential"``: one job after another in this process;
- ``"joblib"`` (default): local worker processes (loky), ``threads`` torch threads each;
- ``"dask"``: a ``distributed`` cluster through joblib's dask backend (``dask_client``: the
  ``client`` given, a scheduler's address, ``$DASK_SCHEDULER_ADDRESS``, else the default client
  of this process).

Every backend gives the same probabilities bit for bit at the same number of torch threads per
job, on workers of the same CPU type and torch build: each job seeds its own init, batch order
and dropout (a cluster of other CPUs rounds otherwise). On a CPU what matters for speed is one
torch thread per process: two OpenMP threads on cores that other processes also use spin-wait
for each other. Hence the default: joblib workers of one thread each. Measure with
``python benchmarks/bench_retrain.py``.

``RetrainStore`` keeps one file per finished job, keyed by (training config, data, removed set,
seed, torch threads per retrain), so that no model is ever trained twice and an interrupted sweep
resumes (``retrain_cached``). Files follow ``tracin_we.core.persistence``'s rule: a damaged one is
deleted and retrained.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from tracin_we.core.inputs import Tensors
from tracin_we.core.params import SEED_LIMIT
from tracin_we.core.persistence import CheckpointError, cache_dir, config_key, tensor_digest
from tracin_we.core.result_folders import cache_folder
from tracin_we.training.loop import fit, predict_proba
from tracin_we.training.model_init import init_kind, new_model
from tracin_we.training.recipe import TrainConfig
from tracin_we.training.train import resolved_config

BACKENDS = ("sequential", "joblib", "dask")
# A change of the training tensors (same rows, same order): picklable, hashable, deterministic.
DataEdit = Callable[[Tensors], Tensors]


@dataclass(frozen=True)
class RetrainJob:
    """Train the model of ``seed`` without the training examples ``removed`` (sorted, unique)."""

    seed: int
    removed: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "removed", tuple(sorted({int(i) for i in self.removed})))
        if not 0 <= self.seed < SEED_LIMIT:
            raise ValueError(f"seed={self.seed} must be an integer in [0, 2**32)")
        if self.removed and self.removed[0] < 0:
            raise ValueError(f"removed={list(self.removed[:5])}...: indices must be >= 0")

    @classmethod
    def of(cls, job: RetrainJob | tuple[int, torch.Tensor | Iterable[int]], n: int) -> RetrainJob:
        """A job from ``RetrainJob``, ``(seed, keep mask (n,) bool)`` or ``(seed, removed)``."""
        if not isinstance(job, RetrainJob):
            seed, spec = job
            if torch.is_tensor(spec) and spec.dtype == torch.bool:
                if spec.shape != (n,):
                    raise ValueError(f"keep mask of shape {tuple(spec.shape)}; expected ({n},)")
                spec = torch.nonzero(~spec).flatten().tolist()
            job = cls(int(seed), tuple(int(i) for i in spec))
        if job.removed and job.removed[-1] >= n:
            raise ValueError(
                f"removed index {job.removed[-1]} is outside the {n} training examples"
            )
        return job

    def keep(self, n: int) -> torch.Tensor:
        """Keep mask (n,) bool: False at the removed examples."""
        mask = torch.ones(n, dtype=torch.bool)
        mask[list(self.removed)] = False
        return mask

    @property
    def removed_hash(self) -> str:
        return config_key(list(self.removed), 16)


def retrain_probabilities(
    config: TrainConfig,
    jobs: Sequence,
    train: Tensors,
    test: Tensors,
    backend: str = "joblib",
    *,
    edits: Sequence[DataEdit | None] | None = None,
    n_workers: int | None = None,
    threads: int | None = None,
    client=None,
    device: str = "cpu",
    progress: bool = True,
) -> torch.Tensor:
    """Softmax probabilities (n_jobs, n_test, C) of each job's retrained model on ``test``.

    ``train``/``test``: tensors from ``inputs.model_inputs``. ``edits``: per job, None or an
    ``DataEdit`` of ``train`` that job trains on. ``n_workers``/``threads``: worker processes and
    torch threads in each (joblib: all cores split evenly; dask: all the cluster's worker
    threads, one torch thread each; sequential: torch's setting unless ``threads``).
    ``client``: a ``distributed.Client`` or a scheduler's address (dask: ``dask_client``).
    """
    jobs = _checked(jobs, train, backend)
    edits = _edits_for(jobs, edits)
    out: list[torch.Tensor | None] = [None] * len(jobs)
    tasks = list(zip(jobs, edits, strict=True))
    expected = init_kind(new_model(replace(config, seed=0))[1])
    for position, probabilities in _run(
        config, tasks, train, test, backend, n_workers, threads, client, device, progress, expected
    ):
        out[position] = probabilities
    return torch.stack(out)


def check_backend(backend: str, dask_scheduler: str | None = None) -> None:
    """``backend`` is one of ``BACKENDS``; ``dask_scheduler``, when given, is an address
    (``tcp://host:8786``) for ``backend="dask"``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is unknown; allowed: {list(BACKENDS)}")
    if dask_scheduler is not None and (backend != "dask" or "://" not in dask_scheduler):
        raise ValueError(
            f"dask_scheduler={dask_scheduler!r} needs backend='dask' (got {backend!r}) and an "
            "address such as 'tcp://host:8786'"
        )


def dask_client(client=None):
    """The cluster ``backend="dask"`` retrains on: ``client`` when it is a ``distributed.Client``;
    else the scheduler at the address ``client`` (a string) or ``$DASK_SCHEDULER_ADDRESS`` names,
    connected once per process; else this process's current client. A ``ValueError`` saying how
    to name one when there is none."""
    if client is not None and not isinstance(client, str):
        return client
    address = client or os.environ.get("DASK_SCHEDULER_ADDRESS")
    if address:
        return _connect(address)
    from distributed import default_client

    try:
        return default_client()
    except ValueError:
        raise ValueError(
            "backend='dask' needs a cluster: give dask_scheduler='tcp://host:8786' (or set "
            "DASK_SCHEDULER_ADDRESS), or create a distributed.Client in this process first"
        ) from None


def _connect(address: str):
    """One client per address for this process, replaced when it has closed (a restarted
    scheduler, a long-lived kernel)."""
    client = _CLIENTS.get(address)
    if client is None or client.status != "running":
        from distributed import Client

        client = _CLIENTS[address] = Client(address, set_as_default=False)
    return client


_CLIENTS: dict = {}


def _checked(jobs: Sequence, train: Tensors, backend: str) -> list[RetrainJob]:
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is unknown; allowed: {list(BACKENDS)}")
    jobs = [RetrainJob.of(job, len(train["labels"])) for job in jobs]
    if not jobs:
        raise ValueError("jobs is empty; give at least one (seed, removed) job")
    return jobs


def _edits_for(
    jobs: list[RetrainJob], edits: Sequence[DataEdit | None] | None
) -> list[DataEdit | None]:
    if edits is None:
        return [None] * len(jobs)
    if len(edits) != len(jobs):
        raise ValueError(f"edits has {len(edits)} entries for {len(jobs)} jobs; give one per job")
    return list(edits)


def _run(
    config: TrainConfig,
    tasks: list[tuple[RetrainJob, DataEdit | None]],
    train: Tensors,
    test: Tensors,
    backend: str = "joblib",
    n_workers: int | None = None,
    threads: int | None = None,
    client=None,
    device: str = "cpu",
    progress: bool = True,
    expected_init: str | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """(position in ``tasks``, probabilities (n_test, C)) of each task, in the order they finish;
    ``expected_init``: the ``init_kind`` each task's model must have (``train_job``)."""
    task = _Task(config, device, expected_init=expected_init)
    threads = retrain_threads(backend, n_workers, threads)
    if backend == "sequential":
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            for position, (job, edit) in enumerate(
                tqdm(tasks, desc="retrain (sequential)", disable=not progress)
            ):
                yield task(position, job, edit, train, test)
        finally:
            torch.set_num_threads(before)
        return
    from joblib import Parallel, delayed, parallel_config

    if backend == "joblib":
        n_workers = n_workers or os.cpu_count() or 1
        setting = parallel_config(backend="loky", n_jobs=n_workers)
    else:
        # Scattered to the workers once instead of pickled into every task.
        options = {"scatter": [train, test], "client": dask_client(client)}
        setting = parallel_config(backend="dask", n_jobs=n_workers or -1, **options)
    call = delayed(replace(task, threads=threads))
    with setting:
        done = Parallel(return_as="generator_unordered")(
            call(position, job, edit, train, test) for position, (job, edit) in enumerate(tasks)
        )
        yield from tqdm(done, total=len(tasks), desc=f"retrain ({backend})", disable=not progress)


@dataclass(frozen=True)
class _Task:
    """Train one job (picklable, for worker processes) with ``threads`` torch threads."""

    config: TrainConfig
    device: str
    threads: int | None = None
    expected_init: str | None = None  # ``init_kind`` of the caller's model: checked where it runs

    def __call__(
        self, position: int, job: RetrainJob, edit: DataEdit | None, train: Tensors, test: Tensors
    ) -> tuple[int, torch.Tensor]:
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads or before)
        try:
            edited = edit(train) if edit is not None else train
            return position, train_job(
                self.config, job, edited, test, self.device, expected_init=self.expected_init
            )
        finally:
            torch.set_num_threads(before)


def train_job(
    config: TrainConfig,
    job: RetrainJob,
    train: Tensors,
    test: Tensors,
    device: str = "cpu",
    present_rows: bool = True,
    expected_init: str | None = None,
) -> torch.Tensor:
    """Probabilities (n_test, C) of ``job``'s model: ``fit`` with the job's seed and keep mask
    (``present_rows``: see ``fit``). ``expected_init``: the ``init_kind`` the caller's cache key
    names; a model built otherwise here (a worker that reached the hub, or lacks a pretrained
    file the caller has) is an error, never a result filed under the wrong key."""
    seeded = replace(config, seed=job.seed)
    model, init = new_model(seeded, distil=False)  # the caller built (distilled) it first
    if expected_init is not None and init_kind(init) != expected_init:
        raise RuntimeError(
            f"this retrain built its model as {init!r}, where the caller expects "
            f"{expected_init!r}: workers need the caller's pretrained files and hub access"
        )
    keep = job.keep(len(train["labels"])) if job.removed else None
    fit(model, train, seeded, keep=keep, device=device, progress=False, present_rows=present_rows)
    return predict_proba(model, test, device=device)


class Retrained(NamedTuple):
    probabilities: torch.Tensor  # (n_jobs, n_test, C)
    n_trained: int  # jobs trained in this call
    n_reused: int  # jobs read from the store (or duplicates of another job in the list)


class RetrainStore:
    """Finished jobs on disk: ``<cache>/retrain/<model>-<dataset>-<key>/<removed hash>-s<seed>.pt``.

    ``key`` hashes the training config (its ``seed`` excluded: each job names its own), the model
    init, the train and test tensors and ``threads``, the torch thread count of each retrain
    (``retrain_threads``; results differ in the last bits between thread counts, see
    ``train.resolved_config``), so a store never serves results of another recipe, data or
    thread layout. Each file holds the job's seed, removed indices (checked on load) and
    probabilities, and is verified when read: a damaged one is deleted and retrained.
    """

    def __init__(
        self,
        config: TrainConfig,
        train: Tensors,
        test: Tensors,
        cache: str | os.PathLike | None = None,
        threads: int | None = None,
    ) -> None:
        neutral = replace(config, seed=0)
        threads = threads or torch.get_num_threads()
        init = new_model(neutral)[1]
        self.init_kind = init_kind(init)  # what every job's model must be built as
        resolved = resolved_config(neutral, init, tensor_digest(train, test), threads)
        name = f"{config.model.replace('/', '_')}-{config.data.name}-{config_key(resolved)}"
        self.folder = cache_folder(cache_dir(cache) / "retrain" / name, resolved)
        self.dir = self.folder.path

    def path(self, job: RetrainJob) -> Path:
        return self.dir / f"{job.removed_hash}-s{job.seed}.pt"

    def load(self, job: RetrainJob) -> torch.Tensor | None:
        """The job's probabilities (n_test, C), or None when not stored (or damaged: deleted)."""
        name = self.path(job).name
        saved = self.folder.load_torch(name, recompute=True)
        if saved is None:
            return None
        if saved.get("seed") != job.seed or tuple(saved["removed"].tolist()) != job.removed:
            raise CheckpointError(
                f"{str(self.path(job))!r} holds another job; delete it to retrain"
            )
        return saved["probabilities"]

    def save(self, job: RetrainJob, probabilities: torch.Tensor) -> None:
        self.folder.save_torch(
            self.path(job).name,
            {
                "seed": job.seed,
                "removed": torch.tensor(job.removed, dtype=torch.long),
                "probabilities": probabilities.detach().cpu().clone(),
            },
        )


def retrain_threads(
    backend: str = "joblib", n_workers: int | None = None, threads: int | None = None
) -> int:
    """The torch thread count each retrain of ``retrain_probabilities`` runs with: ``threads``,
    else one core's share per joblib worker, 1 per dask task, this process's setting locally.
    One torch thread per core: OpenMP threads of processes sharing a core spin-wait for each
    other (measured: a CNN step 20× slower with 2 threads on 2 busy cores)."""
    if threads:
        return threads
    if backend == "joblib":
        return max(1, (os.cpu_count() or 1) // (n_workers or os.cpu_count() or 1))
    return 1 if backend == "dask" else torch.get_num_threads()


def retrain_cached(
    config: TrainConfig,
    jobs: Sequence,
    train: Tensors,
    test: Tensors,
    store: RetrainStore | None = None,
    cache: str | os.PathLike | None = None,
    *,
    edits: Sequence[DataEdit | None] | None = None,
    **options,
) -> Retrained:
    """``retrain_probabilities`` that trains each distinct (edit, job) once: those found in their
    store are read back, the rest trained and saved as each finishes, so an interrupted call
    resumes where it stopped. Unedited jobs use ``store`` (default: ``RetrainStore(config,
    train, test, cache)``); the jobs of each edit, ``RetrainStore(config, edit(train), test,
    cache)``. ``options``: ``retrain_probabilities``' (backend, n_workers, ...)."""
    jobs = _checked(jobs, train, options.get("backend", "joblib"))
    tasks = list(zip(jobs, _edits_for(jobs, edits), strict=True))
    threads = retrain_threads(
        options.get("backend", "joblib"), options.get("n_workers"), options.get("threads")
    )
    stores = {None: store or RetrainStore(config, train, test, cache, threads)}
    for edit in dict.fromkeys(edit for _, edit in tasks if edit is not None):
        stores[edit] = RetrainStore(config, edit(train), test, cache, threads)
    unique = list(dict.fromkeys(tasks))
    found = {(job, edit): stores[edit].load(job) for job, edit in unique}
    missing = [task for task, probs in found.items() if probs is None]
    if missing:
        expected = stores[None].init_kind  # the init every store's key names
        for position, row in _run(config, missing, train, test, **options, expected_init=expected):
            job, edit = missing[position]
            stores[edit].save(job, row)
            found[(job, edit)] = row
    probabilities = torch.stack([found[task] for task in tasks])
    return Retrained(probabilities, len(missing), len(tasks) - len(missing))
