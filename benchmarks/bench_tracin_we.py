"""TracIn-WE against captum's exact ``TracInCP(layers=[word embeddings])`` at BERT-tiny size.

Both compute the same scores, Σ_c η_c ∇_E ℓ(z') · ∇_E ℓ(z) over the word-embedding matrix E
(vocab 30,522 × d 128), for every train × test pair. Random BERT-tiny weights (the architecture
of ``build_model("bert-tiny", pretrained=False)``); two checkpoints, each the initial weights
perturbed by different noise, with different learning rates; random texts of ``--seq-len``
positions ([CLS] w... [SEP], then [PAD]: 50–100% of the positions are words, drawn from a
Zipf-like law over the vocabulary so that texts share words) and random labels among 4.

How the two differ (and so how their costs grow):

- captum takes one backward pass per example per checkpoint (``sample_wise_grads_per_batch=
  False``, the setting it needs for an embedding layer), each over its whole batch's graph and
  each yielding a dense vocab × d gradient (15.6 MB in float32). It keeps the test gradients of
  every checkpoint (n_test × checkpoints × 15.6 MB) and scores with dense dot products,
  n_train × n_test × vocab × d multiply-adds per checkpoint: on top of the per-example passes,
  its time grows with train × test and its memory with test × checkpoints.
- ``tracin-we`` takes one batched backward pass per ``--batch-size`` examples, keeps each
  example's gradient as rows of the tokens it contains and sums the row products of shared tokens
  only: its cost grows with train + test (plus the shared-token pairs), its memory is mostly the
  activations of one batched backward pass.

captum runs at ``--captum-batch-size 1`` by default, its fastest here (at 8 it took ~9× longer
on 64 × 32 pairs), so the speed-up printed is against captum at its best.

Measured, on one machine in one run:

- time: wall clock (``time.perf_counter``) of the whole call, inputs to score matrix, each
  method's fastest of ``--repeats`` runs (``tracin-we`` and the bare passes: of 5 × ``--repeats``
  runs, being short), the methods interleaved so that other processes on the cores slow all alike;
- bare backward passes: exactly the ``embedding_grads`` calls ``tracin-we`` makes (every batch of
  train and test at every checkpoint, model already loaded); their share of ``tracin-we``'s time,
  and the scoring overhead (``tracin-we`` − bare) / bare;
- peak memory: each method (and the bare passes) in a fresh spawned process, after the same
  setup and a warm-up on 2 × 2 examples: on CPU the peak resident set (``VmHWM``, reset through
  ``/proc/self/clear_refs``) minus the resident set just before the call; on CUDA
  ``torch.cuda.max_memory_allocated`` minus the memory allocated before;
- agreement: max |tracin-we − captum| / max |captum| over the score matrix; the script exits with
  status 1 when it exceeds ``--rtol``.

    .venv/bin/python benchmarks/bench_tracin_we.py     # 1½–3 minutes on 2 shared CPU cores
    # the default notebooks' scale; ~10 minutes (captum runs twice: once timed, once for memory)
    .venv/bin/python benchmarks/bench_tracin_we.py --n-train 2000 --n-test 40 --checkpoints 3 \
        --seq-len 64 --repeats 1

It ends with captum's memory formula, n_test × checkpoints × vocab × d × 4 bytes, evaluated here
and at 1,000 test points × 3 checkpoints, against the machine's RAM.
"""

from __future__ import annotations

import argparse
import copy
import logging
import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import torch
from captum.influence import TracInCP
from measure import (
    bare_backward_seconds,
    peak_since_reset,
    perturbed_checkpoints,
    reset_peak,
    synchronize,
)
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tracin_we import influence
from tracin_we.core.inputs import Tensors
from tracin_we.core.models import build_model, word_embeddings
from tracin_we.core.tokenizer import VOCAB_SIZE

Runner = Callable[["Setup"], torch.Tensor]

