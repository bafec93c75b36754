"""The paper's published numbers (arXiv 2202.11844 v1, Table 3), to print beside ours: for the
paper's own datasets only (``reports``)."""

from __future__ import annotations

import pandas as pd

# Table 3 column → this package's method name.
TABLE3_METHODS = {
    "Inf-Last": "influence-last",
    "Rep": "representer",
    "TR-Last": "tracin-last",
    "TR-WE": "tracin-we",
    "TR-WE-Topk": "tracin-we-topk",
    "TR-WE-Syn": "tracin-we-syn",
    "TR-TFIDF": "tracin-tfidf",
}

# Table 3's methods in its column order, then the control: the default of every evaluation.
PAPER_METHODS = (*TABLE3_METHODS.values(), "random")

# v1 Table 3: AUC-DEL (BERT-tiny; MNLI bert-base). DEL+ lower is better, DEL- higher.
TABLE3 = {
    ("toxicity", "DEL+"): [-0.022, -0.021, -0.025, -0.105, -0.104, -0.103, -0.067],
    ("toxicity", "DEL-"): [-0.001, 0.006, 0.007, 0.122, 0.125, 0.125, 0.044],
    ("ag_news", "DEL+"): [-0.025, -0.021, -0.032, -0.148, -0.152, -0.142, -0.083],
    ("ag_news", "DEL-"): [0.023, 0.021, 0.017, 0.100, 0.100, 0.096, 0.054],
    ("mnli", "DEL+"): [None, None, 0.006, None, -0.198, None, -0.004],
    ("mnli", "DEL-"): [None, None, 0.026, None, 0.169, None, 0.005],
}

# v1 §6: share of 40 mistakes fixed over 10 retrains, k = 50 (BERT-tiny).
FIXED_SHARE = {"tracin-we-topk": 0.73, "influence-last": 0.33}

# v1 no-word-overlap experiment (Toxicity, word embeddings frozen).
NO_OVERLAP = {
    "DEL+": {"tracin-last": -0.007, "tracin-we": -0.033, "tracin-we-noc": 0.005},
    "DEL-": {"tracin-last": 0.013, "tracin-we": 0.043, "tracin-we-noc": -0.002},
}


def table3(dataset: str) -> pd.DataFrame:
    """The paper's AUC-DEL± for ``dataset`` by method: columns ``paper DEL+``, ``paper DEL-``."""
    if (dataset, "DEL+") not in TABLE3:
        raise ValueError(f"dataset={dataset!r}; the paper reports {sorted({d for d, _ in TABLE3})}")
    methods = list(TABLE3_METHODS.values())
    return pd.DataFrame(
        {f"paper {metric}": TABLE3[(dataset, metric)] for metric in ("DEL+", "DEL-")},
        index=pd.Index(methods, name="method"),
    )


def reports(dataset: str) -> bool:
    """Whether the paper reports numbers for ``dataset``: its own tasks, by their built-in names
    (``toxicity``, ``ag_news``, ``mnli``), never a dataset of one's own."""
    return (dataset, "DEL+") in TABLE3


def paper_note(dataset: str) -> str:
    """One sentence saying which paper numbers a table of ``dataset`` shows, if any."""
    if reports(dataset):
        return f"Paper columns: v1 Table 3, {dataset}."
    return (
        f"No paper columns: the paper reports {sorted({d for d, _ in TABLE3})}, not "
        f"dataset={dataset!r}."
    )


def beside_paper(summary: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Our AUC-DEL summary (``deletion.auc_del``) with the paper's numbers in extra columns, in
    the paper's method order (methods the paper lacks, such as ``random``, last). For a dataset
    the paper does not report (``reports``), our summary alone, in the same order."""
    ours = summary.set_index("method")
    joined = ours.join(table3(dataset), how="left") if reports(dataset) else ours
    order = [m for m in TABLE3_METHODS.values() if m in joined.index]
    return joined.loc[order + [m for m in joined.index if m not in order]].reset_index()


def fixed_share_beside_paper(summary: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """Our share of mistakes fixed (``fixing.fixed_share``) with a ``paper`` column (v1 §6) for
    the paper's datasets only (``reports``)."""
    if not reports(dataset):
        return summary
    return summary.assign(paper=summary["method"].map(FIXED_SHARE))
