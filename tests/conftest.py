"""Shared fixtures: the offline AG News data, a private cache, tiny local data files, quick
training configs, synthetic token data with the CNN recipe and deletion sweep that trains on it,
a retrain counter, a small influence setup, and ``assert_top_k_close``: a top-k compared with
that of a computation rounding differently (another batch size, padding or device)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
import torch
from datasets import Dataset, DatasetDict
from tokenizers import (
    ByteLevelBPETokenizer,
    SentencePieceBPETokenizer,
    Tokenizer,
    models,
    normalizers,
    pre_tokenizers,
    processors,
)
from transformers import PreTrainedTokenizerFast

from tracin_we.core.inputs import CLS_ID, SEP_ID
from tracin_we.experiments.deletion import DeletionConfig
from tracin_we.training import retrain
from tracin_we.training.recipe import TrainConfig
from tracin_we.training.retrain import RetrainJob

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


# ---- tiny texts of token ids for the influence tests: import ``example`` and ``texts`` ----


@contextmanager
def local_dask_client() -> Iterator:
    """A ``distributed.Client`` of a two-worker local cluster (skips without dask). Forked
    workers start in a fraction of a second; spawned ones re-import torch and transformers
    (~12 s each on two busy cores). Safe here: the tasks run one torch thread."""
    dask = pytest.importorskip("dask")
    distributed = pytest.importorskip("distributed")
    with (
        dask.config.set({"distributed.worker.multiprocessing-method": "fork"}),
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


# BERT-tiny fine-tuned for one epoch on the tiny AG News table's 40 texts (16 tokens): the
# pretraining tests' fine-tuning recipe (add data_dir).
TINY_FINE_TUNING = dict(
    model="bert-tiny",
    pretrained=False,
    n_train=40,
    n_val=8,
    n_test=20,
    max_length=16,
    epochs=1,
    checkpoint_epochs=[1],
    batch_size=16,
    optimizer="adam",
    lr=1e-3,
)


def word_level_tokenizer(words: list[str], mask: bool = False) -> PreTrainedTokenizerFast:
    """A RoBERTa-style tokenizer built offline: <s> = 0, <pad> = 1, </s> = 2, <unk> = 3, then one
    id per word of ``words`` (lower-cased, split on whitespace), each text framed as <s> … </s>;
    with ``mask``, a last id for <mask> (MLM pretraining needs one)."""
    tokens = ["<s>", "<pad>", "</s>", "<unk>", *words, *(["<mask>"] if mask else [])]
    vocab = {token: i for i, token in enumerate(tokens)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        **({"mask_token": "<mask>"} if mask else {}),
    )


def subword_tokenizer(style: str, corpus: list[str]) -> PreTrainedTokenizerFast:
    """A subword tokenizer trained offline on ``corpus`` with a small vocabulary (byte-level BPE:
    300, its 256 byte symbols first; SentencePiece: at most 120), so rarer words split into
    pieces: ``style="byte-bpe"`` marks a word's first piece with Ġ (GPT-2, RoBERTa),
    ``"sentencepiece"`` with ▁ (T5, XLM-R). Texts are framed as <s> … </s>; <pad> pads."""
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    if style == "byte-bpe":
        backend = ByteLevelBPETokenizer()
        backend.train_from_iterator(
            corpus, vocab_size=300, min_frequency=1, special_tokens=specials
        )
    else:
        backend = SentencePieceBPETokenizer()
        backend.train_from_iterator(
            corpus, vocab_size=120, min_frequency=1, special_tokens=specials
        )
    backend.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        special_tokens=[("<s>", backend.token_to_id("<s>")), ("</s>", backend.token_to_id("</s>"))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend._tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


def example(tokens: list[int], label: int, length: int = 12) -> dict:
    """One model-input dict: ``tokens`` padded with [PAD] to ``length``, its attention mask,
    token types (all 0) and ``label``."""
    pad = length - len(tokens)
    return {
        "input_ids": tokens + [0] * pad,
        "attention_mask": [1] * len(tokens) + [0] * pad,
        "token_type_ids": [0] * length,
        "label": label,
    }


def texts(n: int, seed: int, classes: int = 3) -> list[dict]:
    """[CLS] w... [SEP] [PAD]...: 4–9 words from 12 ids (103–114), so texts share and repeat
    words; labels ``i % classes``."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        words = torch.randint(
            103, 115, (int(torch.randint(4, 10, (1,), generator=g)),), generator=g
        ).tolist()
        out.append(example([CLS_ID, *words, SEP_ID], i % classes))
    return out


