"""TracIn-WE at the paper's scale: 50,000 training × 1,000 test texts × 3 checkpoints, streamed.

``influence.top_k_streaming_both("tracin-we", ...)``: the 10 strongest proponents and opponents
of each test text, the training set walked in chunks (``--chunk-size``) so that neither the
50,000 × 1,000 score matrix nor a checkpoint's ~0.9 GB of training-set gradient rows is ever
held. Run at each of ``--sizes`` (default 5,000, 20,000 and 50,000) so that the growth is visible.

- Model: the BERT-tiny architecture (vocab 30,522, d 128, 2 layers, 2 heads, 4.4 M parameters)
  **randomly initialised** (no pretrained weights offline; the cost does not depend on the
  weights). Checkpoints: the weights plus N(0, 0.01²) noise, a different draw each, with learning
  rates 0.01, 0.005, 0.0033.
- Data: the offline AG News through ``make_splits`` (``TRACIN_WE_DATA_DIR``, default
  ``../shared/data``): ``--n-test`` test texts (stratified sample of the test split) and a pool
  of ``POOL`` training texts (stratified, the train/test duplicates dropped), tokenized to
  ``--seq-len``. The pool is **repeated** to reach each size, every repetition in a fresh random
  order (seed 0): 50,000 = 5 passes over 9,900 texts and 500 of a sixth. Repeated texts have
  identical gradient rows and cost the same as new ones (the engine deduplicates nothing).

Measured per size, in one process, sizes in turn:

- ``streaming``: wall clock of the call, inputs to results (proponents and opponents);
- ``bare``: wall clock of exactly the ``embedding_grads`` calls the call makes (every batch of
  train and test at every checkpoint, the model already loaded), timed right before it on the
  same data; ``streaming / bare`` is the cost of everything that is not a backward pass;
- ``in-call``: the share of the streaming call spent inside ``embedding_grads`` (a timing
  wrapper), a cross-check that does not depend on the load staying the same between the two
  measurements;
- peak memory: on CPU the process's peak resident set during the call (``VmHWM``, reset through
  ``/proc/self/clear_refs``), absolute and above the resident set just before; on CUDA also
  ``torch.cuda.max_memory_allocated`` above the memory allocated before.

Shared tokens are scored by ``embedding.sparse_dot``'s fast path (the default), or with
``--exact`` by its exact path.

    .venv/bin/python benchmarks/bench_scale.py    # ~10 minutes on 2 quiet CPU cores
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from measure import (
    bare_backward_seconds,
    peak_since_reset,
    perturbed_checkpoints,
    reset_peak,
    rss_bytes,
    synchronize,
)
from torch import nn

from tracin_we import influence
from tracin_we.core.data import DataConfig, make_splits
from tracin_we.core.inputs import Tensors, model_inputs
from tracin_we.core.models import build_model
from tracin_we.influence import embedding
from tracin_we.influence.streaming import DEFAULT_CHUNK_SIZE

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
POOL = 9_900  # distinct training texts (the offline AG News has ~9,990 outside its test split)
NUM_LABELS = 4
TARGETS = {"minutes": 15.0, "peak GiB": 2.0, "ratio": 1.15}
GiB, MiB = 2**30, 2**20


def load_data(args: argparse.Namespace) -> tuple[Tensors, Tensors]:
    """(pool of training texts, test texts) as tensors."""
    if not os.environ.get("TRACIN_WE_DATA_DIR") and (SHARED_DATA / "ag_news").is_dir():
        os.environ["TRACIN_WE_DATA_DIR"] = str(SHARED_DATA)
    config = DataConfig(n_train=POOL, n_val=0, n_test=args.n_test, max_length=args.seq_len)
    splits = make_splits(config)
    return model_inputs(splits["train"]), model_inputs(splits["test"])


def repeated(pool: Tensors, n: int, seed: int = 0) -> Tensors:
    """The first ``n`` texts of the pool repeated, each repetition in a fresh random order."""
    generator = torch.Generator().manual_seed(seed)
    size = len(pool["labels"])
    passes = [torch.randperm(size, generator=generator) for _ in range(-(-n // size))]
    order = torch.cat(passes)[:n]
    return {k: v[order] for k, v in pool.items()}


@contextmanager
def backward_timer(device: str) -> Iterator[list[float]]:
    """Seconds spent inside ``embedding_grads`` while the context is open (``[total]``)."""
    total = [0.0]
    original = embedding.embedding_grads

    def timed(model: nn.Module, batch: Tensors) -> torch.Tensor:
        synchronize(device)
        start = time.perf_counter()
        out = original(model, batch)
        synchronize(device)
        total[0] += time.perf_counter() - start
        return out

    embedding.embedding_grads = timed
    try:
        yield total
    finally:
        embedding.embedding_grads = original


def run_size(
    model: nn.Module, checkpoints: list, train: Tensors, test: Tensors, args: argparse.Namespace
) -> dict[str, float]:
    """One size: bare backward passes, then the streaming call (timed, memory measured)."""
    bare = bare_backward_seconds(model, checkpoints, [train, test], args.batch_size, args.device)
    base = reset_peak(args.device)
    base_rss = rss_bytes("VmRSS") or 0
    with backward_timer(args.device) as in_call:
        synchronize(args.device)
        start = time.perf_counter()
        top = influence.top_k_streaming_both(
            "tracin-we",
            model,
            checkpoints,
            train,
            test,
            args.k,
            chunk_size=args.chunk_size,
            progress=args.progress,
            batch_size=args.batch_size,
            device=args.device,
            exact=args.exact,
        )
        synchronize(args.device)
        seconds = time.perf_counter() - start
    assert top.proponents.indices.shape == (len(test["labels"]), args.k)
    out = {"seconds": seconds, "bare": bare, "in_call": in_call[0]}
    out["peak_rss"] = float(rss_bytes("VmHWM") or 0)
    out["rss_delta"] = out["peak_rss"] - base_rss
    if torch.device(args.device).type == "cuda":
        out["cuda_delta"] = float(peak_since_reset(args.device) - base)
    return out


def report_row(n_train: int, n_test: int, checkpoints: int, m: dict[str, float]) -> str:
    texts_per_s = n_train / m["seconds"]
    grads_per_s = (n_train + n_test) * checkpoints / m["seconds"]
    memory = f"{m['peak_rss'] / MiB:>9,.0f} {m['rss_delta'] / MiB:>8,.0f}"
    if "cuda_delta" in m:
        memory += f" {m['cuda_delta'] / MiB:>8,.0f}"
    return (
        f"{n_train:>7,} {m['seconds']:>9.1f} {texts_per_s:>8.0f} {grads_per_s:>8.0f} "
        f"{n_train * n_test / m['seconds'] / 1e6:>7.2f} {m['bare']:>8.1f} "
        f"{m['seconds'] / m['bare']:>6.2f}× {100 * m['bare'] / m['seconds']:>5.0f}% "
        f"{100 * m['in_call'] / m['seconds']:>6.0f}% {memory}"
    )


def verdict(value: float, target: float) -> str:
    return "PASS" if value <= target else f"MISS by {100 * (value / target - 1):.0f}%"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5_000, 20_000, 50_000])
    parser.add_argument("--n-test", type=int, default=1_000)
    parser.add_argument("--checkpoints", type=int, default=3)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32, help="examples per backward pass")
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
    parser.add_argument("--k", type=int, default=10, help="proponents and opponents kept")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--progress", action="store_true", help="a progress bar over chunks")
    parser.add_argument(
        "--exact", action="store_true", help="the exact shared-token scoring (sparse_dot)"
    )
    args = parser.parse_args()
    for name in ("n_test", "checkpoints", "seq_len", "batch_size", "chunk_size", "k", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be a positive integer")
    if min(args.sizes) < args.k:
        parser.error(f"--sizes must each be >= --k ({args.k})")
    return args


def main() -> int:
    args = parse_args()
    started = time.perf_counter()
    torch.set_num_threads(args.threads)
    logging.getLogger("tracin_we").setLevel(logging.ERROR)  # "random init of bert-tiny" notice
    load = os.getloadavg()[0]
    pool, test = load_data(args)
    model, _ = build_model("bert-tiny", num_labels=NUM_LABELS, seed=0, pretrained=False)
    checkpoints = perturbed_checkpoints(model, args.checkpoints)
    n_params = sum(p.numel() for p in model.parameters())
    mean_len = float(pool["attention_mask"].float().sum(1).mean())
    print(
        f"TracIn-WE streamed top-{args.k} proponents + opponents: BERT-tiny architecture, random "
        f"init ({n_params / 1e6:.1f}M parameters), {args.checkpoints} checkpoints; AG News, "
        f"{args.n_test:,} test texts, training texts = {len(pool['labels']):,} distinct repeated "
        f"to each size; seq len {args.seq_len} (mean {mean_len:.0f} unpadded); "
        f"{'exact' if args.exact else 'fast'} shared-token scoring"
    )
    print(
        f"device {args.device}, {args.threads} torch threads on {os.cpu_count()} cores, batch "
        f"{args.batch_size}, chunk {args.chunk_size}; load average {load:.1f} at start\n"
    )
    cuda = torch.device(args.device).type == "cuda"
    header = (
        f"{'n_train':>7} {'stream s':>9} {'train/s':>8} {'grads/s':>8} {'Mpair/s':>7} "
        f"{'bare s':>8} {'ratio':>7} {'bare%':>6} {'in-call':>7} {'peak MiB':>9} {'+MiB':>8}"
        + (f" {'+cuda MiB':>8}" if cuda else "")
    )
    print(header)
    results = {}
    for n_train in args.sizes:
        train = repeated(pool, n_train)
        results[n_train] = run_size(model, checkpoints, train, test, args)
        print(report_row(n_train, args.n_test, args.checkpoints, results[n_train]), flush=True)
        del train
    print(
        "\nstream s: the streaming call; train/s: training texts per second; grads/s: per-example "
        "gradients (train + test) × checkpoints per second; Mpair/s: train × test pairs per "
        "second; bare s: its backward passes alone; ratio: stream / bare; bare%: bare / stream; "
        "in-call: time inside the backward passes during the call; peak MiB: the process's peak "
        "resident set during the call; +MiB: above the resident set before it"
    )
    largest = results[max(args.sizes)]
    minutes = largest["seconds"] / 60
    peak_gib = largest["peak_rss"] / GiB
    ratio = largest["seconds"] / largest["bare"]
    print(f"\nat {max(args.sizes):,} training texts{'':<14} {'measured':>9} {'target':>8}")
    print(
        f"{'total time (minutes)':<40} {minutes:>9.1f} {'≤ 15':>8}  "
        f"{verdict(minutes, TARGETS['minutes'])}"
    )
    print(
        f"{'peak memory (GiB, process RSS)':<40} {peak_gib:>9.2f} {'≤ 2':>8}  "
        f"{verdict(peak_gib, TARGETS['peak GiB'])}"
    )
    print(
        f"{'time / bare backward passes':<40} {ratio:>8.2f}× {'≤ 1.15×':>8}  "
        f"{verdict(ratio, TARGETS['ratio'])}"
    )
    print(
        f"\nscript wall clock {time.perf_counter() - started:.0f} s; load average "
        f"{os.getloadavg()[0]:.1f} at end (other jobs on the cores slow every number)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
