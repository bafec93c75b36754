"""The influence API around the methods: input validation, top-k, adapters, the gradient-row cache,
determinism, the model left as it was, CUDA."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from torch import nn

from tests.conftest import texts
from tracin_we import influence
from tracin_we.core.models import CNNClassifier
from tracin_we.influence import embedding
from tracin_we.influence.options import PEER_METHODS

VOCAB, LENGTH, CLASSES = 120, 12, 3


def model() -> CNNClassifier:
    torch.manual_seed(0)
    return CNNClassifier(CLASSES, vocab_size=VOCAB, embed_dim=8, channels=6)


def checkpoints(m: nn.Module) -> list[tuple[dict, float]]:
    first = {k: v.clone() for k, v in m.state_dict().items()}
    second = {k: v * 1.1 for k, v in first.items()}
    return [(first, 0.3), (second, 0.05)]


@pytest.fixture
def case():
    m = model()
    return m, checkpoints(m), texts(6, 0), texts(4, 1)


def test_accepts_datasets_and_lists_alike(case) -> None:
    m, ckpts, train, test = case
    from_lists = influence.scores("tracin-we", m, ckpts, train, test)
    from_datasets = influence.scores(
        "tracin-we", m, ckpts, Dataset.from_list(train), Dataset.from_list(test)
    )
    assert torch.equal(from_lists, from_datasets)


@pytest.mark.parametrize("method", influence.METHODS)
def test_same_call_twice_is_identical(case, method: str) -> None:
    m, ckpts, train, test = case
    if method in PEER_METHODS:
        pytest.importorskip({"trak": "trak", "ekfac": "kronfluence"}[method])
    options = {"tracin-layer": {"params": r"convs\.0"}, "trak": {"proj_dim": 4}}.get(method, {})
    first = influence.scores(method, m, ckpts, train, test, **options)
    assert first.shape == (len(test), len(train)) and first.dtype == torch.float32
    assert torch.equal(first, influence.scores(method, m, ckpts, train, test, **options))


def test_model_is_restored(case) -> None:
    m, ckpts, train, test = case
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m.train()
    influence.scores("tracin-we", m, ckpts, train, test, dtype=torch.float64)
    influence.scores("tracin-layer", m, ckpts, train, test, params="classifier")
    assert m.training and all(p.requires_grad for p in m.parameters())
    after = m.state_dict()
    assert all(
        torch.equal(before[k], after[k]) and after[k].dtype == before[k].dtype for k in before
    )


def test_top_k_agrees_with_sorting() -> None:
    scores = torch.tensor([[0.5, -1.0, 2.0, 0.0, 2.0], [-3.0, 1.0, 0.1, -0.2, 4.0]])
    top = influence.top_k(scores, 3)
    assert top.indices.tolist() == [[2, 4, 0], [4, 1, 2]]
    assert torch.equal(top.influence_scores, scores.gather(1, top.indices))
    low = influence.top_k(scores, 2, proponents=False)
    assert low.indices.tolist() == [[1, 3], [0, 3]]
    random = torch.randn(7, 30, generator=torch.Generator().manual_seed(0))
    assert torch.equal(influence.top_k(random, 30).indices, random.argsort(1, descending=True))
    with pytest.raises(ValueError, match=r"k=6 must be in \[1, 5\]"):
        influence.top_k(scores, 6)


def test_adapters_state_their_layouts() -> None:
    scores = torch.arange(6.0).view(2, 3)  # 2 test × 3 train
    assert influence.to_captum(scores) is scores
    assert influence.to_dattri(scores).shape == (3, 2)
    assert influence.to_dattri(scores)[2, 1] == scores[1, 2]


def test_cache_round_trip(case, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    m, ckpts, train, test = case
    backward_passes = []
    grads = embedding.embedding_grads
    monkeypatch.setattr(
        embedding, "embedding_grads", lambda *args: backward_passes.append(1) or grads(*args)
    )
    plain = influence.scores("tracin-we-topk", m, ckpts, train, test, top_tokens=3, batch_size=4)
    fresh = influence.scores(
        "tracin-we-topk", m, ckpts, train, test, top_tokens=3, batch_size=4, cache_dir=tmp_path
    )
    gradients = tmp_path / "gradients"  # cache_dir is the cache root (tracin_we.core.persistence)
    assert len(list(gradients.glob("*.pt"))) == 2  # one file per checkpoint
    passes = len(backward_passes)
    cached = influence.scores(
        "tracin-we-topk", m, ckpts, train, test, top_tokens=3, batch_size=4, cache_dir=tmp_path
    )
    assert len(backward_passes) - passes == 2  # the test set's only: 1 batch × 2 checkpoints
    assert torch.equal(plain, fresh) and torch.equal(fresh, cached)
    influence.scores("tracin-we-topk", m, ckpts, train[1:], test, top_tokens=3, cache_dir=tmp_path)
    influence.scores("tracin-we-topk", m, ckpts, train, test, top_tokens=4, cache_dir=tmp_path)
    assert len(list(gradients.glob("*.pt"))) == 6  # other data or options: other keys
    saved = torch.load(next(gradients.glob("*.pt")), weights_only=True)
    assert set(saved["features"]) == {"ids", "rows", "offsets"}


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda m, c, tr, te: influence.scores("tracin-xx", m, c, tr, te),
            r"method='tracin-xx' is unknown; allowed: \['tracin-we'",
        ),
        (lambda m, c, tr, te: influence.scores("tracin-we", m, c, [], te), "train is empty"),
        (
            lambda m, c, tr, te: influence.scores("tracin-last", m, c, tr, Dataset.from_list([])),
            "test is empty",
        ),
        (
            lambda m, c, tr, te: influence.scores("tracin-we", m, c, tr, [te[0] | {"label": 3}]),
            r"test has labels outside range\(3\)",
        ),
        (
            lambda m, c, tr, te: influence.scores("tracin-we", m, c, tr, [te[0] | {"label": -1}]),
            r"test has labels outside range\(3\)",
        ),
        (
            lambda m, c, tr, te: influence.scores(
                "tracin-we",
                m,
                c,
                {
                    "input_ids": torch.ones(3, LENGTH, dtype=torch.long),
                    "labels": torch.zeros(2, dtype=torch.long),
                },
                te,
            ),
            "train has .2,. labels for 3 inputs",
        ),
        (
            lambda m, c, tr, te: influence.scores("tracin-we", m, [(c[0][0], 0.0)], tr, te),
            r"checkpoints\[0\] has learning rate 0.0; it must be > 0",
        ),
        (
            lambda m, c, tr, te: influence.scores("tracin-we", m, [(c[0][0], -1e-3)], tr, te),
            "must be > 0",
        ),
        (lambda m, c, tr, te: influence.scores("tracin-we", m, [], tr, te), "checkpoints is empty"),
        (
            lambda m, c, tr, te: influence.scores(
                "tracin-we", m, c, tr, [te[0] | {"input_ids": [500] * LENGTH}]
            ),
            "token ids outside the model's 120-row word embedding",
        ),
        (
            lambda m, c, tr, te: influence.scores("tracin-we", m, c, tr, te, damping=1.0),
            r"options \['damping'\] do not apply to method='tracin-we'",
        ),
        (
            lambda m, c, tr, te: influence.scores("tracin-we-topk", m, c, tr, te, top_tokens=0),
            "top_tokens=0 must be a positive integer",
        ),
        (
            lambda m, c, tr, te: influence.scores("tracin-we-topk", m, c, tr, te, k=3),
            r"options \['k'\] do not apply to method='tracin-we-topk'",  # k: training examples
        ),
        (lambda m, c, tr, te: influence.scores("tracin-layer", m, c, tr, te), "params is required"),
        (
            lambda m, c, tr, te: influence.scores("tracin-layer", m, c, tr, te, params="nothing"),
            "params='nothing' matches no parameter",
        ),
        (lambda m, c, tr, te: influence.scores("grad-cos", m, c, tr, te, layer=["x"]), "layer"),
        (
            lambda m, c, tr, te: influence.scores("representer", m, c, tr, te, l2=0),
            "l2=0 must be > 0",
        ),
        (
            lambda m, c, tr, te: influence.self_influence("random", m, c, tr),
            "method='random' has no self-influence",
        ),
    ],
)
def test_bad_input_raises_value_error(case, call, message: str) -> None:
    m, ckpts, train, test = case
    with pytest.raises(ValueError, match=message):
        call(m, ckpts, train, test)


class NoEmbedding(nn.Module):
    """Classifies bags of token ids without an nn.Embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.classifier = nn.Linear(LENGTH, CLASSES)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        return self.classifier(input_ids.float())

    def classifier_layer(self) -> nn.Linear:
        return self.classifier


