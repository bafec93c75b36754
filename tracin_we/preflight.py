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

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
OUTPUTS = ("run_dir", "figures_dir", "metrics_path")  # set by reproduce, never by a preset


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


# A preset, checked as a whole before any notebook is (reproduce.load_preset reads it).


def notebook_paths() -> list[Path]:
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def select_notebooks(only: list[str] | None) -> list[Path]:
    """The notebooks whose names start with one of ``only`` (all when ``only`` is empty)."""
    notebooks = notebook_paths()
    if only:
        notebooks = [nb for nb in notebooks if any(nb.stem.startswith(o) for o in only)]
        if not notebooks:
            raise ValueError(f"only={only} matches no notebook in {NOTEBOOKS}")
    return notebooks


def check_preset(config: dict, source: str = "preset") -> None:
    """Every section is ``common``, a notebook's name or a template (``x-...``), and every key is
    a parameter of the notebook it goes to (for ``common``: of at least one notebook)."""
    if not isinstance(config, dict):
        raise ValueError(
            f"{source}: a preset is a mapping of sections, got {type(config).__name__}"
        )
    parameters = {nb.stem: papermill.inspect_notebook(str(nb)) for nb in notebook_paths()}
    declared = {stem: set(params) for stem, params in parameters.items()}
    for section, values in config.items():
        if str(section).startswith("x-"):
            continue
        if section == "notebooks":  # the notebooks this preset runs (default: all)
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise ValueError(f"{source}: notebooks must be a list of name prefixes ('01')")
            select_notebooks(values)
            continue
        if section != "common" and section not in declared:
            raise ValueError(
                f"{source}: section {section!r} is not 'common', a notebook ({sorted(declared)}) "
                "or a template named 'x-...'"
            )
        if not isinstance(values, dict):
            raise ValueError(f"{source}: section {section!r} must be a mapping of parameters")
        allowed = set.union(*declared.values()) if section == "common" else declared[section]
        unknown = sorted(set(values) - allowed)
        where = "any notebook" if section == "common" else section
        if unknown:
            raise ValueError(
                f"{source}: {section}: {unknown} not a parameter of {where}; allowed: "
                f"{sorted(allowed - set(OUTPUTS))}"
            )
        given_outputs = sorted(set(values) & set(OUTPUTS))
        if given_outputs:
            raise ValueError(
                f"{source}: {section}: {given_outputs} are set by reproduce (runs/<preset>/); "
                "remove them"
            )
        targets = parameters.values() if section == "common" else [parameters[section]]
        for key, value in values.items():
            for default in {params[key]["default"] for params in targets if key in params}:
                check_like_default(key, value, default, f"{source}: {section}")


def check_like_default(key: str, value: Any, default: str, where: str) -> None:
    """Refuse ``value`` when the notebook's default (its source text, as papermill reads it) is
    a literal of another kind: a list for a list, a number for a number, a string for a string,
    True/False for a bool; anything where the default is None. Caught here, before the first
    notebook runs, rather than when the notebook that reads it starts."""
    try:
        expected = ast.literal_eval(default)
    except (ValueError, SyntaxError):  # not a literal: nothing to compare with
        return
    if expected is None or value is None:
        return
    kinds = {bool: (bool,), int: (int,), float: (int, float), str: (str,), list: (list, tuple)}
    allowed = kinds.get(type(expected), (type(expected),))
    if isinstance(value, bool) != isinstance(expected, bool) or not isinstance(value, allowed):
        names = " or ".join(kind.__name__ for kind in allowed)
        hint = "; YAML reads 1e-3 as a string: write 0.001" if isinstance(value, str) else ""
        raise ValueError(
            f"{where}: {key}={value!r} has type {type(value).__name__}; {key} must be {names} "
            f"(the notebook's default: {default}{hint})"
        )
