"""The HTML report of executed notebooks (html.notebooks_html, reproduce.run_report), built
from small hand-made executed notebooks; test_notebooks renders the smoke run's report."""

from __future__ import annotations

import base64
import io
import re

import matplotlib.pyplot as plt
import nbformat
import pytest

from tests import browser
from tracin_we import reproduce
from tracin_we.report.html import (
    STDERR_CLASS,
    WIDGET_STATE,
    WIDGET_VIEW,
    notebooks_html,
    write_report,
)

INLINE_PNG = 'src="data:image/png;base64,'  # an inline figure (the page has other PNGs)
KERNEL = {"name": "python3", "display_name": "Python 3", "language": "python"}


def png_output(colour: str) -> nbformat.NotebookNode:
    """A display_data output holding a small PNG figure filled with ``colour``."""
    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.bar([0, 1], [1, 2], color=colour)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    data = {"image/png": base64.b64encode(buffer.getvalue()).decode(), "text/plain": "<Figure>"}
    return nbformat.v4.new_output("display_data", data=data)


def executed_notebook(path, title: str, figures: list[str], progress: bool = False):
    """An executed notebook at ``path``: a ``# title`` cell, one code cell per figure colour,
    and with ``progress`` a tqdm-like widget whose saved state is a finished bar."""
    cells = [nbformat.v4.new_markdown_cell(f"# {title}\n\nSome text.")]
    for colour in figures:
        cell = nbformat.v4.new_code_cell("fig = plot()", execution_count=1)
        cell.outputs = [png_output(colour)]
        cells.append(cell)
    notebook = nbformat.v4.new_notebook(cells=cells, metadata={"kernelspec": KERNEL})
    notebook.metadata["papermill"] = {"duration": 12.3, "exception": None}
    if progress:
        view = {"model_id": "box", "version_major": 2, "version_minor": 0}
        data = {WIDGET_VIEW: view, "text/plain": "epoch 1/2:   0%|          | 0/8"}
        cells[-1].outputs.append(nbformat.v4.new_output("display_data", data=data))
        state = {
            "box": {
                "model_name": "HBoxModel",
                "state": {"children": ["IPY_MODEL_a", "IPY_MODEL_b"]},
            },
            "a": {"model_name": "HTMLModel", "state": {"value": "epoch 1/2: 100%"}},
            "b": {"model_name": "FloatProgressModel", "state": {"value": 8.0, "max": 8.0}},
        }
        notebook.metadata["widgets"] = {WIDGET_STATE: {"state": state, "version_major": 2}}
    nbformat.write(notebook, path)
    return path


@pytest.fixture
def two_notebooks(tmp_path):
    return [
        executed_notebook(tmp_path / "01_first.ipynb", "01 · First", ["tab:red"], progress=True),
        executed_notebook(tmp_path / "02_second.ipynb", "02 · Second", ["tab:blue", "tab:green"]),
    ]


def test_report_holds_contents_headings_inline_figures_and_finished_bars(two_notebooks):
    page = notebooks_html(two_notebooks, "tracin-we · preset test")
    assert re.search(r"<h1[^>]*>tracin-we · preset test", page)
    for stem, title in (("01_first", "01 · First"), ("02_second", "02 · Second")):
        assert re.search(rf'<a href="#{stem}">{title}</a>\s*\(12 s\)', page), stem  # contents
        assert f'<a id="{stem}"></a>' in page, stem  # its target
        assert re.search(rf"<h1[^>]*>{title}", page), stem
    assert page.count(INLINE_PNG) == 3  # every figure inline, none linked
    assert "<progress" in page and 'value="8.0"' in page and "epoch 1/2: 100%" in page
    assert WIDGET_VIEW not in page and "0/8" not in page  # the finished state, not the first


STDERR_MIME = 'data-mime-type="application/vnd.jupyter.stderr"'  # nbconvert's error styling


