"""The explorer's logic, without widgets: which trained runs a preset has, a sentence's
prediction, its top proponents and opponents under TracIn-WE and TracIn-Last (each training text's
shared words highlighted by their share of the TracIn-WE score), and "delete these k and retrain"
against deleting k random texts.

``explore.app`` puts widgets on it and ``explore.ipynb`` shows them, served by Voilà
(``python -m tracin_we.explore``, ``make explore``). A run is one of the ``TrainConfig``s a
preset's notebooks train: 01's transformer and 03's CNN (the one 03–08 explain, seed 0); it is
read from the cache the notebooks wrote (``training.train.trained``), or trained here.
"""

from __future__ import annotations

import html
import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from datasets import Dataset, DatasetDict

from tracin_we.core.data import make_splits, tokenize
from tracin_we.core.inputs import model_inputs
from tracin_we.core.persistence import cache_dir
from tracin_we.core.tokenizer import load_tokenizer
from tracin_we.influence import scores, top_k, word_scores
from tracin_we.preflight import check_notebook
from tracin_we.report.explain import highlight_words, influential_table
from tracin_we.reproduce import (
    PRESETS,
    load_preset,
    params_for,
    preset_name,
    preset_notebooks,
    preset_path,
)
from tracin_we.training.loop import predict_proba
from tracin_we.training.recipe import TrainConfig
from tracin_we.training.retrain import RetrainJob, retrain_cached
from tracin_we.training.train import TrainResult, train, trained

METHODS = {"tracin-we": "TracIn-WE", "tracin-last": "TracIn-Last"}
EXPLAINED = {"01": "notebooks 01–02", "03": "notebooks 03–08"}  # the notebook that trains it
RETRAINABLE = ("cnn",)  # models a CPU retrains in seconds: "delete these k and retrain"
PRESETS_ENV = "TRACIN_WE_EXPLORE_PRESETS"  # os.pathsep-separated presets the page offers


@dataclass(frozen=True)
class RunChoice:
    """One trained model a reader can pick: ``notebook`` of the preset at ``preset`` (its file)
    trains ``config``."""

    preset: Path
    notebook: str
    config: TrainConfig

    @property
    def label(self) -> str:
        return (
            f"{preset_name(self.preset)} preset: {self.config.model} ({EXPLAINED[self.notebook]})"
        )

    @property
    def command(self) -> str:
        """What trains it from a shell (a built-in preset by name, another by its path)."""
        name = preset_name(self.preset)
        builtin = self.preset.resolve() == (PRESETS / f"{name}.yaml").resolve()
        name = name if builtin else shlex.quote(str(self.preset))
        return f"python -m tracin_we.reproduce --preset {name} --only {self.notebook}"


def run_choices(presets: Sequence[str | Path] | None = None) -> list[RunChoice]:
    """The runs of ``presets`` (default: ``$TRACIN_WE_EXPLORE_PRESETS``, else default and
    pretrained) whose notebooks 01 or 03 the preset selects, in that order; a run that an earlier
    choice already names (the same config) once. Each config is the one the notebook builds
    (``preflight.check_notebook``: the preset over the notebook's defaults), so its cache key is
    the notebook's."""
    if presets is None:
        found = os.environ.get(PRESETS_ENV)
        presets = found.split(os.pathsep) if found else ["default", "pretrained"]
    choices: list[RunChoice] = []
    for preset in presets:
        path = preset_path(preset).absolute()
        for notebook in preset_notebooks(load_preset(path), None):
            if notebook.stem[:2] not in EXPLAINED:
                continue
            built = check_notebook(notebook, params_for(path, notebook.stem[:2]))
            config = built if isinstance(built, TrainConfig) else built.train
            if all(config != c.config for c in choices):
                choices.append(RunChoice(path, notebook.stem[:2], config))
    return choices


@dataclass
class Explanation:
    """A test example explained: ``probabilities`` (C,), each method's ``scores`` (n_train,) and
    ``top`` (a table per method: direction, rank, train_index, score, label, text, html)."""

    example: dict
    probabilities: np.ndarray
    scores: dict[str, torch.Tensor]
    top: dict[str, pd.DataFrame]
    k: int


