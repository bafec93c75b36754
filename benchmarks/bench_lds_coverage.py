"""Coverage of the LDS bootstrap CIs on a synthetic model with a known expected LDS.

Test points of 4 classes; a training example moves every point of a class together (a shared
class component), which is what makes the LDS_j of different test points err together when they
share the same subsets. The model output is f_j(S) = Σ_{i∈S} w[j, i] + noise (retraining noise),
the method's scores are w + noise. Over many draws of the subsets and of the retraining noise
(the test points fixed), the mean LDS has an expected value; this script counts how often each
95% CI covers it:

- one-way: resample the test points only (the subsets held fixed);
- two-way: resample test points and subsets (``stats.two_way_means``, the default).

Then with a trained-model factor: each model s (a seed) adds its own perturbation to w, so that
f and the scores differ from model to model, and the expected LDS is over models too:

- two-way on one model: the one-model CI, blind to which model was trained;
- three-way on 3 models: ``model_per_seed``'s CI, resampling models, points and subsets.

Measured (2 CPU cores, 16 s): one-way 0.71 (mean width 0.055), two-way 0.96 (0.129). With the
model factor (60 repeats, 45 s): two-way on one model 0.65 (0.136), three-way on 3 models 0.88
(0.161): three models give the model variance two degrees of freedom, so the CI still falls
short where that variance is large (here it is), but far less than a single model's.

    PYTHONPATH=. python benchmarks/bench_lds_coverage.py
"""

from __future__ import annotations

import numpy as np
import torch

from tracin_we.experiments.lds import LDSConfig, draw_subsets
from tracin_we.experiments.lds_tables import predictions, summarize

N_POINTS, N_TRAIN, M, REPEATS = 100, 200, 32, 100


def main() -> None:
    rng = np.random.default_rng(0)
    classes = np.arange(N_POINTS) % 4
    shared = rng.normal(size=(4, N_TRAIN))
    w = torch.tensor(2.0 * shared[classes] + rng.normal(size=(N_POINTS, N_TRAIN)))
    scores = w + torch.tensor(3.0 * rng.normal(size=(N_POINTS, N_TRAIN)))

    def draw(r: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        masks = draw_subsets(N_TRAIN, M, 0.5, seed=1000 + r)
        noise = np.random.default_rng(r).normal(scale=8.0, size=(N_POINTS, M))
        return predictions(w, masks) + torch.tensor(noise), {
            "tracin-we": predictions(scores, masks)
        }

    def summary(r: int, two_way: bool, n_bootstrap: int = 300):
        config = LDSConfig(
            methods=("tracin-we",),
            n_bootstrap=n_bootstrap,
            resample_subsets=two_way,
            bootstrap_seed=r,
        )
        return summarize(*draw(r), range(N_POINTS), config)[1].iloc[0]

    expected = np.mean([summary(r, False, 10)["mean"] for r in range(1000, 1400)])
    print(f"expected mean LDS (400 fresh draws): {expected:.3f}")
    for two_way, name in ((False, "one-way (test points)"), (True, "two-way (+ subsets)")):
        rows = [summary(r, two_way) for r in range(REPEATS)]
        covered = np.mean([row["low"] <= expected <= row["high"] for row in rows])
        width = np.mean([row["high"] - row["low"] for row in rows])
        print(f"{name}: coverage {covered:.2f} of 0.95, mean width {width:.3f}")


def with_models(repeats: int = 60) -> None:
    """Coverage where each trained model perturbs w (the model-to-model variation)."""
    rng = np.random.default_rng(1)
    classes = np.arange(N_POINTS) % 4
    base = 2.0 * rng.normal(size=(4, N_TRAIN))[classes] + rng.normal(size=(N_POINTS, N_TRAIN))

    def model_draw(r: int, model: int, masks: torch.Tensor):
        local = np.random.default_rng([r, model])
        w = torch.tensor(base + 1.5 * local.normal(size=(1, N_TRAIN)) * local.normal())
        scores = w + torch.tensor(3.0 * local.normal(size=(N_POINTS, N_TRAIN)))
        noise = torch.tensor(local.normal(scale=8.0, size=(N_POINTS, M)))
        return predictions(w, masks) + noise, predictions(scores, masks)

    def summary(r: int, n_models: int, n_bootstrap: int = 300):
        masks = draw_subsets(N_TRAIN, M, 0.5, seed=1000 + r)
        drawn = [model_draw(r, s, masks) for s in range(n_models)]
        f = torch.stack([d[0] for d in drawn]).squeeze(0)
        g = {"tracin-we": torch.stack([d[1] for d in drawn]).squeeze(0)}
        config = LDSConfig(
            methods=("tracin-we",),
            seeds=tuple(range(n_models)),
            n_bootstrap=n_bootstrap,
            bootstrap_seed=r,
        )
        return summarize(f, g, range(N_POINTS), config)[1].iloc[0]

    expected = np.mean([summary(r, 1, 10)["mean"] for r in range(1000, 1400)])
    print(f"with a model factor: expected mean LDS (400 fresh models): {expected:.3f}")
    for n_models, name in ((1, "two-way, one model"), (3, "three-way, 3 models")):
        rows = [summary(r, n_models) for r in range(repeats)]
        covered = np.mean([row["low"] <= expected <= row["high"] for row in rows])
        width = np.mean([row["high"] - row["low"] for row in rows])
        print(f"{name}: coverage {covered:.2f} of 0.95, mean width {width:.3f}")


if __name__ == "__main__":
    main()
    with_models()
