"""One HTML page of a run's executed notebooks (``write_report``): a contents list with run times,
each notebook's cells with their outputs and figures inline, widgets rendered from their saved
state, real stderr shown apart from logs."""

from __future__ import annotations

import copy
import html
from collections.abc import Sequence
from pathlib import Path

from tracin_we.core.persistence import atomic_write

WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"  # a live widget: no state in a report


WIDGET_STATE = "application/vnd.jupyter.widget-state+json"  # saved by papermill (nbclient)


KERNEL_METADATA = ("kernelspec", "language_info")  # the first notebook's, for the highlighting

# A notebook's stderr stream (warnings: nothing failed) is shown as a note; only an error output
# (a traceback) keeps nbconvert's error styling.
STDERR_CLASS = "report-stderr"
STYLE = (
    f"<style>.{STDERR_CLASS} {{background: #fff8e1; border-left: 3px solid #f0ad4e; "
    "padding: 4px 8px; margin: 0; white-space: pre-wrap; font-size: 85%;}</style>"
)


def notebook_title(notebook) -> str:
    """The text of the notebook's first ``#`` heading (its title), else its file name."""
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return notebook.metadata.get("title", "untitled notebook")


def widget_html(model_id: str, state: dict) -> str | None:
    """Static HTML of a saved widget (``state``: the notebook's widget-state ``state`` map): a
    box joins its children, an HTML/Label widget gives its value, a progress widget a
    ``<progress>`` bar, so that a tqdm bar shows how far it got. None for an unknown model."""
    model = state.get(model_id)
    if model is None:
        return None
    name, values = model.get("model_name", ""), model.get("state", {})
    if name.endswith("BoxModel"):
        children = [widget_html(c.removeprefix("IPY_MODEL_"), state) for c in values["children"]]
        return "<span>" + " ".join(c for c in children if c) + "</span>"
    if name == "HTMLModel":
        return str(values.get("value", ""))  # already HTML
    if name.endswith("ProgressModel"):
        return (
            f'<progress value="{values.get("value", 0)}" max="{values.get("max", 100)}"></progress>'
        )
    text = values.get("value", values.get("description", ""))
    return html.escape(str(text)) if text else ""


def _report_cells(notebook, anchor: str) -> list:
    """The notebook's cells for the report: ids made unique across notebooks, an anchor before
    the first cell, widget views (tqdm bars: no live kernel in a report) replaced by their
    saved final state as static HTML, or by their text fallback without one, and stderr
    streams shown as notes (``STDERR_CLASS``), apart from errors."""
    import nbformat
    from nbconvert.filters import ansi2html

    saved = notebook.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
    cells = [nbformat.v4.new_markdown_cell(f'<a id="{anchor}"></a>', id=f"{anchor}-anchor")]
    for i, cell in enumerate(copy.deepcopy(notebook.cells)):
        cell["id"] = f"{anchor}-{i}"
        outputs = cell.get("outputs", [])
        for j, output in enumerate(outputs):
            if output.get("output_type") == "stream" and output.get("name") == "stderr":
                text = ansi2html("".join(output.get("text", "")))  # escapes HTML too
                note = f'<pre class="{STDERR_CLASS}">{text}</pre>'
                outputs[j] = nbformat.v4.new_output("display_data", data={"text/html": note})
                continue
            view = output.get("data", {}).pop(WIDGET_VIEW, None)
            static = view and widget_html(view.get("model_id", ""), saved)
            if static:
                output["data"]["text/html"] = static
        cells.append(cell)
    return cells


def notebooks_html(paths: Sequence[str | Path], title: str) -> str:
    """One HTML page of the executed notebooks at ``paths``, in that order: a contents list
    (each notebook's title and papermill run time, linked), then every notebook with its
    outputs; figures are inline PNG data URIs, so the page is self-contained."""
    import nbformat
    from nbconvert import HTMLExporter

    if not paths:
        raise ValueError("paths is empty: no executed notebook to put in a report")
    contents, cells, kernel = [], [], {}
    for path in map(Path, paths):
        notebook = nbformat.read(path, as_version=4)
        kernel = kernel or {
            k: notebook.metadata[k] for k in KERNEL_METADATA if k in notebook.metadata
        }
        run = notebook.metadata.get("papermill", {})
        duration = run.get("duration")
        status = "failed" if run.get("exception") else f"{duration:.0f} s" if duration else "run"
        contents.append(f"- [{notebook_title(notebook)}](#{path.stem}) ({status})")
        cells += _report_cells(notebook, path.stem)
    header = nbformat.v4.new_markdown_cell(
        f"# {title}\n\n" + "\n".join(contents), id="report-contents"
    )
    report = nbformat.v4.new_notebook(cells=[header, *cells])
    report.metadata.update(kernel)
    exporter = HTMLExporter(template_name="lab")
    body, _ = exporter.from_notebook_node(report, resources={"metadata": {"name": title}})
    return body.replace("</head>", STYLE + "</head>", 1)


def write_report(paths: Sequence[str | Path], path: str | Path, title: str) -> Path:
    """``notebooks_html(paths, title)`` written atomically to ``path``; returns ``path``."""
    html = notebooks_html(paths, title)
    path = Path(path)
    atomic_write(path, lambda tmp: tmp.write_text(html, encoding="utf-8"))
    return path
