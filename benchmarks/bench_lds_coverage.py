"""Coverage of the LDS bootstrap CIs on a synthetic model with a known expected LDS.

Test points of 4 classes; a training example moves every point of a class together (a shared
class component), which is what makes the LDS_j of different test points err together when they
share the same subsets. The model output is f_j(S) = Σ_{i∈S} w[j, i] + noise (retraining noise),
the method's scores are w + noise. Over many draws of the subsets and of the retraining noise
(the test points fixed), the mean LDS has an expected value; this script counts how often each
95% CI covers it:

- one-way: resample the test points only (the subsets held fixed);
- two-way: resample test points and subsets (``stats.two_way_means``, the default).

Measured (2 CPU cores, 16 s): one-way 0.71 (mean width 0.055), two-way 0.96 (0.129).

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


if __name__ == "__main__":
    main()
