"""Each notebook's recorded smoke metrics against a stored reference, within a stated tolerance
(as Microsoft's recommenders checks its notebooks): a metric that moves beyond its tolerance
fails the notebook's test; figures are never compared byte for byte, so this holds on any CPU.

Tolerances (``tolerance``): counts the parameters fix are exact, counts of outcomes may move by 2
or 25%; an accuracy, share or correlation may move by 0.15
(a few of the smoke run's 40 test texts or 4 test points, as another CPU's rounding can flip);
any other number by 0.15 + 25% of its size. Metrics that depend on the cache's state or the
clock, and the smoke run's variance shares (``SKIPPED``), are not compared. After a change that
moves a metric on purpose:

    python -m tracin_we.reproduce --preset smoke --runs /tmp/smoke
    python -m tests.reference_metrics /tmp/smoke/smoke/metrics     # rewrites tests/reference/
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

REFERENCE = Path(__file__).parent / "reference" / "smoke_metrics.json"
SKIPPED = {"n_trained", "n_reused", "train_seconds", "run_dir", "typical_point"}
# Variance shares of 2 models × 4 points are noise by design (a component truncated at 0 can jump
# to a third of the total on another CPU): the test checks that they add up, not their values.
SKIPPED |= {"variance_shares_we_minus_last"}
BOUNDED = ("accuracy", "share", "spearman", "ndr", "rho", "lds", "cancellation_fraction")
# Counts the parameters fix; other counts (mistakes found, a top-k list's most common example)
# are outcomes of training.
FIXED_COUNTS = {"vocab_size", "epochs_run", "n_checkpoints", "n_test_points", "n_points"}
FIXED_COUNTS |= {"n_candidates", "n_flipped", "n_subsets", "k", "n_corpus"}


def flatten(metrics: dict, prefix: str = "") -> dict[str, float]:
    """Numbers of a metrics record by dotted path (``auc_del_plus.tracin-we``); booleans,
    strings, lists and ``SKIPPED`` keys left out."""
    out = {}
    for key, value in metrics.items():
        if key in SKIPPED:
            continue
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out |= flatten(value, f"{path}.")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[path] = value
    return out


def tolerance(path: str, value: float) -> float:
    """How far ``value`` at ``path`` may move on another CPU (0 for counts)."""
    if isinstance(value, int):
        return 0.0 if path in FIXED_COUNTS else max(2.0, 0.25 * abs(value))
    if any(word in path.lower() for word in BOUNDED):
        return 0.15
    return 0.15 + 0.25 * abs(value)


def drift(notebook: str, metrics: dict) -> list[str]:
    """The metrics of ``notebook`` that moved beyond their tolerance, or are missing or new."""
    reference = json.loads(REFERENCE.read_text()).get(notebook)
    if reference is None:
        return [f"{notebook}: no reference; run `python -m tests.reference_metrics`"]
    found, problems = flatten(metrics), []
    for path, (expected, allowed) in reference.items():
        got = found.get(path)
        if got is None or (isinstance(got, float) and math.isnan(got)):
            problems.append(f"{path}: missing (reference {expected})")
        elif abs(got - expected) > allowed + 1e-12:
            problems.append(f"{path}: {got:.6g}, reference {expected:.6g} ± {allowed:.3g}")
    new = sorted(set(found) - set(reference))
    problems += [f"{path}: new, not in the reference" for path in new]
    return problems


def write_reference(metrics_dir: Path) -> None:
    """Store every notebook's metrics in ``metrics_dir`` with their tolerances."""
    reference = {}
    for path in sorted(metrics_dir.glob("*.json")):
        numbers = flatten(json.loads(path.read_text()))
        reference[path.stem] = {k: [v, tolerance(k, v)] for k, v in numbers.items()}
    REFERENCE.parent.mkdir(exist_ok=True)
    REFERENCE.write_text(json.dumps(reference, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    write_reference(Path(sys.argv[1]))
    print(f"wrote {REFERENCE}")
