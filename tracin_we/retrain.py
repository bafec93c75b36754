"""Retraining many models cheaply: the engine behind case deletion.

A job is ``RetrainJob(seed, removed)``: the model ``new_model(replace(config, seed=seed))`` trained
with the original recipe (``train.fit``, batch order ``epoch_order(n, seed, epoch)``) on the
training set minus the examples ``removed``; its result is the softmax probabilities (n_test, C)
it gives the test inputs. ``retrain_probabilities`` runs a list of jobs on one of four backends:

- ``"sequential"``: plain ``fit`` per job in this process (the reference).
- ``"ensemble"``: jobs sharing a seed are trained together, ``chunk_size`` at a time, as a stacked
  ensemble (``torch.func.stack_module_state`` + ``functional_call`` + ``vmap``). Members share the
  init and the batch order (common random numbers) and differ only in their keep masks; each runs
  ``torch.optim.SGD``'s momentum update on its own slice and skips the steps whose batch it has
  emptied, so every member equals plain ``fit(..., keep=mask)`` up to float rounding. SGD only
  (no Adam, no gradient clipping): ``check_engine`` refuses other recipes.
- ``"joblib"`` (default): the same chunks on local worker processes (loky), each running
  ``worker`` (``"plain"`` fit, the default, or ``"ensemble"``) with ``threads`` torch threads.
- ``"dask"``: the same chunks on a ``distributed`` cluster through joblib's dask backend (the
  ``client`` given, else the default client of this process).

Speed (``benchmarks/bench_retrain.py``, CNN, 2,000 AG News texts, 2 shared CPU cores): the
ensemble is no faster than plain ``fit`` on a CPU — vmap turns each convolution into a grouped
one, which oneDNN runs slower than separate ones, and the dense momentum update of each member's
embedding costs what it costs in ``fit``. It is the path for a GPU. On the CPU what matters is
one torch thread per process: two OpenMP threads on two cores that other processes also use
spin-wait for each other, and a ``fit`` step ran 5–30× slower. Hence the default: joblib workers
running plain ``fit`` on one thread each, bit-identical to ``fit``.

Rounding: the "same" arithmetic in another order (a masked batch instead of a shorter one, vmap's
grouped convolutions) drifts during training; on the benchmark's 1-epoch CNN the ensemble's
probabilities differ from ``fit``'s by 1e-4 on average, 1.6e-3 at most, against 1.4e-3 for the
effect of removing 10 random texts. ``fit`` rewritten with the masked-mean loss drifts as much.

Dropout: the CNN has none. For models with dropout the ensemble draws masks with
``vmap(randomness="same")``: every member of a chunk (one seed) sees the same dropout masks, the
common-random-numbers choice; exact equality with ``fit`` is only claimed for dropout-free models.
(HF BERT runs, but vmap has no batching rule for CPU scaled-dot-product attention and loops.)

``RetrainStore`` keeps one file per finished job, keyed by (training config, data, removed set,
seed, torch threads per retrain), so that no model is ever trained twice and an interrupted sweep
resumes (``retrain_cached``). Files follow ``tracin_we.persistence``'s rule: a damaged one is
deleted and retrained.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, stack_module_state, vmap
from tqdm.auto import tqdm

from tracin_we.inputs import MODEL_INPUTS, Tensors, select
from tracin_we.models import word_embeddings
from tracin_we.persistence import CheckpointError, Folder, cache_dir, config_key, tensor_digest
from tracin_we.train import (
    TrainConfig,
    epoch_order,
    fit,
    new_model,
    predict_proba,
    resolved_config,
)

BACKENDS = ("sequential", "ensemble", "joblib", "dask")
WORKERS = ("plain", "ensemble")


@dataclass(frozen=True)
class RetrainJob:
    """Train the model of ``seed`` without the training examples ``removed`` (sorted, unique)."""

    seed: int
    removed: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "removed", tuple(sorted({int(i) for i in self.removed})))
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
    worker: str = "plain",
    chunk_size: int = 16,
    n_workers: int | None = None,
    threads: int | None = None,
    client=None,
    device: str = "cpu",
    progress: bool = True,
    on_chunk: Callable[[list[RetrainJob], torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Softmax probabilities (n_jobs, n_test, C) of each job's retrained model on ``test``.

    ``train``/``test``: tensors from ``train.model_inputs``. ``chunk_size``: ensemble members
    trained at once (memory ≈ 3 × parameters × chunk_size floats). ``n_workers``/``threads``:
    worker processes and torch threads in each (joblib: all cores split evenly; dask: all the
    cluster's worker threads, one torch thread each; local backends: torch's setting unless
    ``threads``). ``client``: a ``distributed.Client`` (dask; default: the current one).
    ``on_chunk(jobs, probabilities)`` runs as each chunk finishes, in the order they finish.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is unknown; allowed: {list(BACKENDS)}")
    if worker not in WORKERS:
        raise ValueError(f"worker={worker!r} is unknown; allowed: {list(WORKERS)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be a positive integer")
    jobs = [RetrainJob.of(job, len(train["labels"])) for job in jobs]
    if not jobs:
        raise ValueError("jobs is empty; give at least one (seed, removed) job")
    engine = engine_for(backend, worker)
    check_engine(config, engine)
    chunks = [
        [jobs[p] for p in positions]
        for positions in seed_chunks(jobs, chunk_size if engine == "ensemble" else 1)
    ]
    task = _Chunk(config, engine, device)
    if backend in ("sequential", "ensemble"):
        done = _run_local(task, chunks, train, test, threads, progress)
    else:
        done = _run_parallel(
            task, chunks, train, test, backend, n_workers, threads, client, progress
        )
    results: dict[RetrainJob, torch.Tensor] = {}
    for chunk, probabilities in done:
        results |= dict(zip(chunk, probabilities, strict=True))
        if on_chunk is not None:
            on_chunk(chunk, probabilities)
    return torch.stack([results[job] for job in jobs])


def engine_for(backend: str, worker: str) -> str:
    """What trains each job: ``"plain"`` fit or the ``"ensemble"``."""
    return {"sequential": "plain", "ensemble": "ensemble"}.get(backend, worker)


def check_engine(config: TrainConfig, engine: str) -> None:
    """The ensemble implements the paper's recipe only: SGD + momentum, no gradient clipping."""
    if engine == "ensemble" and (config.optimizer != "sgd" or config.max_grad_norm is not None):
        raise ValueError(
            f"the ensemble engine implements SGD without gradient clipping; optimizer="
            f"{config.optimizer!r}, max_grad_norm={config.max_grad_norm} need backend="
            "'sequential', or 'joblib'/'dask' with worker='plain' (plain fit)"
        )


