"""Run the notebooks in order with papermill under a preset: ``python -m tracin_we.reproduce``.

A preset is a YAML file: ``common`` (parameters every notebook shares: data, recipe), one section
per notebook (``01_train``, ...), optionally ``notebooks`` (the name prefixes it runs; default:
all), and templates named ``x-...`` (ignored; for YAML anchors). A key given twice in one mapping
is an error (YAML would keep the last). ``--preset NAME`` reads ``presets/NAME.yaml``, ``--preset
file.yaml`` that file. Each notebook receives the parameters of its ``parameters`` cell that the
preset sets, plus where to write: ``runs/<preset>/`` for executed copies and metrics, and for
figures the committed folder of a built-in preset (``COMMITTED_FIGURES``), else
``runs/<preset>/figures/``. ``--runs DIR`` puts all of it, and the cache, under ``DIR``. Before
anything runs, every selected notebook's parameters are checked (``preflight.check_notebook``):
an undeclared key, a value of the wrong type or one its config refuses is an error naming the
preset file, the notebook and the parameter. After the notebooks (also when one fails),
``runs/<preset>/report.html`` collects the executed notebooks with their figures inline.

``--params-for 03`` prints, as flat YAML, exactly the parameters that ``reproduce`` would give
notebook ``03_*``, for a papermill run by hand::

    python -m tracin_we.reproduce --preset default --params-for 03 > p.yaml
    papermill notebooks/03_case_deletion.ipynb out.ipynb -f p.yaml
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import papermill
import yaml

from tracin_we.core.persistence import CACHE_ENV
from tracin_we.experiments.cost import (
    Work,
    describe,
    estimate,
    measured_rates,
    plan,
    record_timing,
    trainings_in,
)
from tracin_we.preflight import (
    REPO,
    check_notebook,
    check_preset,
    notebook_defaults,
    notebook_paths,
    select_notebooks,
)
from tracin_we.report.html import write_report

PRESETS = REPO / "presets"
# The built-in presets whose figures are committed, and where (`make reproduce`, `make pretrained`).
COMMITTED_FIGURES = {"default": "figures", "pretrained": "figures/pretrained"}
LOG_FORMAT = "%(asctime)s %(message)s"
TIMING = "timing.jsonl"  # under runs/: each notebook's seconds and size, for later estimates
ASK_ABOVE_SECONDS = 2 * 3600  # a run estimated longer starts only with --yes
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # a preset name: also its folder under runs/

log = logging.getLogger(__name__)


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS.glob("*.yaml"))


def preset_path(preset: str | Path) -> Path:
    """``presets/<preset>.yaml`` for a name, or ``preset`` itself for a path ending in
    ``.yaml``/``.yml``. A name is letters, digits, ``_``, ``-`` and ``.``: no folders."""
    text = str(preset)
    if text.endswith((".yaml", ".yml")):
        path = Path(text).expanduser()
        if not path.is_file():
            raise ValueError(f"preset={text!r}: no such file")
        name = path.stem
        if not NAME.fullmatch(name):
            raise ValueError(
                f"preset={text!r}: its name {name!r} names its folder under runs/; use letters, "
                "digits, '_', '-' and '.'"
            )
        builtin = PRESETS / f"{name}.yaml"
        if name in available_presets() and path.resolve() != builtin.resolve():
            raise ValueError(
                f"preset={text!r} has the name of the built-in preset {name!r} and would write "
                f"over runs/{name}; rename the file"
            )
        return path
    if not NAME.fullmatch(text) or ".." in text:
        raise ValueError(
            f"preset={text!r} is neither a preset name (one of {available_presets()}) nor a path "
            "to a .yaml file"
        )
    path = PRESETS / f"{text}.yaml"
    if not path.is_file():
        raise ValueError(f"preset={text!r} is unknown; allowed: {available_presets()} or a path")
    return path


def preset_name(preset: str | Path) -> str:
    """The folder under ``runs/`` that a preset writes to: its file's stem."""
    return preset_path(preset).stem


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor` may repeat
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if not isinstance(key, Hashable):  # SafeLoader refuses it below, naming the line
                continue
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} is given twice in one mapping (lines {seen[key]} and {line}); "
                    "YAML would keep only the last: remove one",
                    key_node.start_mark,
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> Any:
    """The YAML document in ``path``; a syntax error or a repeated key is a ``ValueError``
    naming the file, the line and the column."""
    try:
        return yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # a SafeLoader: no objects
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ValueError(f"preset {str(path)!r}{where}: {problem}") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"preset {str(path)!r} is not UTF-8 text: {error}") from None


def load_preset(preset: str | Path) -> dict:
    """The preset's sections, checked against the notebooks' parameters (``check_preset``)."""
    path = preset_path(preset)
    config = read_yaml(path)
    config = {} if config is None else config
    check_preset(config, source=str(path))
    return config


def notebook_parameters(preset: dict, notebook: Path, run_dir: Path, figures_dir: Path) -> dict:
    """The preset's parameters that ``notebook`` declares, plus its output locations."""
    declared = papermill.inspect_notebook(str(notebook))
    merged = dict(preset.get("common", {})) | dict(preset.get(notebook.stem, {}))
    merged |= {
        "run_dir": str(run_dir),
        "figures_dir": str(figures_dir),
        "metrics_path": str(run_dir / "metrics" / f"{notebook.stem}.json"),
    }
    return {k: v for k, v in merged.items() if k in declared}


def preset_notebooks(config: dict, only: list[str] | None) -> list[Path]:
    """The notebooks a run selects: ``only`` (``--only``), else the preset's ``notebooks``."""
    return select_notebooks(only or config.get("notebooks"))


def output_dirs(
    preset: str | Path, runs: Path | None = None, figures_dir: Path | None = None
) -> tuple[Path, Path]:
    """``(run_dir, figures_dir)``: ``<runs>/<name>/`` (``runs``: the repository's ``runs/``) and
    the committed figures' folder (``COMMITTED_FIGURES``) for a built-in preset that has one, run
    into the repository's ``runs/``; ``<runs>/<name>/figures/`` for any other."""
    path = preset_path(preset)
    run_dir = (Path(runs).absolute() if runs else REPO / "runs") / path.stem  # cwd: the repo
    builtin = path.resolve() == (PRESETS / f"{path.stem}.yaml").resolve()
    committed = COMMITTED_FIGURES.get(path.stem) if builtin and runs is None else None
    return run_dir, figures_dir or (REPO / committed if committed else run_dir / "figures")


def params_for(preset: str | Path, prefix: str, runs: Path | None = None) -> dict:
    """The parameters ``reproduce`` gives the one notebook whose name starts with ``prefix``
    (their values are checked when that notebook runs: the device may be another machine's)."""
    notebooks = select_notebooks([prefix])
    if len(notebooks) != 1:
        raise ValueError(f"params_for={prefix!r} matches {[nb.name for nb in notebooks]}; give one")
    run_dir, figures_dir = output_dirs(preset, runs)
    return notebook_parameters(load_preset(preset), notebooks[0], run_dir, figures_dir)


def check_notebooks(
    config: dict, notebooks: list[Path], run_dir: Path, figures_dir: Path, source: str
) -> dict[str, list[Work]]:
    """Build and check what each of ``notebooks`` builds from the parameters it will receive
    (``preflight.check_notebook``), all before the first runs; a ``ValueError`` naming
    ``source``, the notebook and the parameter otherwise. Returns what each will train
    (``cost.plan``), by notebook name."""
    plans = {}
    for notebook in notebooks:
        params = notebook_parameters(config, notebook, run_dir, figures_dir)
        try:
            built = check_notebook(notebook, params)
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None
        plans[notebook.stem] = plan(notebook.stem, built, notebook_defaults(notebook) | params)
    return plans


def check_cost(plans: dict[str, list[Work]], runs: Path, yes: bool) -> None:
    """Log what the run will train and about how long it takes (``cost.describe``, at the rates
    ``runs/timing.jsonl`` measured); over ``ASK_ABOVE_SECONDS``, a ``ValueError`` unless
    ``yes``."""
    works = [w for notebook_works in plans.values() for w in notebook_works]
    trained = {(w.count, w.model, w.example_epochs) for w in works if not w.shared}
    works = [  # 07's sweeps are 06's only when 06 plans the same ones
        replace(w, shared=(w.count, w.model, w.example_epochs) in trained) if w.shared else w
        for w in works
    ]
    rates = measured_rates(runs / TIMING)
    seconds = estimate(works, rates)
    log.info("this run trains, at most:\n%s", describe(works, rates))
    if seconds > ASK_ABOVE_SECONDS and not yes:
        raise ValueError(
            f"this run is estimated at {seconds / 3600:,.1f} h (above "
            f"{ASK_ABOVE_SECONDS / 3600:.0f} h): pass --yes to start it, or --only a part; "
            "rates measured here replace the defaults once a notebook has run (--only 01)"
        )


def run_report(run_dir: Path, name: str) -> Path | None:
    """Write ``<run_dir>/report.html`` from the executed copies of this repository's notebooks
    in ``<run_dir>/notebooks`` (all of them, not only the last ``--only``), in notebook order;
    None when there is none yet."""
    executed = [run_dir / "notebooks" / nb.name for nb in notebook_paths()]
    executed = [path for path in executed if path.is_file()]
    if not executed:
        return None
    return write_report(executed, run_dir / "report.html", f"tracin-we · preset {name}")


def run_notebook(
    config: dict, notebook: Path, run_dir: Path, figures_dir: Path
) -> tuple[Path, float]:
    """Execute ``notebook`` with its parameters from ``config``; its executed copy and the
    seconds it took."""
    output = run_dir / "notebooks" / notebook.name
    output.parent.mkdir(parents=True, exist_ok=True)
    params = notebook_parameters(config, notebook, run_dir, figures_dir)
    started = time.perf_counter()
    log.info("%s with %s", notebook.name, params)
    papermill.execute_notebook(
        str(notebook),
        str(output),
        parameters=params,
        cwd=str(REPO),
        kernel_name="python3",
        progress_bar=False,
    )
    seconds = time.perf_counter() - started
    log.info("%s done in %.0f s → %s", notebook.name, seconds, output)
    return output, seconds


def notebook_cache() -> Path:
    """The cache the notebooks use: ``$TRACIN_WE_CACHE``, else the repository's (their cwd)."""
    return Path(os.environ.get(CACHE_ENV) or REPO / "runs" / "cache")


@contextmanager
def cache_under(runs: Path | None) -> Iterator[None]:
    """With ``runs``, ``$TRACIN_WE_CACHE`` (which the notebooks' kernels inherit) is
    ``<runs>/cache`` while the block runs, unless it names a cache already. It sets the process's
    environment: not for two ``reproduce`` calls in threads at once."""
    if runs is None or os.environ.get(CACHE_ENV):
        yield
        return
    os.environ[CACHE_ENV] = str(Path(runs).absolute() / "cache")
    try:
        yield
    finally:
        os.environ.pop(CACHE_ENV, None)


def reproduce(
    preset: str | Path = "default",
    only: list[str] | None = None,
    runs: Path | None = None,
    figures_dir: Path | None = None,
    plans: dict[str, list[Work]] | None = None,
) -> list[Path]:
    """Execute ``notebooks/NN_*.ipynb`` in order (or those whose names start with ``only``) and
    return the executed copies. Every notebook runs with the repository root as working folder;
    with ``runs``, its cache is ``<runs>/cache`` (unless ``$TRACIN_WE_CACHE`` names one), so
    nothing is written into the repository. Each notebook's time and planned size (``plans``,
    else ``check_notebooks``') are appended to ``<runs>/timing.jsonl``, the rates of later
    estimates. Then (also after a failed notebook, whose copy shows the error) ``run_report``
    writes ``<run_dir>/report.html``."""
    config = load_preset(preset)
    run_dir, figures_dir = output_dirs(preset, runs, figures_dir)
    notebooks = preset_notebooks(config, only)
    if plans is None:  # main() made them already, to report a bad value as a usage error
        plans = check_notebooks(config, notebooks, run_dir, figures_dir, str(preset_path(preset)))
    executed = []
    try:
        with cache_under(runs):
            for notebook in notebooks:
                before = trainings_in(notebook_cache())
                output, seconds = run_notebook(config, notebook, run_dir, figures_dir)
                trained = trainings_in(notebook_cache()) - before
                works = plans[notebook.stem]
                record_timing(run_dir.parent / TIMING, notebook.stem, works, seconds, trained)
                executed.append(output)
    finally:
        report = run_report(run_dir, preset_name(preset))
        if report is not None:
            log.info("report of the executed notebooks → %s", report)
    return executed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tracin_we.reproduce", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--preset", default="default", help=f"one of {available_presets()}, or a .yaml file"
    )
    parser.add_argument("--only", nargs="*", help="notebook name prefixes, e.g. 01 02")
    parser.add_argument(
        "--runs",
        metavar="DIR",
        type=Path,
        help="write executed notebooks, metrics, figures and the cache under DIR (default: the "
        "repository's runs/)",
    )
    parser.add_argument(
        "--yes",
        action="store_true",
        help=f"start even when the estimate exceeds {ASK_ABOVE_SECONDS // 3600} h",
    )
    parser.add_argument(
        "--params-for",
        metavar="PREFIX",
        help="print one notebook's parameters as flat YAML (for papermill -f) and run nothing",
    )
    args = parser.parse_args(argv)
    try:
        if args.params_for is not None:
            params = params_for(args.preset, args.params_for, runs=args.runs)
            sys.stdout.write(yaml.safe_dump(params, sort_keys=False, default_flow_style=None))
            return
        # A bad preset, prefix or parameter fails here, before anything runs.
        config = load_preset(args.preset)
        run_dir, figures_dir = output_dirs(args.preset, args.runs)
        notebooks = preset_notebooks(config, args.only)
        source = str(preset_path(args.preset))
        plans = check_notebooks(config, notebooks, run_dir, figures_dir, source)
        logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, datefmt="%H:%M:%S")
        check_cost(plans, run_dir.parent, args.yes)
    except ValueError as error:
        parser.error(str(error))
    started = time.perf_counter()
    reproduce(args.preset, args.only, runs=args.runs, plans=plans)
    log.info(
        "reproduction (%s) finished in %.1f min",
        preset_name(args.preset),
        (time.perf_counter() - started) / 60,
    )


if __name__ == "__main__":
    main()
