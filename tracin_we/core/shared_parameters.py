"""The parameters the notebooks share, each written once: here.

Every notebook's ``parameters`` cell holds its smoke sizes (``presets/smoke.yaml`` overrides
none), so that a bare ``papermill`` run is quick. Notebooks 01-08 open that cell with the same task
and recipe parameters (``SHARED``, with a notebook's own values in ``OVERRIDES``), and every
notebook but 00 closes it with where it runs and writes (``OUTPUTS``). Papermill reads a
notebook's defaults from the cell's source, so the cells hold copies: ``cell(notebook)`` renders
one, ``python -m tracin_we.core.shared_parameters`` rewrites the notebooks' cells from this
module, and ``tests/test_layout.py`` fails when a cell differs from its rendering.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

# name, default (Python source), comment
Line = tuple[str, str, str]

HEADER = "# Smoke sizes: a bare run takes seconds to a minute. presets/*.yaml set the real runs."
SHARED: tuple[Line, ...] = (
    ("dataset", '"ag_news"', '"ag_news", "toxicity", "mnli", a CSV/TSV/JSONL/parquet file or '
     "folder, or a hub name"),
    ("model", '"bert-tiny"', '"bert-tiny", "cnn", "minilm-l6" (pretrained, offline), or a '
     "Hugging Face model name/path"),
    ("pretrained", "False", "load pretrained weights (minilm-l6's; bert-tiny's when the hub "
     "answers)"),
    ("embedding_init", "None", 'cnn/bert-tiny: "minilm-l6" starts the word embeddings from '
     "MiniLM's, PCA-projected; None: random"),
    ("init_from", "None", 'bert-tiny: "distilled:minilm-l6" (MiniLM distilled, cached), or a '
     "pretraining run folder"),
    ("n_train", "120", "training examples (stratified sample)"),
    ("n_val", "40", "validation examples"),
    ("n_test", "40", "test examples"),
    ("max_length", "32", "tokens per text"),
    ("epochs", "2", "paper, AG News: 10"),
    ("optimizer", '"sgd"', 'paper: "sgd"; "adam" trains a randomly initialised BERT-tiny'),
    ("lr", "0.05", "paper, AG News: 2e-2"),
    ("momentum", "0.9", "paper: 0.9; Adam uses it as beta1"),
    ("batch_size", "16", "mini-batch size"),
    ("checkpoint_epochs", "[1, 2]", "TracIn checkpoints saved after these epochs"),
    ("seed", "0", "data sample, init, batch order"),
    ("data_dir", "None", "built-in tasks' local folder; None: $TRACIN_WE_DATA_DIR, else the hub"),
    ("dataset_config", "None", 'hub datasets: the configuration name ("mnli" of "nyu-mll/glue")'),
    ("split_names", "None", "[train, test] hub splits or file prefixes; one name: test drawn "
     "from it"),
    ("text_columns", "None", 'your data: [text column] or two for pairs; None: "text"'),
    ("label_column", "None", 'your data: the label column; None: "label"'),
    ("label_names", "None", "your data: class names in class order; None: read from the data"),
    ("tokenizer", "None", "a name/folder; None: bert-base-uncased (shipped), or a HF model's own"),
)  # fmt: skip

_CNN = {"model": ('"cnn"', 'the authors\' CNN: a retrain takes seconds; "bert-tiny" works too')}
_ADAM = {
    "optimizer": ('"adam"', 'paper: "sgd"; Adam trains the randomly initialised CNN faster'),
    "lr": ("0.01", "Adam learning rate"),
}
OVERRIDES: dict[str, dict[str, tuple[str, str]]] = {
    "01_train": {},
    "02_influence": {},
    "03_case_deletion": _CNN,
    "04_no_overlap": _CNN | _ADAM | {"epochs": ("2", "see presets/default.yaml")},
    "05_fixing": _CNN
    | _ADAM
    | {
        "epochs": ("4", "confident enough to make mistakes: p(true class) 0.3 to 0.7"),
        "checkpoint_epochs": ("[3, 4]", "TracIn checkpoints saved after these epochs"),
    },
    "06_cancellation": _CNN,
    "07_layers_and_aggregation": _CNN,
    "08_lds": _CNN,
}


def outputs(stem: str) -> tuple[Line, ...]:
    """Where notebook ``stem`` runs and writes (``reproduce`` sets the last three); () for 00,
    which runs on the CPU and writes its metrics only."""
    if stem == "00_tracin_we_by_hand":
        return ()
    return (
        ("device", '"cpu"', '"cpu" or "cuda"'),
        ("run_dir", '"runs/notebook"', "executed notebooks and metrics (reproduce: runs/<preset>)"),
        ("figures_dir", '"runs/notebook/figures"', "where figures are written (make reproduce: "
         "figures/)"),
        ("metrics_path", f'"runs/notebook/metrics/{stem}.json"', "recorded metrics (read by the "
         "tests)"),
    )  # fmt: skip


def render(lines: tuple[Line, ...] | list[Line]) -> list[str]:
    return [f"{name} = {default}  # {comment}" for name, default, comment in lines]


def shared(stem: str) -> tuple[Line, ...]:
    """``SHARED`` with notebook ``stem``'s ``OVERRIDES``; () for a notebook outside them."""
    if stem not in OVERRIDES:
        return ()
    own = OVERRIDES[stem]
    return tuple((name, *own.get(name, (default, comment))) for name, default, comment in SHARED)


def cell(stem: str, source: str) -> str:
    """The parameters cell of notebook ``stem``, whose current cell is ``source``: its shared
    lines rendered from this module around the lines that are its own, in their order."""
    common = shared(stem)
    tail = outputs(stem)
    written = {name for name, _, _ in (*common, *tail)}
    own = [line for line in source.splitlines() if line != HEADER]
    own = [line for line in own if _assigned(line) not in written or not line]
    own = "\n".join(own).replace("\n\n\n", "\n\n").strip("\n").splitlines()
    parts = [[HEADER, *render(common)]] if common else []
    if own or tail:
        parts.append([*own, *render(tail)])
    return "\n\n".join("\n".join(p) for p in parts)


def _assigned(line: str) -> str | None:
    """The name a one-line assignment binds; None for anything else."""
    try:
        (node,) = ast.parse(line).body
    except (SyntaxError, ValueError):
        return None
    if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
        return node.targets[0].id
    return None


def parameters_cell(notebook: dict) -> dict:
    """The notebook's one cell tagged ``parameters``."""
    (found,) = [c for c in notebook["cells"] if "parameters" in c["metadata"].get("tags", [])]
    return found


def sync(path: Path, write: bool) -> bool:
    """Whether ``path``'s parameters cell equals its rendering; with ``write``, make it so."""
    notebook = json.loads(path.read_text())
    target = parameters_cell(notebook)
    source = "".join(target["source"])
    wanted = cell(path.stem, source)
    if source == wanted:
        return True
    if write:
        lines = wanted.split("\n")
        target["source"] = [line + "\n" for line in lines[:-1]] + [lines[-1]]
        path.write_text(json.dumps(notebook, indent=1, ensure_ascii=False) + "\n")
    return False


def main(argv: list[str]) -> int:
    """Rewrite the notebooks' parameters cells from this module (``--check``: only report)."""
    write = "--check" not in argv
    notebooks = sorted((Path(__file__).parents[2] / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    stale = [p.name for p in notebooks if not sync(p, write)]
    verb = "rewrote" if write else "differ from tracin_we/core/shared_parameters.py"
    print(f"{verb}: {stale}" if stale else "every parameters cell is in sync")
    return 1 if stale and not write else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
