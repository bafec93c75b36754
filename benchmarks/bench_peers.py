"""TracIn-WE, TRAK (traker) and EK-FAC (kronfluence) on the same model, data and test points, in
one run: each method's seconds and peak memory, in its own spawned process, and the ratios to
TracIn-WE.

    python benchmarks/bench_peers.py [--n-train 2000] [--n-test 20] [--threads 2] [--out CSV]

The table also goes to ``--out`` (default ``runs/benchmarks/bench_peers.csv``), where
``python -m tracin_we.report.results_page`` reads it for the TRAK/EK-FAC section.

The model is the authors' CNN of the default preset (random init, vocabulary 30,522 × 128, three
convolutions, a classifier) with 3 checkpoints perturbed from it
(``measure.perturbed_checkpoints``); the data are the offline AG News texts
(``$TRACIN_WE_DATA_DIR``), 64 tokens each. The settings are presets/lds-peers.yaml's: TRAK
projects the gradients of every parameter but the word embedding to 1,024 dimensions over the 3
checkpoints; EK-FAC tracks the convolutions and the classifier at the last checkpoint; TracIn-WE
sums over the 3 checkpoints. Peak memory: the process's peak resident set above what it held
after setup (``measure.reset_peak``).
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from pathlib import Path

import pandas as pd
import torch
from measure import peak_since_reset, perturbed_checkpoints, reset_peak

METHODS = ("tracin-we", "trak", "ekfac")
OPTIONS = {"trak": {"proj_dim": 1024}, "tracin-we": {}, "ekfac": {}}
MiB = 2**20


def setup(n_train: int, n_test: int):
    import kronfluence.analyzer  # noqa: F401  the libraries imported before the measurement
    import trak  # noqa: F401

    from tracin_we.core.data import make_splits
    from tracin_we.core.inputs import model_inputs
    from tracin_we.training.model_init import new_model
    from tracin_we.training.recipe import TrainConfig

    config = TrainConfig.from_params(
        model="cnn", n_train=n_train, n_val=0, n_test=max(n_test, 4), max_length=64
    )
    splits = make_splits(config.data)
    model = new_model(config)[0].eval()
    train = model_inputs(splits["train"])
    test = {k: v[:n_test] for k, v in model_inputs(splits["test"]).items()}
    return model, perturbed_checkpoints(model, 3), train, test


def measure(method: str, n_train: int, n_test: int, threads: int, out) -> None:
    """In a spawned child: setup, then one timed call; sends (seconds, peak MiB above setup)."""
    from tracin_we.influence import scores

    torch.set_num_threads(threads)
    model, checkpoints, train, test = setup(n_train, n_test)
    base = reset_peak("cpu")
    started = time.perf_counter()
    scores(method, model, checkpoints, train, test, progress=False, **OPTIONS[method])
    seconds = time.perf_counter() - started
    out.send((seconds, (peak_since_reset("cpu") - base) / MiB))


def run(method: str, args: argparse.Namespace) -> tuple[float, float]:
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(
        target=measure, args=(method, args.n_train, args.n_test, args.threads, send)
    )
    child.start()
    send.close()  # the child's end only: recv() then fails rather than waits if it dies
    try:
        result = receive.recv()
    except EOFError as error:
        child.join()
        message = f"{method}: the measuring process died (exit code {child.exitcode})"
        raise RuntimeError(message) from error
    child.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/benchmarks/bench_peers.csv"))
    args = parser.parse_args()
    found = {method: run(method, args) for method in METHODS}
    base_s, base_mib = found["tracin-we"]
    sizes = f"{args.n_train:,} training × {args.n_test} test texts"
    print(f"{sizes}, 3 checkpoints, {args.threads} threads")
    print(f"{'method':<11} {'seconds':>8} {'peak MiB':>9} {'× time':>7} {'× memory':>9}")
    rows = []
    for method, (seconds, mib) in found.items():
        print(
            f"{method:<11} {seconds:>8.2f} {mib:>9.0f} {seconds / base_s:>6.1f}× "
            f"{mib / max(base_mib, 1):>8.1f}×"
        )
        rows.append(
            {"method": method, "seconds": seconds, "peak_mib": mib, "n_train": args.n_train,
             "n_test": args.n_test, "checkpoints": 3, "threads": args.threads}
        )  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(args.out, index=False)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