def seed_chunks(jobs: Sequence[RetrainJob], size: int) -> list[list[int]]:
    """Positions of ``jobs`` grouped by seed (first-seen order), in runs of at most ``size``."""
    by_seed: dict[int, list[int]] = {}
    for position, job in enumerate(jobs):
        by_seed.setdefault(job.seed, []).append(position)
    return [group[i : i + size] for group in by_seed.values() for i in range(0, len(group), size)]


@dataclass(frozen=True)
class _Chunk:
    """One task: train a chunk of jobs with ``engine`` (picklable, for worker processes)."""

    config: TrainConfig
    engine: str
    device: str
    threads: int | None = None

    def __call__(
        self, jobs: list[RetrainJob], train: Tensors, test: Tensors, progress: bool = False
    ) -> tuple[list[RetrainJob], torch.Tensor]:
        return jobs, train_chunk(
            self.config, jobs, train, test, self.engine, self.threads, self.device, progress
        )


Done = Iterator[tuple[list[RetrainJob], torch.Tensor]]


def _run_local(
    task: _Chunk,
    chunks: list[list[RetrainJob]],
    train: Tensors,
    test: Tensors,
    threads: int | None,
    progress: bool,
) -> Done:
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        for chunk in tqdm(chunks, desc=f"retrain ({task.engine})", disable=not progress):
            yield task(chunk, train, test, progress)
    finally:
        torch.set_num_threads(before)


