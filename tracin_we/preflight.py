"""Each notebook's parameters, checked before the first notebook runs.

A notebook builds its config from its parameters (``build_config(DeletionConfig, globals())``),
which checks every field and the ranges that depend on other fields (each k < n_train,
checkpoints within the epochs, test points within the test split, ...), then checks its other
parameters with the functions its ``Contract`` names here. ``reproduce`` runs the same checks for
every selected notebook, on the parameters that notebook will receive over its own defaults, so a
bad value fails before anything trains and the error names the notebook and the parameter: a
typo in 03's ``methods`` under ``--only 01 03`` fails before 01 has trained.
"""

from __future__ import annotations

import ast
import inspect
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import papermill

from tracin_we.core.params import check_int, flat_fields, from_params
from tracin_we.experiments.by_hand import check_hand_parameters
from tracin_we.experiments.cancellation import check_variant
from tracin_we.experiments.deletion import DeletionConfig
from tracin_we.experiments.fixing import FixingConfig
from tracin_we.experiments.lds import LDSConfig
from tracin_we.experiments.noise import check_fraction, noisy_train_config
from tracin_we.experiments.overlap import check_candidates
from tracin_we.experiments.pretrain_study import PretrainStudyConfig
from tracin_we.influence.options import check_device
from tracin_we.report.explain import check_listing
from tracin_we.training.recipe import TrainConfig


def check_threads(torch_threads: int) -> None:
    """``torch_threads``, the torch threads of the notebook's own process, is a positive int."""
    check_int("torch_threads", torch_threads, 1)


@dataclass(frozen=True)
class Contract:
    """What a notebook builds from its parameters: ``build_config(config, globals(),
    **overrides)`` (``config`` None: it builds none), then each of ``checks``, called with the
    parameters its signature names (``config``: the built config). ``tests/test_preflight.py``
    reads each notebook's code and holds it to its contract."""

    config: type | None
    checks: tuple[Callable[..., Any], ...] = ()
    overrides: Mapping[str, Any] = field(default_factory=dict)


CONTRACTS: dict[str, Contract] = {
    "00_tracin_we_by_hand": Contract(None, (check_hand_parameters,)),
    "01_train": Contract(TrainConfig),
    "02_influence": Contract(TrainConfig, (check_listing,)),
    "03_case_deletion": Contract(DeletionConfig),
    "04_no_overlap": Contract(DeletionConfig, (check_candidates,)),
    "05_fixing": Contract(FixingConfig),
    "06_cancellation": Contract(
        DeletionConfig, (check_variant,), {"methods": ["tracin-we", "tracin-last"]}
    ),
    "07_layers_and_aggregation": Contract(
        DeletionConfig,
        (check_fraction, check_variant, noisy_train_config),
        {"methods": ["tracin-we"], "label_noise": 0.0},
    ),
    "08_lds": Contract(LDSConfig),
    "09_pretraining_influence": Contract(PretrainStudyConfig),
}
# Parameters of many notebooks that only reproduce checks early (the notebook's own use of them
# fails plainly enough): the torch device and the notebook process's thread count.
RUNTIME_CHECKS = {"device": check_device, "torch_threads": check_threads}


def notebook_defaults(notebook: str | os.PathLike) -> dict[str, Any]:
    """The literal defaults of a notebook's ``parameters`` cell (papermill reads their source)."""
    defaults = {}
    for name, spec in papermill.inspect_notebook(str(notebook)).items():
        try:
            defaults[name] = ast.literal_eval(spec["default"])
        except (ValueError, SyntaxError):  # not a literal: the notebook computes it
            continue
    return defaults


def check_notebook(notebook: str | os.PathLike, given: Mapping[str, Any]) -> Any:
    """Build and check what ``notebook`` builds from ``given`` over its defaults, as it will when
    it runs; returns its config (None for a notebook that builds none). A bad value is a
    ``ValueError`` that starts with the notebook's name."""
    stem = Path(notebook).stem
    if stem not in CONTRACTS:
        raise ValueError(f"{stem}: no parameter contract in tracin_we.preflight.CONTRACTS")
    contract, params = CONTRACTS[stem], notebook_defaults(notebook) | dict(given)
    try:
        for name, check in RUNTIME_CHECKS.items():
            if name in params:
                check(params[name])
        config = None
        if contract.config is not None:
            fields = flat_fields(contract.config)
            picked = {k: v for k, v in params.items() if k in fields}
            config = from_params(contract.config, picked | dict(contract.overrides))
        for check in contract.checks:
            names = inspect.signature(check).parameters
            check(**{name: config if name == "config" else params[name] for name in names})
    except ValueError as error:
        raise ValueError(f"{stem}: {error}") from None
    except (TypeError, KeyError) as error:  # a value of a type no check expected (None, a list)
        raise ValueError(f"{stem}: a parameter has a value of the wrong type: {error}") from None
    return config