class Explorer:
    """One trained run, ready to explain sentences and test points against its training set."""

    def __init__(
        self,
        result: TrainResult,
        splits: DatasetDict | None = None,
        device: str = "cpu",
        cache: str | os.PathLike | None = None,
    ) -> None:
        self.result, self.device, self.cache = result, device, cache
        self.config = result.config
        self.splits = splits if splits is not None else make_splits(self.config.data)
        self.model = result.load_model()
        self.checkpoints = result.checkpoint_pairs()
        self.tokenizer = load_tokenizer(self.config.data.tokenizer)
        self.label_names = [str(name) for name in self.config.data.class_names]

    @classmethod
    def open(
        cls, choice: RunChoice, device: str = "cpu", cache: str | os.PathLike | None = None,
        train_missing: bool = False, progress: bool = True,
    ) -> Explorer | None:  # fmt: skip
        """The run of ``choice`` from the cache; one not trained yet is trained when
        ``train_missing`` (with progress bars), else None."""
        splits = make_splits(choice.config.data)
        result = trained(choice.config, splits, cache)
        if result is None and train_missing:
            result = train(choice.config, splits, cache=cache, device=device, progress=progress)
        return None if result is None else cls(result, splits, device, cache)

    @property
    def can_retrain(self) -> bool:
        return self.config.model in RETRAINABLE

    def test_example(self, row: int) -> dict:
        """Row ``row`` of the test split as an example dict (its true label)."""
        return self.splits["test"][row]

    def sentence(self, text: str, label: int | None = None) -> dict:
        """``text`` tokenized as the training texts were; ``label`` (explained class): the
        predicted one when None."""
        if not text.strip():
            raise ValueError("text is empty: type a sentence")
        if len(self.config.data.task.text_columns) > 1:
            raise ValueError(
                f"dataset={self.config.data.dataset!r} holds text pairs; explain its test points"
            )
        encoded = tokenize(
            Dataset.from_dict({"text": [text], "label": [0]}),
            self.tokenizer,
            self.config.data.max_length,
        )[0]
        if label is None:
            label = int(self.probabilities(encoded).argmax())
        if label not in range(len(self.label_names)):
            raise ValueError(f"label={label}; allowed: 0..{len(self.label_names) - 1}")
        return {**encoded, "label": label}

    def probabilities(self, example: dict) -> np.ndarray:
        """p(class | example), shape (C,)."""
        inputs = model_inputs([example])
        return predict_proba(self.model, inputs, device=self.device)[0].numpy()

    def explain(self, example: dict, k: int = 5) -> Explanation:
        """Both methods' scores of every training text on ``example`` and their top ``k``
        proponents and opponents; TracIn-WE's rows carry their word highlights. The training
        texts' gradients are cached (``<cache>/gradients``): the next sentence is quicker."""
        train = self.splits["train"]
        found = {
            method: scores(
                method, self.model, self.checkpoints, train, [example],
                device=self.device, cache_dir=cache_dir(self.cache), progress=False,
            )[0]
            for method in METHODS
        }  # fmt: skip
        top = {method: self._top(method, row, example, k) for method, row in found.items()}
        return Explanation(example, self.probabilities(example), found, top, k)

    def _top(self, method: str, row: torch.Tensor, example: dict, k: int) -> pd.DataFrame:
        """``report.explain.influential_table`` of one method, each training text whole and with
        its HTML (TracIn-WE: words highlighted by their share of the score)."""
        train = self.splits["train"]
        table = influential_table({method: row[None]}, 0, train, k, self.label_names)
        texts = [train[i] for i in table["train_index"]]
        return table.drop(columns="method").assign(
            text=[t["text"] for t in texts],
            html=[
                self._highlight(t, example) if method == "tracin-we"
                else f"<p>{html.escape(t['text'])}</p>"
                for t in texts
            ],
        )  # fmt: skip

    def _highlight(self, train_example: dict, example: dict) -> str:
        words = word_scores(
            self.model, self.checkpoints, train_example, example, self.tokenizer,
            device=self.device,
        )  # fmt: skip
        return highlight_words(words, self.tokenizer, train_example["input_ids"])

    def delete_and_retrain(
        self, explanation: Explanation, backend: str = "joblib", progress: bool = True
    ) -> pd.DataFrame:
        """Retrain the run's recipe (its seed: common random numbers) without each method's top
        k proponents (k = ``explanation.k``, the lists shown), and without k random texts (drawn
        with numpy seed 0), and compare
        p(explained class) on the example with the retrain on every text: one row per deletion,
        ``p`` and ``delta`` = p − p(all texts). Retrains are cached: a repeat trains nothing."""
        if not self.can_retrain:
            raise ValueError(
                f"model={self.config.model!r}: retraining it here takes minutes; the explorer "
                f"retrains {list(RETRAINABLE)}"
            )
        n, label, k = len(self.splits["train"]), int(explanation.example["label"]), explanation.k
        removed = {
            f"top {k} proponents, {name}": top_k(explanation.scores[m][None], k).indices[0].tolist()
            for m, name in METHODS.items()
        }
        removed[f"{k} random texts"] = np.random.default_rng(0).choice(n, k, replace=False)
        jobs = [RetrainJob(self.config.seed)]
        jobs += [RetrainJob(self.config.seed, tuple(int(i) for i in s)) for s in removed.values()]
        done = retrain_cached(
            self.config, jobs, model_inputs(self.splits["train"]),
            model_inputs([explanation.example]), cache=self.cache, backend=backend,
            device=self.device, progress=progress,
        )  # fmt: skip
        p = done.probabilities[:, 0, label].numpy()
        return pd.DataFrame({"deleted": ["nothing", *removed], "p": p, "delta": p - p[0]}).assign(
            n_trained=done.n_trained
        )