def _run_parallel(
    task: _Chunk,
    chunks: list[list[RetrainJob]],
    train: Tensors,
    test: Tensors,
    backend: str,
    n_workers: int | None,
    threads: int | None,
    client,
    progress: bool,
) -> Done:
    from joblib import Parallel, delayed, parallel_config

    if backend == "joblib":
        n_workers = n_workers or os.cpu_count() or 1
        # One torch thread per core: OpenMP threads of processes sharing a core spin-wait for
        # each other (measured: a CNN step 20× slower with 2 threads on 2 busy cores).
        threads = threads or max(1, (os.cpu_count() or 1) // n_workers)
        setting = parallel_config(backend="loky", n_jobs=n_workers)
    else:
        # Scattered to the workers once instead of pickled into every task.
        options = {"scatter": [train, test]} | ({"client": client} if client is not None else {})
        setting = parallel_config(backend="dask", n_jobs=n_workers or -1, **options)
        threads = threads or 1
    call = delayed(replace(task, threads=threads))
    with setting:
        done = Parallel(return_as="generator_unordered")(call(c, train, test) for c in chunks)
        yield from tqdm(done, total=len(chunks), desc=f"retrain ({backend})", disable=not progress)


def train_chunk(
    config: TrainConfig,
    jobs: Sequence[RetrainJob],
    train: Tensors,
    test: Tensors,
    engine: str = "ensemble",
    threads: int | None = None,
    device: str = "cpu",
    progress: bool = False,
) -> torch.Tensor:
    """Probabilities (len(jobs), n_test, C) of ``jobs`` (one seed for ``"ensemble"``), trained
    with ``engine``; ``threads`` sets torch's thread count in this process first."""
    if threads:
        torch.set_num_threads(threads)
    if engine == "plain":
        return torch.stack([_train_plain(config, job, train, test, device) for job in jobs])
    return train_ensemble(config, jobs, train, test, device, progress)


def _train_plain(
    config: TrainConfig, job: RetrainJob, train: Tensors, test: Tensors, device: str
) -> torch.Tensor:
    seeded = replace(config, seed=job.seed)
    model = new_model(seeded)[0]
    keep = job.keep(len(train["labels"])) if job.removed else None
    fit(model, train, seeded, keep=keep, device=device, progress=False)
    return predict_proba(model, test, device=device)


def train_ensemble(
    config: TrainConfig,
    jobs: Sequence[RetrainJob],
    train: Tensors,
    test: Tensors,
    device: str = "cpu",
    progress: bool = False,
) -> torch.Tensor:
    """Train ``jobs`` (all of one seed) as one stacked ensemble; probabilities (M, n_test, C).

    Member m minimises the mean cross-entropy over its kept examples of each mini-batch,
    ``L_m = Σ_i w_mi ℓ_i / Σ_i w_mi`` with ``w_mi = keep_m[i]``, and updates like
    ``torch.optim.SGD`` (no dampening, no Nesterov): ``buf ← μ·buf + ∇L_m`` (``buf = ∇L_m`` on
    its first step), ``θ_m ← θ_m − η·buf``; a member with no kept example in the batch changes
    nothing.
    """
    if len({job.seed for job in jobs}) != 1:
        raise ValueError("train_ensemble: all jobs must share one seed (common init and order)")
    check_engine(config, "ensemble")
    seeded = replace(config, seed=jobs[0].seed)
    ensemble = _Ensemble(
        new_model(seeded)[0].to(device).train(), len(jobs), seeded.freeze_embeddings
    )
    n = len(train["labels"])
    keep = torch.stack([job.keep(n) for job in jobs]).to(device)  # (M, N)
    steps = seeded.epochs * -(-n // seeded.batch_size)
    with tqdm(
        total=steps,
        desc=f"ensemble seed {seeded.seed} ×{len(jobs)}",
        leave=False,
        disable=not progress,
    ) as bar:
        for epoch in range(seeded.epochs):
            order = epoch_order(n, seeded.seed, epoch)
            for start in range(0, n, seeded.batch_size):
                bar.update()
                index = order[start : start + seeded.batch_size]
                weights = keep[:, index.to(device)].to(torch.float32)  # (M, B)
                if weights.sum(1).gt(0).any():
                    ensemble.step(select(train, index, device), weights, seeded.lr, seeded.momentum)
    return ensemble.probabilities(test, device)


class _Ensemble:
    """M copies of ``model`` as stacked (M, ...) parameters and momentum buffers.

    The trainable word embedding (V × d, most of a small model's parameters) is never looked up
    or differentiated whole: each step runs the model on the batch's distinct rows ``U`` with
    ``input_ids`` renumbered into them, so its gradient is (M, |U|, d) instead of (M, V, d). The
    other rows' gradient is exactly zero, so ``buf ← μ·buf`` there and ``buf[U] += g`` is the
    same arithmetic as SGD's dense update. This assumes the model reads ``input_ids`` only
    through its word-embedding layer (true of the CNN and of BERT-style HF models).
    """

    def __init__(self, model: nn.Module, members: int, freeze_embeddings: bool) -> None:
        self.model = model
        embedding = word_embeddings(model).weight
        frozen = embedding if freeze_embeddings else None
        names = [k for k, p in model.named_parameters() if p.requires_grad and p is not frozen]
        stacked = stack_module_state([model] * members)[0]
        self.params = {k: stacked[k].detach() for k in names}
        self.buffers = {k: torch.zeros_like(p) for k, p in self.params.items()}  # 0·μ + g = g
        self.fixed = {k: p.detach() for k, p in model.named_parameters() if k not in self.params}
        self.fixed |= dict(model.named_buffers())
        self.rows_key = next(
            (k for k, p in model.named_parameters() if p is embedding and k in self.params), None
        )
        self.grads = vmap(grad(_member_loss(model)), in_dims=(0, None, None, 0), randomness="same")

    def step(self, batch: Tensors, weights: torch.Tensor, lr: float, momentum: float) -> None:
        """One SGD step of every member with a kept example in ``batch`` (weights (M, B))."""
        params, rows = dict(self.params), None
        if self.rows_key is not None:
            rows, batch["input_ids"] = torch.unique(batch["input_ids"], return_inverse=True)
            params[self.rows_key] = params[self.rows_key][:, rows]
        grads = self.grads(params, self.fixed, batch, weights)
        _sgd_step(
            self.params, self.buffers, grads, weights.sum(1) > 0, lr, momentum, self.rows_key, rows
        )

    def probabilities(self, test: Tensors, device: str) -> torch.Tensor:
        """Each member's weights loaded into the model in turn and run through
        ``predict_proba``, the same evaluation path as plain retraining: (M, n_test, C)."""
        out = []
        for m in range(len(next(iter(self.params.values())))):
            self.model.load_state_dict({k: v[m] for k, v in self.params.items()}, strict=False)
            out.append(predict_proba(self.model, test, device=device))
        return torch.stack(out)


def _member_loss(model: nn.Module) -> Callable:
    def loss(params: Tensors, fixed: Tensors, batch: Tensors, weights: torch.Tensor):
        inputs = {k: v for k, v in batch.items() if k in MODEL_INPUTS}
        logits = functional_call(model, {**params, **fixed}, args=(), kwargs=inputs)
        per_example = F.cross_entropy(logits, batch["labels"], reduction="none")
        # Σ w ℓ / Σ w is fit's mean over the kept examples; the clamp only guards empty batches,
        # whose step _sgd_step discards.
        return (per_example * weights).sum() / weights.sum().clamp(min=1)

    return loss


@torch.no_grad()
def _sgd_step(
    params: Tensors,
    buffers: Tensors,
    grads: Tensors,
    active: torch.Tensor,
    lr: float,
    momentum: float,
    rows_key: str | None = None,
    rows: torch.Tensor | None = None,
) -> None:
    """``torch.optim.SGD``'s foreach momentum update on the stacked (M, ...) tensors, undone for
    the members with ``active`` False. ``grads[rows_key]`` holds only the rows ``rows``."""
    idle = torch.nonzero(~active).flatten()
    saved = {k: (params[k][idle].clone(), buffers[k][idle].clone()) for k in params if len(idle)}
    dense = [k for k in params if k != rows_key]
    torch._foreach_mul_(list(buffers.values()), momentum)
    torch._foreach_add_([buffers[k] for k in dense], [grads[k] for k in dense])
    if rows_key is not None:
        buffers[rows_key].index_add_(1, rows, grads[rows_key])
    torch._foreach_add_(list(params.values()), list(buffers.values()), alpha=-lr)
    for k, (param, buf) in saved.items():
        params[k][idle], buffers[k][idle] = param, buf


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
        resolved = resolved_config(
            neutral, new_model(neutral)[1], tensor_digest(train, test), threads
        )
        key = config_key(resolved)
        self.folder = Folder(
            cache_dir(cache)
            / "retrain"
            / f"{config.model.replace('/', '_')}-{config.data.dataset}-{key}"
        )
        self.dir = self.folder.path
        self.folder.remove_stale_tmp()
        if self.folder.read_json("config.json", recompute=True) is None:
            self.folder.write_json("config.json", resolved)

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
    else one core's share per joblib worker, 1 per dask task, this process's setting locally."""
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
    **options,
) -> Retrained:
    """``retrain_probabilities`` that trains each distinct job once: jobs found in ``store``
    (default: ``RetrainStore(config, train, test, cache)``) are read back, the rest trained and
    saved as each chunk finishes, so an interrupted call resumes where it stopped."""
    threads = retrain_threads(
        options.get("backend", "joblib"), options.get("n_workers"), options.get("threads")
    )
    store = store or RetrainStore(config, train, test, cache, threads)
    jobs = [RetrainJob.of(job, len(train["labels"])) for job in jobs]
    unique = list(dict.fromkeys(jobs))
    found = {job: store.load(job) for job in unique}
    missing = [job for job, probs in found.items() if probs is None]

    def keep(chunk: list[RetrainJob], probabilities: torch.Tensor) -> None:
        for job, row in zip(chunk, probabilities, strict=True):
            store.save(job, row)
            found[job] = row

    if missing:
        retrain_probabilities(config, missing, train, test, on_chunk=keep, **options)
    probabilities = torch.stack([found[job] for job in jobs])
    return Retrained(probabilities, len(missing), len(jobs) - len(missing))
