"""Shared fixtures: the offline AG News data, a private cache, tiny local data files."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """One torch thread: the test models are tiny, and two OpenMP threads stall each other
    whenever anything else runs on a 2-core machine (measured 5-30x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Every test trains into a private cache, never into ./runs."""
    monkeypatch.setenv("TRACIN_WE_CACHE", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def ag_news_dir(monkeypatch: pytest.MonkeyPatch) -> Path:
    """The real AG News folder (``TRACIN_WE_DATA_DIR`` if set, else ``../shared/data``)."""
    folder = Path(os.environ.get("TRACIN_WE_DATA_DIR") or SHARED_DATA)
    if not (folder / "ag_news").is_dir():
        pytest.skip(f"offline AG News data not found in {folder}")
    monkeypatch.setenv("TRACIN_WE_DATA_DIR", str(folder))
    return folder


WORDS = [
    "market",
    "stocks",
    "game",
    "team",
    "election",
    "vote",
    "rocket",
    "space",
    "chip",
    "bank",
    "coach",
    "minister",
]


def tiny_table(n: int, num_classes: int = 4, seed: int = 0) -> pd.DataFrame:
    """``n`` short synthetic texts whose words depend on the label (learnable, deterministic)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    texts = []
    for i, label in enumerate(labels.tolist()):
        picks = torch.randint(0, 3, (6,), generator=g).tolist()
        texts.append(" ".join(WORDS[3 * label + p] for p in picks) + f" id{seed}x{i}")
    return pd.DataFrame({"text": texts, "label": labels.tolist()})


@pytest.fixture
def tiny_data_dir(tmp_path: Path) -> Path:
    """``<tmp>/ag_news/{train.csv,test.jsonl}``: small learnable data in two local formats."""
    folder = tmp_path / "ag_news"
    folder.mkdir()
    tiny_table(160, seed=0).to_csv(folder / "train.csv", index=False)
    tiny_table(60, seed=1).to_json(folder / "test.jsonl", orient="records", lines=True)
    return tmp_path
