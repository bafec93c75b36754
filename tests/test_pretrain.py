"""MLM pretraining (training.pretrain): the corpus, the masks, the cached run, fine-tuning from
it, and multi-stage TracIn-WE on the two runs."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import TINY_FINE_TUNING, tiny_table, word_level_tokenizer
from tracin_we.core.data import DataConfig, make_splits
from tracin_we.core.inputs import CLS_ID, PAD_ID, SEP_ID, model_inputs
from tracin_we.influence.multistage import by_domain, multistage_scores
from tracin_we.training import cached_run
from tracin_we.training.model_init import new_model
from tracin_we.training.pretrain import (
    IGNORE,
    PretrainConfig,
    load_encoder,
    mask_tokens,
    new_mlm_model,
    pretrain,
    pretraining_corpus,
)
from tracin_we.training.recipe import TrainConfig, config_identity
from tracin_we.training.train import train


def tiny_pretrain_config(data_dir, **changes) -> PretrainConfig:
    """2 epochs of MLM on 48 of the tiny texts that a 40/8/20 fine-tuning run leaves unused."""
    params = dict(
        n_train=40,
        n_val=8,
        n_test=20,
        max_length=16,
        epochs=2,
        checkpoint_epochs=[1, 2],
        batch_size=16,
        n_corpus=48,
        data_dir=str(data_dir),
    )
    return PretrainConfig.from_params(**(params | changes))


def test_corpus_holds_no_fine_tuning_example_and_no_evaluated_test_point(ag_news_dir):
    data = DataConfig(n_train=2000, n_val=500, n_test=1000)  # the default preset's sizes
    corpus = pretraining_corpus(PretrainConfig(data=data))
    splits = make_splits(data)
    used = {t for name in splits for t in splits[name]["text"]}
    texts = list(corpus["text"])
    assert not used & set(texts)
    assert len(set(texts)) == len(texts)
    # 10,000 + 7,600 offline texts, less the 3,500 used (and a few duplicates)
    assert 13_500 < len(texts) <= 17_600 - 3_500
    assert set(corpus["domain"]) == {"World", "Sports", "Business", "Sci/Tech"}
    assert set(corpus["source"]) == {"train", "test"}


def test_corpus_sample_is_stratified_by_domain(tiny_data_dir):
    corpus = pretraining_corpus(tiny_pretrain_config(tiny_data_dir, n_corpus=40))
    assert len(corpus) == 40
    assert sorted(corpus["domain"].count(d) for d in set(corpus["domain"])) == [10, 10, 10, 10]
    with pytest.raises(ValueError, match="n_corpus=100000 exceeds"):
        pretraining_corpus(tiny_pretrain_config(tiny_data_dir, n_corpus=100_000))


def synthetic_ids(n: int, length: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (n, length), generator=g)
    real = torch.randint(10, length - 2, (n,), generator=g)
    ids[:, 0] = CLS_ID
    ids[torch.arange(n), real + 1] = SEP_ID
    after = torch.arange(length)[None, :] > (real + 1)[:, None]
    ids[after] = PAD_ID
    return ids, (~after).long()


def test_masks_follow_bert_and_are_fixed_per_text_and_seed():
    ids, attention = synthetic_ids(2000)
    texts = [f"text {i}" for i in range(2000)]
    masked, labels = mask_tokens(ids, attention, texts, seed=0)
    predicted = labels != IGNORE
    n_real = attention.sum(1) - 2
    assert torch.equal(predicted.sum(1), (0.15 * n_real).round().clamp(min=1).long())
    assert not predicted[torch.isin(ids, torch.tensor([PAD_ID, CLS_ID, SEP_ID]))].any()
    assert torch.equal(labels[predicted], ids[predicted])
    assert torch.equal(masked[~predicted], ids[~predicted])
    shares = torch.stack(
        [
            (masked[predicted] == 103).float().mean(),
            ((masked[predicted] != 103) & (masked[predicted] != ids[predicted])).float().mean(),
            (masked[predicted] == ids[predicted]).float().mean(),
        ]
    )
    torch.testing.assert_close(shares, torch.tensor([0.8, 0.1, 0.1]), atol=0.02, rtol=0)
    again = mask_tokens(ids, attention, texts, seed=0)
    assert torch.equal(again[0], masked) and torch.equal(again[1], labels)
    # a text's masks depend on its content and the seed only, not on the other texts
    subset = mask_tokens(ids[5:9], attention[5:9], texts[5:9], seed=0)
    assert torch.equal(subset[0], masked[5:9]) and torch.equal(subset[1], labels[5:9])
    other = mask_tokens(ids, attention, texts, seed=1)[1]
    assert not torch.equal(other, labels)


def test_pretraining_is_cached_resumable_and_keeps_learning_rates(
    tiny_data_dir, tmp_path, monkeypatch
):
    config = tiny_pretrain_config(tiny_data_dir)
    reference = pretrain(config, cache=tmp_path / "ref", progress=False)
    assert [c.epoch for c in reference.checkpoints] == [1, 2]
    assert all(c.lr == config.lr for c in reference.checkpoints)
    assert [lr for _, lr in reference.checkpoint_pairs()] == [config.lr, config.lr]
    assert reference.history[1]["train_loss"] < reference.history[0]["train_loss"]

    real_fit = cached_run.fit

    def interrupted_fit(*args, on_epoch, **kwargs):
        def stop_after_first(epoch, *rest):
            on_epoch(epoch, *rest)
            raise KeyboardInterrupt

        return real_fit(*args, on_epoch=stop_after_first, **kwargs)

    monkeypatch.setattr(cached_run, "fit", interrupted_fit)
    with pytest.raises(KeyboardInterrupt):
        pretrain(config, cache=tmp_path / "run", progress=False)
    monkeypatch.setattr(cached_run, "fit", real_fit)
    resumed = pretrain(config, cache=tmp_path / "run", progress=False)
    final, expected = resumed.final.load()["state_dict"], reference.final.load()["state_dict"]
    assert all(torch.equal(final[k], expected[k]) for k in expected)

    monkeypatch.setattr(cached_run, "fit", lambda *a, **k: pytest.fail("trained again"))
    again = pretrain(config, cache=tmp_path / "run", progress=False)
    assert again.run_dir == resumed.run_dir and again.metrics == resumed.metrics


def test_fine_tuning_starts_from_the_pretrained_encoder(tiny_data_dir, tmp_path):
    pre = pretrain(tiny_pretrain_config(tiny_data_dir), cache=tmp_path, progress=False)
    common = TINY_FINE_TUNING | dict(data_dir=str(tiny_data_dir))
    config = TrainConfig.from_params(**common, init_from=str(pre.run_dir))
    model, init = new_model(config)
    assert init == f"mlm:{pre.final.sha256[:16]}"
    state = pre.final.load()["state_dict"]
    for name, value in model.model.bert.state_dict().items():
        if not name.startswith("pooler."):
            assert torch.equal(value, state[f"model.bert.{name}"]), name
    random_model, random_init = new_model(TrainConfig.from_params(**common))
    assert random_init == "random(seed=0)"
    # the head is seeded as in a random init; only the encoder differs
    assert torch.equal(model.model.classifier.weight, random_model.model.classifier.weight)

    from_state = new_model(TrainConfig.from_params(**common))[0]
    assert load_encoder(from_state, state).startswith("mlm:")
    assert torch.equal(from_state.word_embeddings().weight, model.word_embeddings().weight)

    fine = train(config, cache=tmp_path, progress=False)
    assert fine.init == init
    test = model_inputs(make_splits(config.data)["test"])
    scores = multistage_scores(pre, fine, test, batch_size=16)
    assert scores.shape == (len(test["labels"]), len(pre.corpus))
    assert torch.isfinite(scores).all() and scores.abs().max() > 0
    table = by_domain(scores, pre.corpus["domain"], test["labels"].tolist())
    assert table.shape == (4, 4)


def test_pretraining_and_fine_tuning_read_their_own_tokenizer(tiny_data_dir, tmp_path):
    """Another tokenizer (word-level, RoBERTa's special ids) runs the whole pretraining stage:
    its ids are masked with its <mask>, BERT-tiny gets its vocabulary, fine-tuning starts from
    the run and multi-stage TracIn-WE scores it. One without a mask token is refused."""
    words = sorted({w for text in tiny_table(220)["text"] for w in text.split()})
    folder = tmp_path / "tokenizer"
    tokenizer = word_level_tokenizer(words, mask=True)
    tokenizer.save_pretrained(folder)
    pre = pretrain(
        tiny_pretrain_config(tiny_data_dir, tokenizer=str(folder)), cache=tmp_path, progress=False
    )
    ids, labels = pre.tensors["input_ids"], pre.tensors["labels"]
    assert (ids[:, 0] == tokenizer.bos_token_id).all()
    assert (ids == tokenizer.mask_token_id).any() and (labels != IGNORE).any()
    assert pre.load_model().word_embeddings().num_embeddings == len(tokenizer)
    rows = new_mlm_model(0, pre.config.data).word_embeddings().weight
    assert not rows[tokenizer.pad_token_id].any() and rows[tokenizer.bos_token_id].any()
    trained = pre.load_model().word_embeddings().weight  # <pad> is never trained, <s> is
    assert not trained[tokenizer.pad_token_id].any()
    assert not torch.equal(trained[tokenizer.bos_token_id], rows[tokenizer.bos_token_id])
    config = TrainConfig.from_params(
        **TINY_FINE_TUNING,
        data_dir=str(tiny_data_dir),
        tokenizer=str(folder),
        init_from=str(pre.run_dir),
    )
    fine = train(config, cache=tmp_path, progress=False)
    assert fine.init == f"mlm:{pre.final.sha256[:16]}"
    test = model_inputs(make_splits(config.data)["test"])
    scores = multistage_scores(pre, fine, test, batch_size=16)
    assert torch.isfinite(scores).all() and scores.abs().max() > 0
    unmasked = tmp_path / "no-mask"
    word_level_tokenizer(words).save_pretrained(unmasked)
    with pytest.raises(ValueError, match=r"tokenizer=.*has no mask token"):
        tiny_pretrain_config(tiny_data_dir, tokenizer=str(unmasked))


def test_default_training_keys_do_not_name_init_from():
    resolved = config_identity(TrainConfig())
    assert "init_from" not in resolved and "data_dir" not in resolved["data"]


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (dict(model="cnn", init_from="."), "needs model='bert-tiny'"),
        (dict(model="bert-tiny", init_from="/no/such/run"), "does not exist"),
    ],
)
def test_bad_init_from_is_refused(change, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig.from_params(**change)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (dict(mask_prob=0.0), "mask_prob"),
        (dict(n_corpus=0), "n_corpus"),
        (dict(optimizer="lamb"), "optimizer"),
        (dict(checkpoint_epochs=[4]), "checkpoint_epochs"),
    ],
)
def test_bad_pretraining_config_is_refused(change, match):
    with pytest.raises(ValueError, match=match):
        PretrainConfig.from_params(**change)
