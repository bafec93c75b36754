"""Run the notebooks in order with papermill under a preset: ``python -m tracin_we.reproduce``.

A preset is a YAML file in ``presets/`` with a ``common`` section (parameters every notebook shares,
such as the data and training recipe) and one section per notebook (``01_train``, ...). Each
notebook receives the parameters of its ``parameters`` cell that the preset sets, plus where to
write: executed copies and metrics go to ``runs/<preset>/``, figures to ``figures/`` for the
``default`` preset and to ``runs/<preset>/figures/`` otherwise.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import papermill
import yaml

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
PRESETS = REPO / "presets"

log = logging.getLogger(__name__)


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS.glob("*.yaml"))


def load_preset(name: str) -> dict:
    path = PRESETS / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"preset={name!r} is unknown; allowed: {available_presets()}")
    return yaml.safe_load(path.read_text()) or {}


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


def reproduce(
    preset: str = "default",
    only: list[str] | None = None,
    runs: Path | None = None,
    figures_dir: Path | None = None,
) -> list[Path]:
    """Execute ``notebooks/NN_*.ipynb`` in order (or those whose names start with ``only``) and
    return the executed copies. Every notebook runs with the repository root as working folder."""
    config = load_preset(preset)
    run_dir = (runs or REPO / "runs") / preset
    figures_dir = figures_dir or (REPO / "figures" if preset == "default" else run_dir / "figures")
    notebooks = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if only:
        notebooks = [nb for nb in notebooks if any(nb.stem.startswith(o) for o in only)]
        if not notebooks:
            raise ValueError(f"only={only} matches no notebook in {NOTEBOOKS}")
    executed = []
    for notebook in notebooks:
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
        log.info("%s done in %.0f s → %s", notebook.name, time.perf_counter() - started, output)
        executed.append(output)
    return executed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="default", help=f"one of {available_presets()}")
    parser.add_argument("--only", nargs="*", help="notebook name prefixes, e.g. 01 02")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    started = time.perf_counter()
    reproduce(args.preset, args.only)
    log.info(
        "reproduction (%s) finished in %.1f min", args.preset, (time.perf_counter() - started) / 60
    )


if __name__ == "__main__":
    main()
