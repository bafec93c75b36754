"""What a run will train, and about how long it takes, before anything starts.

``plan(stem, config, params)`` lists the trainings notebook ``stem`` implies from the config it
builds: the trained model, and for an evaluation the retrains at most (``n_retrains``: fewer when
deletion sets coincide or the cache has them), each with its size in example-epochs
(n_train × epochs; the LDS's subsets keep a share ``alpha``). ``estimate`` turns them into seconds
with a rate per model and device, in wall-clock seconds per example-epoch of a whole notebook
(training, evaluation, workers and their start included): measured on this machine by earlier
runs (``reproduce`` appends a line per notebook that trained something to ``runs/timing.jsonl``;
``measured_rates``), else this project's rates on 2 CPU cores (``DEFAULT_RATES``, from the
default preset's fresh-clone run and the pretrained preset's).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tracin_we.experiments.cancellation import layer_groups
from tracin_we.training.model_init import new_model
from tracin_we.training.recipe import TrainConfig

# Wall seconds per example-epoch on 2 CPU cores, whole notebooks: CNN from 03 (12.9 min for 257
# trainings of 8,000 × 3), BERT-tiny from 01 (0.4 min for 2,000 × 4), MiniLM from the pretrained
# preset's 01 (2.5 min for 800 × 2); BERT-tiny MLM pretraining taken as BERT-tiny's.
DEFAULT_RATES = {"cnn": 1.25e-4, "bert-tiny": 3.0e-3, "minilm-l6": 9.0e-2}
UNKNOWN_RATE = DEFAULT_RATES["minilm-l6"]  # a Hugging Face model: priced as the largest known


@dataclass(frozen=True)
class Work:
    """``count`` trainings of ``model``, each of ``example_epochs`` (n_train × epochs)."""

    notebook: str
    what: str
    count: int
    model: str
    example_epochs: float
    shared: bool = False  # another notebook of the run trains them first (the cache shares them)
    device: str = "cpu"


def _trainings(stem: str, what: str, count: int, train: TrainConfig, share: float = 1.0) -> Work:
    size = train.data.n_train * share * train.epochs
    return Work(stem, what, count, train.model, size)


def plan(stem: str, config: Any, params: Mapping[str, Any]) -> list[Work]:
    """The trainings notebook ``stem`` implies: its config (as ``preflight.check_notebook``
    builds it) and its parameters (``retrain`` of 06/07, ``device``)."""
    device = str(params.get("device", "cpu")).split(":")[0]
    return [replace(w, device=device) for w in _plan(stem, config, params)]


def _plan(stem: str, config: Any, params: Mapping[str, Any]) -> list[Work]:
    if config is None:  # 00: trains a 4-sentence model, seconds
        return []
    if isinstance(config, TrainConfig):  # 01, 02
        return [_trainings(stem, "training", 1, config)]
    study = stem.split("_", 1)[1]
    if study == "pretraining_influence":
        points = config.n_test_points * 2 + 3  # 2 methods per point, the base run, 2 mixtures
        pretrain = config.n_corpus * config.pretrain_epochs
        return [
            Work(stem, "MLM pretrainings", points, "bert-tiny", pretrain),
            _trainings(stem, "fine-tunings", points, config.train, share=0.5),
        ]
    models = len(config.seeds) if getattr(config, "model_per_seed", False) else 1
    works = [
        _trainings(stem, "training" if models == 1 else "trained models", models, config.train)
    ]
    if study in ("cancellation", "layers_and_aggregation"):
        if study == "layers_and_aggregation":
            works.append(_trainings(stem, "training (noisy labels)", 1, config.train))
        if params.get("retrain", True):
            architecture = replace(config.train, init_from=None)  # no distillation to count
            groups = len(set(layer_groups(new_model(architecture)[0]).values()))
            one_method = replace(config, methods=config.methods[:1]).n_retrains
            what, count = f"retrains, {groups} layers", groups * one_method
            sweeps = _trainings(stem, what, count, config.train)
            works.append(replace(sweeps, shared=study != "cancellation"))  # 07 reads 06's
        return works
    share = getattr(config, "alpha", 1.0)
    works.append(_trainings(stem, "retrains", config.n_retrains, config.train, share))
    return works


def rate_key(work: Work) -> str:
    return f"{work.model}@{work.device}"


def trainings_in(cache: Path) -> int:
    """Finished trainings in a cache folder: runs (their ``result.json``) and retrains (a file
    each); what a notebook added is what it trained, the rest it read back."""
    runs = sum(1 for _ in cache.glob("*/*/result.json"))
    return runs + sum(1 for _ in cache.glob("retrain/*/*.pt"))


def measured_rates(timing_file: Path) -> dict[str, float]:
    """Per model and device (``rate_key``), the median wall seconds per example-epoch of the
    notebooks in ``timing_file`` (``record_timing``'s lines) that trained that model alone."""
    if not timing_file.is_file():
        return {}
    by_key: dict[str, list[float]] = {}
    for line in timing_file.read_text().splitlines():
        try:
            entry = json.loads(line)
            if entry["example_epochs"] > 0 and len(entry["keys"]) == 1:
                rate = entry["seconds"] / entry["example_epochs"]
                by_key.setdefault(entry["keys"][0], []).append(rate)
        except (json.JSONDecodeError, KeyError, TypeError, ZeroDivisionError):
            continue  # a line cut short or of another format: not a measurement
    return {key: statistics.median(rates) for key, rates in by_key.items()}


def record_timing(
    timing_file: Path, stem: str, works: list[Work], seconds: float, trained: int
) -> None:
    """Append one notebook's wall time to ``timing_file``, with the example-epochs it trained:
    its planned ones (shared works left out) scaled by ``trained`` (what the cache gained) over
    the planned count, so a rerun read back from the cache measures nothing and is not recorded.
    """
    own = [w for w in works if not w.shared]
    planned = sum(w.count for w in own)
    if trained < 1 or planned < 1:
        return
    size = sum(w.count * w.example_epochs for w in own) * min(trained, planned) / planned
    line = {
        "notebook": stem,
        "keys": sorted({rate_key(w) for w in own}),
        "trained": trained,
        "example_epochs": size,
        "seconds": round(seconds, 1),
    }
    timing_file.parent.mkdir(parents=True, exist_ok=True)
    with open(timing_file, "a") as f:
        f.write(json.dumps(line) + "\n")


def estimate(works: list[Work], rates: Mapping[str, float]) -> float:
    """Seconds for ``works`` at ``rates`` (a model without one: ``DEFAULT_RATES``, else the
    largest known rate); shared works count once, where they are trained."""

    def rate(work: Work) -> float:
        return rates.get(rate_key(work), DEFAULT_RATES.get(work.model, UNKNOWN_RATE))

    return sum(w.count * w.example_epochs * rate(w) for w in works if not w.shared)


def describe(works: list[Work], rates: Mapping[str, float]) -> str:
    """One line per work and a total, for the terminal."""
    lines = [
        f"  {w.notebook[:2]}  {w.count:>7,} {w.what} of {w.model} "
        f"({w.example_epochs:,.0f} example-epochs each): "
        + ("shared with an earlier notebook" if w.shared else f"~{_duration(estimate([w], rates))}")
        for w in works
    ]
    total = sum(w.count for w in works if not w.shared)
    measured = sorted(key for key in {rate_key(w) for w in works} if key in rates)
    source = f"measured here for {measured}" if measured else "2-core CPU defaults"
    lines.append(
        f"  total {total:,} trainings at most: ~{_duration(estimate(works, rates))} "
        f"(rates {source}; cached results are not retrained)"
    )
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} days"