def test_model_without_embedding_layer(case) -> None:
    _, _, train, test = case
    m = NoEmbedding()
    ckpts = [(m.state_dict(), 0.1)]
    for method in ("tracin-we", "tracin-we-noc", "tracin-we-syn"):
        with pytest.raises(ValueError, match="model: NoEmbedding has no identifiable word-emb"):
            influence.scores(method, m, ckpts, train, test)
    with pytest.raises(ValueError, match="word-embedding"):
        influence.word_scores(m, ckpts, train[0], test[0])
    assert influence.scores("tracin-last", m, ckpts, train, test).shape == (4, 6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(
    "method",
    ["tracin-we", "tracin-we-syn", "tracin-last", "tracin-layer", "influence-last", "grad-cos"],
)
def test_cuda_matches_cpu(case, method: str) -> None:
    m, ckpts, train, test = case
    options = {"params": r"convs\.0"} if method == "tracin-layer" else {}
    on_cpu = influence.scores(method, m, ckpts, train, test, dtype=torch.float64, **options)
    on_gpu = influence.scores(
        method, m, ckpts, train, test, dtype=torch.float64, device="cuda", **options
    )
    assert on_gpu.device.type == "cpu"
    # CUDA and CPU kernels sum in other orders; in float64 they agree to ~1e-15 of the scale.
    torch.testing.assert_close(on_gpu, on_cpu, rtol=1e-9, atol=1e-10 * float(on_cpu.abs().max()))
