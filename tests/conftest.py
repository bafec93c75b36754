"""Shared fixtures: the offline AG News data, a private cache, tiny local data files, quick
training configs, synthetic tokenized splits and a small influence setup."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest
import torch
from datasets import Dataset, DatasetDict

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


@pytest.fixture
def train_config(tiny_data_dir: Path):
    """A factory of quick training configs on ``tiny_data_dir``: the CNN, 64 texts of 16 tokens,
    3 epochs of 4 SGD steps; keyword arguments change any parameter."""
    from tracin_we.train import TrainConfig

    def make(**changes) -> TrainConfig:
        params = dict(
            model="cnn",
            n_train=64,
            n_val=16,
            n_test=32,
            max_length=16,
            epochs=3,
            lr=0.05,
            batch_size=16,
            checkpoint_epochs=[1, 3],
            data_dir=str(tiny_data_dir),
        )
        return TrainConfig.from_params(**(params | changes))

    return make


def token_split(n: int, seed: int, length: int = 12) -> Dataset:
    """``n`` texts of ``length`` token ids with one label-revealing position (class c → ids
    2000 + 3c + {0, 1, 2}): a CNN learns them in a few steps."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    ids = torch.randint(1000, 1030, (n, length), generator=g)
    ids[:, 1] = 2000 + 3 * labels + torch.randint(0, 3, (n,), generator=g)
    return Dataset.from_dict(
        {
            "input_ids": ids.tolist(),
            "attention_mask": [[1] * length] * n,
            "label": labels.tolist(),
        }
    )


@pytest.fixture(scope="module")
def token_splits() -> DatasetDict:
    """Synthetic tokenized splits (32 train, 8 validation, 16 test texts of 12 tokens)."""
    return DatasetDict(
        train=token_split(32, 0), validation=token_split(8, 1), test=token_split(16, 2)
    )


@pytest.fixture
def influence_case():
    """A small CNN (vocabulary 120), two checkpoints and tokenized train (8) and test (4) texts."""
    from tracin_we.models import CNNClassifier

    torch.manual_seed(0)
    model = CNNClassifier(3, vocab_size=120, embed_dim=8, channels=6)
    first = {k: v.clone() for k, v in model.state_dict().items()}
    checkpoints = [(first, 0.3), ({k: v * 1.1 for k, v in first.items()}, 0.05)]
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(103, 115, (12, 12), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102
    data = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": torch.arange(12) % 3,
    }
    train = {k: v[:8] for k, v in data.items()}
    test = {k: v[8:] for k, v in data.items()}
    return model, checkpoints, train, test