CLS, SEP, FIRST_WORD, NUM_LABELS = 101, 102, 999, 4
CAPTUM_COLUMNS = ("input_ids", "attention_mask", "token_type_ids", "labels")
FAST_REPEATS = 5  # tracin-we and the bare passes take well under a second: more tries
TARGETS = {"speed": 100.0, "memory": 50.0, "overhead": 0.5}


class Positional(nn.Module):
    """captum calls ``model(*batch[:-1])``: input_ids, attention_mask, token_type_ids."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.inner = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        return self.inner(input_ids, attention_mask, token_type_ids)


@dataclass
class Setup:
    """The model, checkpoints and data both methods score, and the knobs of one run."""

    model: nn.Module
    captum_model: Positional
    checkpoints: list[tuple[dict[str, torch.Tensor], float]]
    train: Tensors
    test: Tensors
    args: argparse.Namespace

    def subset(self, n: int) -> Setup:
        """The same setup on the first ``n`` train and test examples (warm-ups)."""
        cut = {k: v[:n] for k, v in self.train.items()}, {k: v[:n] for k, v in self.test.items()}
        return Setup(self.model, self.captum_model, self.checkpoints, *cut, self.args)


def texts(n: int, seq_len: int, generator: torch.Generator) -> Tensors:
    """[CLS] w... [SEP] [PAD]...: between half and all of ``seq_len`` positions unpadded, words
    from a Zipf-like law over the ordinary vocabulary, labels uniform over the classes."""
    weights = 1.0 / (torch.arange(VOCAB_SIZE - FIRST_WORD, dtype=torch.float64) + 10.0)
    ids = torch.zeros(n, seq_len, dtype=torch.long)
    mask = torch.zeros(n, seq_len, dtype=torch.long)
    for i in range(n):
        length = int(torch.randint(seq_len // 2, seq_len + 1, (1,), generator=generator))
        words = torch.multinomial(weights, length - 2, replacement=True, generator=generator)
        ids[i, :length] = torch.cat([torch.tensor([CLS]), FIRST_WORD + words, torch.tensor([SEP])])
        mask[i, :length] = 1
    labels = torch.randint(0, NUM_LABELS, (n,), generator=generator)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "token_type_ids": torch.zeros_like(ids),
        "labels": labels,
    }


def make_setup(args: argparse.Namespace) -> Setup:
    logging.getLogger("tracin_we").setLevel(logging.ERROR)  # "random init of bert-tiny" notice
    model, _ = build_model("bert-tiny", num_labels=NUM_LABELS, seed=0, pretrained=False)
    generator = torch.Generator().manual_seed(0)
    train = texts(args.n_train, args.seq_len, generator)
    test = texts(args.n_test, args.seq_len, generator)
    captum_model = Positional(copy.deepcopy(model)).to(args.device).eval()
    return Setup(
        model, captum_model, perturbed_checkpoints(model, args.checkpoints), train, test, args
    )


def run_tracin_we(setup: Setup) -> torch.Tensor:
    return influence.scores(
        "tracin-we",
        setup.model,
        setup.checkpoints,
        setup.train,
        setup.test,
        batch_size=setup.args.batch_size,
        device=setup.args.device,
    )


def load_for_captum(model: Positional, checkpoint: tuple[dict, float]) -> float:
    model.inner.load_state_dict(checkpoint[0])
    model.eval()
    return checkpoint[1]


def run_captum(setup: Setup) -> torch.Tensor:
    """captum's exact TracInCP on the word-embedding layer (as in tests/test_influence.py)."""
    device, batch_size = setup.args.device, setup.args.captum_batch_size
    model = setup.captum_model
    layer = next(name for name, m in model.named_modules() if m is word_embeddings(model.inner))
    train, test = (
        TensorDataset(*(data[k].to(device) for k in CAPTUM_COLUMNS))
        for data in (setup.train, setup.test)
    )
    tracin = TracInCP(
        model,
        train,
        setup.checkpoints,
        load_for_captum,
        layers=[layer],
        loss_fn=nn.CrossEntropyLoss(reduction="none"),
        batch_size=batch_size,
        sample_wise_grads_per_batch=False,
    )
    return tracin.influence(DataLoader(test, batch_size=batch_size)).cpu()