def test_stderr_is_a_note_and_only_a_traceback_is_error_styled(tmp_path):
    path = executed_notebook(tmp_path / "01_logs.ipynb", "01 · Logs", [])
    notebook = nbformat.read(path, as_version=4)
    cell = nbformat.v4.new_code_cell("train()", execution_count=2)
    cell.outputs = [
        nbformat.v4.new_output("stream", name="stdout", text="epoch 1: loss 0.5\n"),
        nbformat.v4.new_output("stream", name="stderr", text="UserWarning: <careful>\n"),
    ]
    notebook.cells.append(cell)
    nbformat.write(notebook, path)
    page = notebooks_html([path], "clean")
    assert f'<pre class="{STDERR_CLASS}">UserWarning: &lt;careful&gt;' in page
    assert STDERR_MIME not in page and f".{STDERR_CLASS} {{" in page  # styled as a note
    failed = nbformat.v4.new_code_cell("1 / 0", execution_count=3)
    failed.outputs = [
        nbformat.v4.new_output(
            "error", ename="ZeroDivisionError", evalue="division by zero", traceback=["1 / 0"]
        )
    ]
    notebook.cells.append(failed)
    nbformat.write(notebook, path)
    assert STDERR_MIME in notebooks_html([path], "failed")  # a traceback is still an error


def test_report_is_written_atomically_and_needs_a_notebook(two_notebooks, tmp_path):
    out = tmp_path / "report" / "report.html"
    assert write_report(two_notebooks, out, "t") == out
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]  # no temporary left
    assert out.read_text(encoding="utf-8").count(INLINE_PNG) == 3
    with pytest.raises(ValueError, match="paths is empty"):
        write_report([], out, "t")


def test_run_report_takes_the_folder_s_notebooks_in_order(tmp_path):
    assert reproduce.run_report(tmp_path, "x") is None  # nothing executed yet
    folder = tmp_path / "notebooks"
    folder.mkdir()
    names = [nb.name for nb in reproduce.notebook_paths()]
    for name in (names[2], names[0]):
        executed_notebook(folder / name, name.removesuffix(".ipynb"), ["tab:red"])
    executed_notebook(folder / "99_stray.ipynb", "stray", ["tab:red"])  # not a notebook of ours
    page = reproduce.run_report(tmp_path, "x").read_text(encoding="utf-8")
    anchors = re.findall(r'<a id="([^"]+)"></a>', page)
    assert anchors == [names[0].removesuffix(".ipynb"), names[2].removesuffix(".ipynb")]


def test_reproduce_writes_the_report_also_when_a_notebook_fails(tmp_path, monkeypatch):
    """papermill stands in: it writes the executed copy of the first notebook, then fails on
    the second; the error reaches the caller and the report shows the first."""

    def execute(source, output, **kwargs):
        if "01_" not in output:
            raise RuntimeError("a notebook failed")
        executed_notebook(output, "01 · executed", ["tab:red"])

    monkeypatch.setattr(reproduce.papermill, "execute_notebook", execute)
    with pytest.raises(RuntimeError, match="a notebook failed"):
        reproduce.reproduce("smoke", only=["01", "02"], runs=tmp_path, figures_dir=tmp_path)
    page = (tmp_path / "smoke" / "report.html").read_text(encoding="utf-8")
    assert "01 · executed" in page and page.count(INLINE_PNG) == 1


def test_report_renders_in_headless_chromium(two_notebooks, tmp_path):
    """The quick browser check on the hand-made report (test_notebooks renders the smoke run's)."""
    found = browser.find_browser()
    if found is None:
        pytest.skip("no Chromium/Chrome found (apt-get install chromium, or make browser)")
    page = write_report(two_notebooks, tmp_path / "report.html", "browser check")
    dom = browser.dump_dom(found, page)
    assert all(re.search(rf"<h1[^>]*>{t}", dom) for t in ("browser check", "01 · First"))
    assert dom.count(INLINE_PNG) == 3
    shot = browser.screenshot(found, page, tmp_path / "shot.png", size=(900, 1400))
    n_colours, not_background = browser.colours(shot)
    assert shot.stat().st_size > 5_000
    assert n_colours > 50 and not_background > 0.02, (n_colours, not_background)