def results_html(explorer: Explorer, explanation: Explanation) -> str:
    """The prediction and both methods' tables side by side, as one HTML block."""
    names, p = explorer.label_names, explanation.probabilities
    label = int(explanation.example["label"])
    bars = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{value:.3f}</td></tr>"
        for name, value in zip(names, p, strict=True)
    )
    head = (
        f"<p>Prediction: <b>{html.escape(names[int(p.argmax())])}</b>; explained class "
        f"(whose probability the scores are about): <b>{html.escape(names[label])}</b></p>"
        f"<table class='tracin-probabilities'>{bars}</table>"
    )
    columns = "".join(_method_column(m, explanation.top[m]) for m in METHODS)
    return f"{head}<div style='display: flex; gap: 24px'>{columns}</div>"


def _method_column(method: str, table: pd.DataFrame) -> str:
    parts = [f"<div class='tracin-method' data-method='{method}' style='flex: 1'>"]
    parts.append(f"<h3>{METHODS[method]}</h3>")
    for direction, rows in table.groupby("direction", sort=False):
        lines = "".join(
            f"<tr><td>{r.rank}</td><td>{r.score:+.3g}</td><td>{html.escape(r.label)}</td>"
            f"<td>{r.html}</td></tr>"
            for r in rows.itertuples()
        )
        parts.append(
            f"<h4>{direction}s</h4><table class='tracin-top' data-direction='{direction}'>"
            f"<tr><th>#</th><th>score</th><th>label</th><th>training text</th></tr>{lines}</table>"
        )
    return "".join([*parts, "</div>"])


def score_distributions(explanation: Explanation) -> plt.Figure:
    """Each method's scores over all training texts (one panel per method: their scales differ);
    the long tails on both sides of TracIn-Last are the cancellation the paper describes."""
    fig, axes = plt.subplots(1, len(METHODS), figsize=(4 * len(METHODS), 2.6))
    for ax, (method, name) in zip(axes, METHODS.items(), strict=True):
        values = explanation.scores[method].numpy()
        ax.hist(values, bins=60, color="tab:blue" if method == "tracin-we" else "tab:orange")
        ax.set(title=name, xlabel="score", yscale="log")
    axes[0].set_ylabel("training texts")
    fig.tight_layout()
    return fig