def assert_top_k_close(
    result, scores: torch.Tensor, k: int, proponents: bool = True, *, atol: float
) -> float:
    """``result`` (``InfluentialResults``) is ``influence.top_k(scores, k, proponents)`` of a
    computation of ``scores`` that rounds differently (another batch size, padding, kernel or
    device), off by at most ``atol`` per entry, so entries within that of each other may swap:

    - the k best values are the reference's to ``atol`` (sorting moves no value by more than
      the largest entry change);
    - every index comes with its own score, and no row repeats an index (a misordered row, a
      dropped or repeated chunk fails here);
    - at every rank whose reference value is more than 2·``atol`` from its neighbours (the ranks
      just above and below it, the first one left out included), the index is the reference's.

    Returns the share of (row, rank) pairs whose index was checked: callers assert that it is
    not 0, so that the comparison cannot pass for want of isolated scores."""
    n_test = len(scores)
    assert result.indices.shape == result.influence_scores.shape == (n_test, k)
    close = {"rtol": 0.0, "atol": atol}
    reference = torch.sort(scores, dim=1, descending=proponents, stable=True)
    values = result.influence_scores.to(scores.dtype)
    torch.testing.assert_close(values, reference.values[:, :k], **close)
    torch.testing.assert_close(scores.gather(1, result.indices), values, **close)
    assert all(len(set(row)) == k for row in result.indices.tolist()), "an index repeats"
    gaps = reference.values.diff(dim=1).abs()  # (n_test, n_train - 1): rank r to rank r + 1
    inf = gaps.new_full((n_test, 1), torch.inf)
    above, below = torch.cat([inf, gaps], 1)[:, :k], torch.cat([gaps, inf], 1)[:, :k]
    isolated = (above > 2 * atol) & (below > 2 * atol)
    expected = reference.indices[:, :k]
    assert torch.equal(result.indices[isolated], expected[isolated]), (result.indices, expected)
    return float(isolated.float().mean())


# ---- synthetic token data, its CNN recipe and deletion sweep (deletion, overlap, fixing) ----

T = 12  # tokens per synthetic text


def token_split(
    n: int, seed: int, noise_ids: int = 30, flip: float = 0.0, framed: bool = False
) -> Dataset:
    """``n`` texts of ``T`` token ids, label ``i % 4``: noise ids 1000 + [0, ``noise_ids``) and at
    position 1 one label-revealing id (class c → 2000 + 3c + {0, 1, 2}). With ``flip``, that id
    shows the next class for about that share of texts (so a short training leaves mistakes);
    ``framed``: [CLS] first, [SEP] and one [PAD] last, with an attention mask and token types."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    ids = torch.randint(1000, 1000 + noise_ids, (n, T), generator=g)
    shown = labels
    if flip:
        shown = torch.where(torch.rand(n, generator=g) < 1 - flip, labels, (labels + 1) % 4)
    ids[:, 1] = 2000 + 3 * shown + torch.randint(0, 3, (n,), generator=g)
    columns = {"attention_mask": [[1] * T] * n}
    if framed:
        ids[:, 0], ids[:, -2], ids[:, -1] = CLS_ID, SEP_ID, 0
        columns = {"attention_mask": (ids != 0).long().tolist(), "token_type_ids": [[0] * T] * n}
    return Dataset.from_dict({"input_ids": ids.tolist(), **columns, "label": labels.tolist()})


@pytest.fixture(scope="module")
def splits(request: pytest.FixtureRequest) -> DatasetDict:
    """Train, validation (8 texts) and test ``token_split``s (seeds 0, 1, 2), sized and shaped by
    the requesting module's ``SPLITS``: ``n_train``, ``n_test`` and ``token_split``'s options."""
    options = dict(request.module.SPLITS)
    n_train, n_test = options.pop("n_train"), options.pop("n_test")
    return DatasetDict(
        train=token_split(n_train, 0, **options),
        validation=token_split(8, 1, **options),
        test=token_split(n_test, 2, **options),
    )


@pytest.fixture(scope="module")
def cnn_config(request: pytest.FixtureRequest) -> Callable[..., TrainConfig]:
    """``cnn_config(**changes)``: the CNN recipe for ``splits`` (its sizes, batch 8, one epoch at
    lr 0.1, a checkpoint after it), changed by the module's ``RECIPE``, then by ``changes``."""
    sizes = {k: request.module.SPLITS[k] for k in ("n_train", "n_test")}
    recipe = dict(
        model="cnn", n_val=8, max_length=T, epochs=1, lr=0.1, batch_size=8, checkpoint_epochs=[1]
    )
    recipe |= sizes | getattr(request.module, "RECIPE", {})
    return lambda **changes: TrainConfig.from_params(**(recipe | changes))


