"""The package's shape: folders by role on import floors, no cycles, small modules.

Floors, lowest first: ``core`` (data, models, persistence, parameters) < ``influence`` (the
engine) < ``training`` < ``experiments`` < ``report`` < the top (``reproduce``, ``preflight``) <
``explore`` (the explorer page, which reads presets as ``reproduce`` does; nothing below imports
it or its widgets).
A module may import from its own floor and the floors below, never from above, and no chain of
imports (late ones inside functions included) leads back to where it started."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import papermill
import pytest

from tracin_we.core.shared_parameters import outputs, shared, sync

PACKAGE = Path(__file__).resolve().parents[1] / "tracin_we"
FLOORS = ["core", "influence", "training", "experiments", "report"]
TOP = len(FLOORS)
ABOVE_TOP = ("explore",)
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def floor(module: str) -> int:
    parts = module.split(".")
    if parts[1:] and parts[1] in ABOVE_TOP:
        return TOP + 1
    return FLOORS.index(parts[1]) if len(parts) > 2 or (parts[1:] and parts[1] in FLOORS) else TOP


def imports(module: str) -> set[str]:
    """The package's modules that ``module`` imports, anywhere in its code."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            submodules = [f"{node.module}.{a.name}" for a in node.names]
            names = [m for m in submodules if m in MODULES] or [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {name for name in names if name in MODULES and name != module}
    return found


GRAPH = {module: imports(module) for module in MODULES}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_import_reaches_up_a_floor(module):
    above = sorted(m for m in GRAPH[module] if floor(m) > floor(module))
    assert not above, f"{module} (floor {floor(module)}) imports {above} from above"


def test_no_import_cycle():
    def cycle_through(start: str) -> list[str] | None:
        stack, seen = [(start, [start])], {start}
        while stack:
            node, path = stack.pop()
            for nxt in sorted(GRAPH[node]):
                if nxt == start:
                    return [*path, start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
        return None

    cycles = [cycle for module in MODULES if (cycle := cycle_through(module))]
    assert not cycles, " -> ".join(cycles[0])


def test_floors_are_folders_and_the_top_is_small():
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert set(FLOORS) <= folders and len(folders) >= 4
    top = [p.name for p in PACKAGE.glob("*.py")]
    assert len(top) <= 6, top


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_over_400_lines(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines"


# The front door: a short README whose links all resolve, as do those of the docs it points to.

REPO = PACKAGE.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "benchmarks/README.md"]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(markdown: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings."""
    headings = re.findall(r"^#+ (.+)$", markdown.read_text(), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_readme_is_a_front_door():
    assert len((REPO / "README.md").read_text().splitlines()) <= 150


@pytest.mark.parametrize("markdown", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(markdown):
    for target in LINK.findall(markdown.read_text()):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (markdown.parent / path).resolve() if path else markdown
        assert resolved.exists(), f"{markdown.name}: {target} does not exist"
        if anchor and resolved.suffix == ".md":
            assert anchor in anchors(resolved), f"{markdown.name}: no heading #{anchor}"


NOTEBOOKS = sorted((PACKAGE.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_shared_parameters_are_written_once(notebook):
    """Each parameters cell is its rendering from ``core.shared_parameters``: a default or comment
    changed in one notebook alone fails here (fix: change the module and run it)."""
    assert sync(notebook, write=False), (
        f"{notebook.name}'s parameters cell differs from tracin_we/core/shared_parameters.py; "
        "change it there and run `python -m tracin_we.core.shared_parameters`"
    )


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_papermill_reads_every_shared_parameter(notebook):
    """Papermill parses each line of the cell on its own (a comment holding ``=`` hides the
    line): every rendered name must reach its parameter list."""
    declared = papermill.inspect_notebook(str(notebook))
    written = [name for name, _, _ in (*shared(notebook.stem), *outputs(notebook.stem))]
    assert set(written) <= set(declared)


def test_a_drifted_default_is_caught_and_rewritten(tmp_path):
    original = next(p for p in NOTEBOOKS if p.stem == "03_case_deletion")
    copy = tmp_path / original.name
    copy.write_text(original.read_text().replace('"lr = 0.05 ', '"lr = 0.5 ', 1))
    assert copy.read_text() != original.read_text()
    assert not sync(copy, write=False)
    assert not sync(copy, write=True) and sync(copy, write=False)
    assert copy.read_text() == original.read_text()
    assert [name for name, _, _ in shared("09_pretraining_influence")] == []
    assert dict((n, d) for n, d, _ in shared("05_fixing"))["epochs"] == "4"
