"""Test accuracy against retrain time for CNN recipes on the offline AG News: what the deletion,
fixing and LDS notebooks buy per retrain-second.

Each recipe is trained with ``loop.fit`` as a retrain is (one torch thread, present embedding
rows only) for each ``--seeds`` (the seed also draws the data sample) and evaluated on the same
1,000 test texts; the time is the fit alone, fastest over seeds. Other processes on the cores
slow every row down; the accuracies do not depend on them.

    .venv/bin/python benchmarks/bench_recipe.py               # about 4 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from tracin_we.core.data import make_splits
from tracin_we.core.inputs import model_inputs
from tracin_we.training.loop import accuracy, fit
from tracin_we.training.model_init import new_model
from tracin_we.training.recipe import TrainConfig

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# (n_train, max_length, batch_size, lr, epochs); the first is the former default, the second
# today's default (presets/default.yaml, x-cnn-recipe).
RECIPES = [
    (2000, 64, 32, 1e-3, 4),
    (8000, 64, 128, 4e-3, 3),
    (8000, 64, 64, 2e-3, 4),
    (8000, 48, 128, 4e-3, 3),
    (9000, 64, 64, 2e-3, 4),
    (4000, 48, 64, 3e-3, 4),
]


def run(recipe: tuple, seed: int) -> tuple[float, float]:
    """(test accuracy, fit seconds) of one recipe and seed."""
    n_train, max_length, batch_size, lr, epochs = recipe
    config = TrainConfig.from_params(
        model="cnn",
        n_train=n_train,
        n_val=500,
        n_test=1000,
        max_length=max_length,
        batch_size=batch_size,
        lr=lr,
        epochs=epochs,
        checkpoint_epochs=[epochs],
        optimizer="adam",
        seed=seed,
    )
    splits = make_splits(config.data)
    train, test = model_inputs(splits["train"]), model_inputs(splits["test"])
    model = new_model(config)[0]
    start = time.perf_counter()
    fit(model, train, config, progress=False)
    return accuracy(model, test), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()
    if not os.environ.get("TRACIN_WE_DATA_DIR") and (SHARED_DATA / "ag_news").is_dir():
        os.environ["TRACIN_WE_DATA_DIR"] = str(SHARED_DATA)
    torch.set_num_threads(1)
    print(
        f"CNN, Adam, 1 thread; test accuracy on 1,000 texts per seed {args.seeds}; load "
        f"average {os.getloadavg()[0]:.1f} at start\n"
    )
    header = f"{'n_train':>7} {'length':>6} {'batch':>5} {'lr':>6} {'epochs':>6}  accuracy per seed"
    print(header + f"{'':>10} {'mean':>5} {'fit s':>6} {'s vs 1st':>8}")
    first = None
    for recipe in RECIPES:
        results = [run(recipe, seed) for seed in args.seeds]
        accuracies = [a for a, _ in results]
        seconds = min(s for _, s in results)
        first = first or seconds
        n, length, batch, lr, epochs = recipe
        print(
            f"{n:>7} {length:>6} {batch:>5} {lr:>6.0e} {epochs:>6}  "
            + " ".join(f"{a:.3f}" for a in accuracies).ljust(27)
            + f" {sum(accuracies) / len(accuracies):.3f} {seconds:>6.1f} {seconds / first:>7.2f}×"
        )


if __name__ == "__main__":
    main()