@pytest.fixture(scope="module")
def deletion_config(
    request: pytest.FixtureRequest, cnn_config: Callable[..., TrainConfig]
) -> Callable[..., DeletionConfig]:
    """``deletion_config(**changes)``: a tiny sweep of ``cnn_config()`` (TracIn-WE and random,
    k ∈ {3, 6}, 4 test points, seeds {0, 1}, sequential retrains), changed by the module's
    ``SWEEP``, then by ``changes``."""
    sweep = dict(
        methods=("tracin-we", "random"),
        ks=(3, 6),
        n_test_points=4,
        seeds=(0, 1),
        backend="sequential",
        n_bootstrap=200,
    )
    sweep |= getattr(request.module, "SWEEP", {})
    return lambda **changes: DeletionConfig(**({"train": cnn_config()} | sweep | changes))


class Interrupted(Exception):
    """Stands in for a killed process (pytest reserves KeyboardInterrupt for itself)."""


class RetrainCounter:
    """``with count_retrains() as jobs:`` lists the retrains run in this process
    (``retrain.train_job``) inside the block; with ``fail_after``, the next one raises
    ``count_retrains.Interrupted`` instead."""

    Interrupted = Interrupted

    @contextmanager
    def __call__(self, fail_after: int | None = None) -> Iterator[list[RetrainJob]]:
        jobs: list[RetrainJob] = []
        real = retrain.train_job

        def counted(config: TrainConfig, job: RetrainJob, *args, **kwargs) -> torch.Tensor:
            if fail_after is not None and len(jobs) >= fail_after:
                raise Interrupted
            jobs.append(job)
            return real(config, job, *args, **kwargs)

        with pytest.MonkeyPatch.context() as monkeypatch:
            monkeypatch.setattr(retrain, "train_job", counted)
            yield jobs


@pytest.fixture(scope="session")
def count_retrains() -> RetrainCounter:
    return RetrainCounter()


# ---- quick training configs and a small influence setup (persistence, reliability) ----


def tiny_train_config(data_dir: Path | str, **changes):
    """A quick training config on ``data_dir``: the CNN, 64 texts of 16 tokens, 3 epochs of 4 SGD
    steps; keyword arguments change any parameter."""
    from tracin_we.training.recipe import TrainConfig

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
        data_dir=str(data_dir),
    )
    return TrainConfig.from_params(**(params | changes))


@pytest.fixture
def train_config(tiny_data_dir: Path):
    """``train_config(**changes)``: ``tiny_train_config`` on ``tiny_data_dir``."""
    return lambda **changes: tiny_train_config(tiny_data_dir, **changes)


@pytest.fixture(scope="module")
def token_splits() -> DatasetDict:
    """Synthetic tokenized splits (32 train, 8 validation, 16 test texts of 12 tokens)."""
    return DatasetDict(
        train=token_split(32, 0), validation=token_split(8, 1), test=token_split(16, 2)
    )


@pytest.fixture
def influence_case():
    """A small CNN (vocabulary 120), two checkpoints and tokenized train (8) and test (4) texts."""
    from tracin_we.core.models import CNNClassifier

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
