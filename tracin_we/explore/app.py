"""The explorer page's widgets (ipywidgets), on ``explore.session``: pick a trained run, type a
sentence or pick a test point, see its prediction and its top proponents and opponents under
TracIn-WE and TracIn-Last side by side, the score distributions, and, for the CNN, what deleting
each method's top k and retraining does to the prediction, against deleting k random texts.

``explore.ipynb`` shows ``ExplorerApp().widget``; ``python -m tracin_we.explore`` serves it with
Voilà. CSS classes (``tracin-*``) name the parts a browser test looks for.
"""

from __future__ import annotations

import html
import os
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

import ipywidgets as w
import matplotlib.pyplot as plt
from IPython.display import display

from tracin_we.explore.session import (
    Explanation,
    Explorer,
    RunChoice,
    results_html,
    run_choices,
    score_distributions,
)


class ExplorerApp:
    """The page: ``widget`` holds every control and output."""

    def __init__(
        self,
        presets: Sequence[str | Path] | None = None,
        device: str = "cpu",
        cache: str | os.PathLike | None = None,
    ) -> None:
        self.device, self.cache = device, cache
        self.choices: list[RunChoice] = run_choices(presets)
        self.explorer: Explorer | None = None
        self.explanation: Explanation | None = None
        self.summary = ""  # the loaded run, shown in the status line
        self.run = w.Dropdown(
            options=[(c.label, i) for i, c in enumerate(self.choices)], description="run",
            layout=w.Layout(width="600px"),
        )  # fmt: skip
        self.status = w.HTML().add_class("tracin-status")
        self.train_button = w.Button(description="Train it", icon="play", disabled=True)
        self.sentence = w.Text(
            placeholder="Type a sentence, or leave empty to explain the test point below",
            description="sentence", layout=w.Layout(width="600px"),
        ).add_class("tracin-sentence")  # fmt: skip
        self.point = w.Dropdown(description="test point", layout=w.Layout(width="600px"))
        self.k = w.IntSlider(value=5, min=1, max=20, description="k")
        self.explain_button = w.Button(description="Explain", button_style="primary", disabled=True)
        self.explain_button.add_class("tracin-explain")
        self.results = w.HTML().add_class("tracin-results")
        self.plots = w.Output()
        self.retrain_button = w.Button(
            description="Delete these k and retrain", disabled=True, layout=w.Layout(width="240px")
        )
        self.retrain_button.add_class("tracin-retrain")
        self.retrained = w.HTML().add_class("tracin-retrained")
        self.log = w.Output()  # progress bars and tracebacks
        self.run.observe(lambda _: self._guard(self._open), names="value")
        self.train_button.on_click(lambda _: self._guard(lambda: self._open(train=True)))
        self.explain_button.on_click(lambda _: self._guard(self._explain))
        self.retrain_button.on_click(lambda _: self._guard(self._retrain))
        self.widget = w.VBox([
            w.HBox([self.run, self.train_button]), self.status, self.sentence, self.point,
            w.HBox([self.k, self.explain_button]), self.results, self.plots,
            self.retrain_button, self.retrained, self.log,
        ])  # fmt: skip
        if not self.choices:
            self.status.value = "<p>No preset selects notebook 01 or 03: nothing to explore.</p>"
        else:
            self._guard(self._open)

    def _guard(self, action: Callable[[], None]) -> None:
        """Run ``action`` with the controls off; an error shows in the status line (its
        traceback below), and the controls then follow what is loaded."""
        for button in (self.explain_button, self.retrain_button, self.train_button):
            button.disabled = True
        with self.log:  # in a kernel, Output swallows what escapes it: catch inside
            try:
                action()
            except Exception as error:  # shown to the reader, not a dead button
                self.status.value = f"<p style='color: #b00'>{html.escape(str(error))}</p>"
                traceback.print_exc()
            finally:
                self._enable()

    def _enable(self) -> None:
        ready = self.explorer is not None
        self.explain_button.disabled = not ready
        self.train_button.disabled = ready or not self.choices
        self.retrain_button.disabled = not (
            ready and self.explanation is not None and self.explorer.can_retrain
        )

    def _open(self, train: bool = False) -> None:
        choice = self.choices[self.run.value]
        self.explorer = self.explanation = None
        self.results.value = self.retrained.value = ""
        self.plots.clear_output()
        self.status.value = f"<p>Loading <code>{html.escape(choice.label)}</code>…</p>"
        self.explorer = Explorer.open(choice, self.device, self.cache, train_missing=train)
        if self.explorer is None:
            self.status.value = (
                f"<p>Not trained yet. Run <code>{html.escape(choice.command)}</code> (or "
                "<code>make reproduce</code>) and reload this page, or press <b>Train it</b> "
                "here.</p>"
            )
            return
        metrics = self.explorer.result.metrics
        self.summary = self.status.value = (
            f"<p>{html.escape(choice.label)}: test accuracy {metrics['test_accuracy']:.3f}, "
            f"{len(self.explorer.splits['train']):,} training texts, "
            f"{len(self.explorer.checkpoints)} checkpoints.</p>"
        )
        test, names = self.explorer.splits["test"], self.explorer.label_names
        shown = test.select(range(min(len(test), 200)))
        self.point.options = [
            (f"{row}: [{names[label]}] {text[:90]}", row)
            for row, (label, text) in enumerate(zip(shown["label"], shown["text"], strict=True))
        ]

    def _explain(self) -> None:
        explorer = self.explorer
        text = self.sentence.value.strip()
        example = explorer.sentence(text) if text else explorer.test_example(self.point.value)
        self.status.value = "<p>Scoring every training text…</p>"
        self.explanation = explorer.explain(example, self.k.value)
        self.status.value = self.summary
        self.results.value = results_html(explorer, self.explanation)
        self.retrained.value = ""
        if not explorer.can_retrain:
            self.retrained.value = (
                "<p>Delete-and-retrain is offered for the CNN: a "
                f"{html.escape(explorer.config.model)} "
                "retrain takes minutes here.</p>"
            )
        self.plots.clear_output()
        with self.plots:
            figure = score_distributions(self.explanation)
            display(figure)
            plt.close(figure)

    def _retrain(self) -> None:
        self.retrained.value = f"<p>Retraining 4 models (k = {self.explanation.k})…</p>"
        table = self.explorer.delete_and_retrain(self.explanation)
        label = self.explorer.label_names[int(self.explanation.example["label"])]
        rows = "".join(
            f"<tr><td>{html.escape(r.deleted)}</td><td>{r.p:.3f}</td><td>{r.delta:+.3f}</td></tr>"
            for r in table.itertuples()
        )
        self.retrained.value = (
            f"<p>p({html.escape(label)}) after retraining the same recipe and seed without each "
            f"set ({int(table.n_trained.iloc[0])} of {len(table)} models trained now, the rest "
            "from the cache). Deleting proponents should lower it; by how much more than k "
            "random texts is the method's claim.</p><table class='tracin-deletion'><tr>"
            f"<th>deleted</th><th>p</th><th>Δp</th></tr>{rows}</table>"
        )