def bare_backward(setup: Setup) -> float:
    """Seconds in the ``embedding_grads`` calls that ``tracin-we`` makes, and nothing else."""
    args = setup.args
    data = [setup.train, setup.test]
    return bare_backward_seconds(setup.model, setup.checkpoints, data, args.batch_size, args.device)


def timed(run: Runner, setup: Setup) -> tuple[float, torch.Tensor]:
    synchronize(setup.args.device)
    start = time.perf_counter()
    out = run(setup)
    synchronize(setup.args.device)
    return time.perf_counter() - start, out


def best_times(setup: Setup) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Fastest wall-clock seconds per method over interleaved repeats, and each method's scores."""
    warm = setup.subset(2)
    for warm_up in (run_tracin_we, run_captum, bare_backward):
        warm_up(warm)
    best = {"captum": float("inf"), "tracin-we": float("inf"), "bare": float("inf")}
    scores: dict[str, torch.Tensor] = {}
    for _ in range(setup.args.repeats):
        for _ in range(FAST_REPEATS):
            seconds, scores["tracin-we"] = timed(run_tracin_we, setup)
            best["tracin-we"] = min(best["tracin-we"], seconds)
            best["bare"] = min(best["bare"], bare_backward(setup))
        seconds, scores["captum"] = timed(run_captum, setup)
        best["captum"] = min(best["captum"], seconds)
    return best, scores


def peak_mib_in_this_process(method: str, args: argparse.Namespace) -> float:
    """Run in a spawned child: setup, warm-up on 2 × 2 examples, then the measured call."""
    torch.set_num_threads(args.threads)
    setup = make_setup(args)
    run = RUNNERS[method]
    run(setup.subset(2))
    base = reset_peak(args.device)
    run(setup)
    synchronize(args.device)
    return (peak_since_reset(args.device) - base) / 2**20


def peak_mib(method: str, args: argparse.Namespace) -> float:
    """Peak memory of ``method`` above the setup's, in a fresh process of its own."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(peak_mib_in_this_process, method, args).result()


def run_bare(setup: Setup) -> torch.Tensor:
    bare_backward(setup)
    return torch.empty(0)


RUNNERS: dict[str, Runner] = {"captum": run_captum, "tracin-we": run_tracin_we, "bare": run_bare}


def verdict(value: float, target: float, higher_is_better: bool) -> str:
    ok = value >= target if higher_is_better else value <= target
    return "PASS" if ok else "MISS"


def report(
    setup: Setup, seconds: dict[str, float], mib: dict[str, float], error: float, load: float
) -> None:
    args = setup.args
    n_params = sum(p.numel() for p in setup.model.parameters())
    mean_len = float(setup.train["attention_mask"].float().sum(1).mean())
    print(
        f"BERT-tiny (random init, {n_params / 1e6:.1f}M parameters, word embedding "
        f"{VOCAB_SIZE:,} × 128): {args.n_train} train × {args.n_test} test = "
        f"{args.n_train * args.n_test} pairs, seq len {args.seq_len} (mean {mean_len:.0f} "
        f"unpadded), {args.checkpoints} checkpoints"
    )
    print(
        f"device {args.device}, {args.threads} torch threads on {os.cpu_count()} cores, load "
        f"average {load:.1f} at start, {os.getloadavg()[0]:.1f} at end; batch size: tracin-we "
        f"{args.batch_size}, captum {args.captum_batch_size}"
    )
    print(
        f"times: best of {args.repeats} (tracin-we, bare: of {FAST_REPEATS * args.repeats}); "
        "peak memory: each in its own process, above the setup's\n"
    )
    rows = [
        ("captum TracInCP(layers=[word emb.])", seconds["captum"], f"{mib['captum']:.1f}"),
        ("tracin-we", seconds["tracin-we"], f"{mib['tracin-we']:.1f}"),
        ("  of which bare backward passes", seconds["bare"], f"{mib['bare']:.1f}"),
    ]
    print(f"{'method':<38} {'seconds':>8} {'peak MiB':>9}")
    for name, sec, memory in rows:
        print(f"{name:<38} {sec:>8.3f} {memory:>9}")
    speed = seconds["captum"] / seconds["tracin-we"]
    memory = mib["captum"] / max(mib["tracin-we"], 1e-9)
    share = seconds["bare"] / seconds["tracin-we"]
    overhead = (seconds["tracin-we"] - seconds["bare"]) / seconds["bare"]
    print(f"\n{'':<38} {'measured':>9} {'target':>8}")
    print(
        f"{'speed-up (captum s / tracin-we s)':<38} {speed:>8.1f}× {'≥ 100×':>8}  "
        f"{verdict(speed, TARGETS['speed'], True)}"
    )
    print(
        f"{'memory ratio (captum / tracin-we)':<38} {memory:>8.1f}× {'≥ 50×':>8}  "
        f"{verdict(memory, TARGETS['memory'], True)}"
    )
    print(f"{'backward passes share of tracin-we':<38} {100 * share:>8.0f}%")
    print(
        f"{'scoring overhead over bare backward':<38} {100 * overhead:>8.0f}% {'≤ 50%':>8}  "
        f"{verdict(overhead, TARGETS['overhead'], False)}"
    )
    print(
        f"{'agreement max|Δ| / max|captum|':<38} {error:>9.1e} {args.rtol:>8.0e}  "
        f"{verdict(error, args.rtol, False)}"
    )
    print(captum_memory(setup, mib["captum"]))


def captum_memory(setup: Setup, measured_mib: float) -> str:
    """captum's memory formula: one dense vocab × d gradient per test point and checkpoint."""
    args = setup.args
    embedding = word_embeddings(setup.model)
    vocab, dim = embedding.num_embeddings, embedding.embedding_dim
    per = vocab * dim * embedding.weight.element_size()
    here = args.n_test * args.checkpoints * per
    paper = 1_000 * 3 * per
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return (
        f"\ncaptum keeps a dense {vocab:,} × {dim} gradient per test point and checkpoint: "
        f"{per / 1e6:.1f} MB each, n_test × checkpoints × {per / 1e6:.1f} MB in all; here "
        f"{args.n_test} × {args.checkpoints} × {per / 1e6:.1f} MB = {here / 2**20:,.0f} MiB "
        f"(its measured peak: {measured_mib:,.0f} MiB); at 1,000 test points × 3 checkpoints "
        f"{paper / 2**30:.1f} GiB, against this machine's {ram / 2**30:.0f} GiB of RAM"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=24)
    parser.add_argument("--n-test", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--checkpoints", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32, help="tracin-we's batch size")
    parser.add_argument(
        "--captum-batch-size",
        type=int,
        default=1,
        help="captum's (each of its per-example backward passes runs over the "
        "whole batch's graph; 1 and 4 ran about as fast here)",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timings per method, the fastest kept (other jobs share the cores)",
    )
    parser.add_argument(
        "--rtol",
        type=float,
        default=1e-4,
        help="largest allowed max|Δ| / max|captum| (exit 1 above it)",
    )
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    setup = make_setup(args)
    mib = {method: peak_mib(method, args) for method in RUNNERS}
    seconds, scores = best_times(setup)
    error = float(
        (scores["tracin-we"] - scores["captum"]).abs().max() / scores["captum"].abs().max()
    )
    report(setup, seconds, mib, error, load)
    if not error <= args.rtol:
        print(
            f"\nFAIL: tracin-we and captum disagree (relative error {error:.1e} > {args.rtol:.0e})",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
