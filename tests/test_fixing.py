"""Targeted fixing: mistake selection, word influence, training-set edits, cached retrains and
the end-to-end run on synthetic token data (CNN, 48 training texts of 12 tokens, 2 epochs)."""

from __future__ import annotations

import json
from dataclasses import replace

import pandas as pd
import pytest
import torch
from datasets import DatasetDict

from tracin_we import influence
from tracin_we.core.inputs import CLS_ID, SEP_ID, model_inputs
from tracin_we.core.persistence import CheckpointError
from tracin_we.experiments import fixing
from tracin_we.experiments.fixing import (
    FixingConfig,
    fixed_share,
    fixing_plan,
    retrain_edits,
    run_fixing,
)
from tracin_we.experiments.fixing_edits import (
    Edit,
    apply_edit,
    most_negative_word,
    select_mistakes,
    worst_words,
)
from tracin_we.influence.attribution import influence_last_positions, influence_last_vectors
from tracin_we.training.loop import predict_proba
from tracin_we.training.train import train

N, T = 48, 12
# conftest's splits and cnn_config: [CLS] ... [SEP] [PAD] texts whose label-revealing token shows
# the right class 3 times in 4, so a short training leaves mistakes; 2 epochs at lr 0.05.
SPLITS = {"n_train": N, "n_test": 32, "flip": 0.25, "framed": True}
RECIPE = {"epochs": 2, "lr": 0.05, "checkpoint_epochs": [1, 2]}


@pytest.fixture(scope="module")
def trained(splits, tmp_path_factory, cnn_config):
    result = train(cnn_config(), splits, cache=tmp_path_factory.mktemp("cache"), progress=False)
    return result.load_model(), result.checkpoint_pairs()


def tensors(splits: DatasetDict, name: str) -> dict[str, torch.Tensor]:
    return model_inputs(splits[name])


# ---- selection and validation ------------------------------------------------------------


def test_select_mistakes_by_hand():
    probs = torch.tensor(
        [
            [0.6, 0.4],  # label 1: wrong, p 0.4 → a mistake
            [0.2, 0.8],  # label 1: right
            [0.9, 0.1],  # label 1: wrong, p 0.1 < 0.3
            [0.65, 0.35],  # label 1: wrong, p 0.35 → a mistake
            [0.3, 0.7],  # label 0: wrong, p 0.3 (the bound) → a mistake
            [0.5, 0.5],  # label 0: argmax picks 0 → right
        ]
    )
    labels = torch.tensor([1, 1, 1, 1, 0, 0])
    assert select_mistakes(probs, labels, 10) == [0, 3, 4]
    assert select_mistakes(probs, labels, 2) == [0, 3]
    assert select_mistakes(probs, labels, 10, p_range=(0.36, 0.7)) == [0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_mistakes": 0}, "n_mistakes=0 must be a positive integer"),
        ({"p_range": (0.7, 0.3)}, r"p_range=\[0.7, 0.3\] must be \[low, high\]"),
        ({"p_range": (0.45, 0.5)}, r"p_range=\[0.45, 0.5\]: no test point is a mistake"),
    ],
)
def test_select_mistakes_refuses(kwargs, message):
    probs, labels = torch.tensor([[0.6, 0.4], [0.2, 0.8]]), torch.tensor([1, 1])
    with pytest.raises(ValueError, match=message):
        select_mistakes(probs, labels, **({"n_mistakes": 3} | kwargs))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"k": 0}, r"k=0 must be an integer with 0 < k < n_train=48"),
        ({"k": -3}, "k=-3"),
        ({"k": 48}, "k=48"),
        ({"n_mistakes": 0}, "n_mistakes=0"),
        ({"top_tokens": 0}, "top_tokens=0"),
        ({"p_range": (0.3, 1.5)}, "p_range="),
        ({"methods": ("tracin-last",)}, r"methods=\['tracin-last'\]"),
        ({"fixes": ()}, "fixes="),
        ({"seeds": (1, 1)}, "seeds="),
        ({"damping": -1.0}, "damping="),
    ],
)
def test_config_refuses_bad_values(changes, message, cnn_config):
    with pytest.raises(ValueError, match=message):
        FixingConfig(**({"train": cnn_config(), "k": 5} | changes))


def test_config_from_flat_parameters():
    config = FixingConfig.from_params(model="cnn", n_train=N, k=5, seeds=[0, 1], p_range=[0.2, 0.8])
    assert config.train.model == "cnn" and config.k == 5 and config.seeds == (0, 1)
    assert config.p_range == (0.2, 0.8)
    with pytest.raises(ValueError, match="unknown parameters"):
        FixingConfig.from_params(n_opponents=5)


# ---- word influence ----------------------------------------------------------------------


def test_most_negative_word():
    ids = torch.tensor([CLS_ID, 5, 6, 7, SEP_ID])
    words = pd.DataFrame(
        {"start": [0, 1, 2, 4], "end": [1, 2, 4, 5], "contribution": [-9.0, 0.5, -0.2, -5.0]}
    )
    worst = most_negative_word(words, ids, (CLS_ID, SEP_ID))
    assert (worst["start"], worst["end"]) == (2, 4)  # [CLS] and [SEP] are never chosen
    negative = words.assign(contribution=[-1.0, 0.5, 0.1, -1.0])
    assert most_negative_word(negative, ids, (CLS_ID, SEP_ID)) is None


@pytest.mark.parametrize("method", ["tracin-we-topk", "influence-last"])
def test_worst_words_pick_the_most_negative_word(splits, trained, method):
    model, checkpoints = trained
    train_t, test_t = tensors(splits, "train"), tensors(splits, "test")
    test_t = {k: v[:2] for k, v in test_t.items()}
    opponents = torch.tensor([[3, 7], [0, 11]])
    table = worst_words(method, model, checkpoints, train_t, test_t, opponents, top_tokens=4)
    assert list(table["train_index"]) == [3, 7, 0, 11]
    chosen = table[table["start"] >= 0]
    assert len(chosen) and (chosen["contribution"] < 0).all()
    assert (chosen["end"] - chosen["start"] == 1).all()  # no tokenizer: a word is a position
    row = chosen.iloc[0]
    i, j = int(row["train_index"]), int(row["test_row"])
    if method == "influence-last":
        # The positions of test j's opponents as worst_words computes them, in one batch: the
        # same computation, so the argmin compares bitwise-equal values (a batch of one text
        # may round differently and swap near-tied positions).
        vector = influence_last_vectors(model, checkpoints, train_t, test_t)[j]
        rank = int(row["rank"])
        positions = influence_last_positions(
            model, checkpoints, {k: v[opponents[j]] for k, v in train_t.items()}, vector
        ).positions[rank]
    else:
        example = {k: v[i].tolist() for k, v in train_t.items()}
        words = influence.word_scores(
            model, checkpoints, example, {k: v[j].tolist() for k, v in test_t.items()}, top_tokens=4
        ).words
        positions = torch.zeros(T).index_put_(
            (torch.tensor(words["start"].values),),
            torch.tensor(words["contribution"].values).float(),
        )
    ids = train_t["input_ids"][i]
    allowed = (ids != CLS_ID) & (ids != SEP_ID) & (train_t["attention_mask"][i] == 1)
    assert int(row["start"]) == int(positions.masked_fill(~allowed, float("inf")).argmin())


# ---- edits and retrains -------------------------------------------------------------------


def test_edit_replaces_exactly_the_chosen_positions(splits):
    train_t = tensors(splits, "train")
    edit = Edit(masked=((5, 2, 4), (9, 1, 2)))
    edited = apply_edit(train_t, edit)
    changed = torch.zeros(N, T, dtype=torch.bool)
    changed[5, 2:4] = changed[9, 1] = True
    assert (edited["input_ids"][changed] == 0).all()
    assert (edited["attention_mask"][changed] == 0).all()
    for key in ("input_ids", "attention_mask"):
        assert torch.equal(edited[key][~changed], train_t[key][~changed])
    assert (train_t["input_ids"][changed] != 0).all()  # the input is left as it was
    assert torch.equal(edited["labels"], train_t["labels"])
    assert apply_edit(train_t, Edit(removed=(1, 2))) is train_t  # removal is the job's keep mask
    # Another tokenizer's [PAD] (RoBERTa's is 1; its 0 is <s>) is what the edit writes.
    roberta = apply_edit(train_t, Edit(masked=edit.masked, pad_id=1))
    assert (roberta["input_ids"][changed] == 1).all()
    assert torch.equal(roberta["attention_mask"], edited["attention_mask"])
    with pytest.raises(ValueError, match="outside the training tensors"):
        apply_edit(train_t, Edit(masked=((N, 0, 1),)))
    with pytest.raises(ValueError, match="0 <= start < end"):
        Edit(masked=((1, 3, 3),))


def test_no_edit_reproduces_the_baseline_and_retrains_are_cached(
    splits, tmp_path, cnn_config, count_retrains
):
    config = cnn_config()
    train_t, test_t = tensors(splits, "train"), tensors(splits, "test")
    original = predict_proba(
        train(config, splits, cache=tmp_path, progress=False).load_model(), test_t
    )
    edits = [Edit(), Edit(removed=(0, 1, 2)), Edit(masked=((0, 1, 3),))]
    with count_retrains() as trained:
        first = retrain_edits(
            config, edits, [config.seed, 1], train_t, test_t, tmp_path, n_workers=1, progress=False
        )
    assert first.shape == (3, 2, 32, 4) and len(trained) == 6
    # Bitwise: the seed-0 retrain of nothing is train()'s fit, step for step, on one torch thread
    # (the worker's threads=1, conftest's here); that it updates only the present embedding rows
    # changes no bit (test_train: present_rows_only).
    torch.testing.assert_close(first[0, 0], original, rtol=0, atol=0)
    assert not torch.equal(first[1, 0], first[0, 0])
    assert not torch.equal(first[2, 0], first[0, 0])
    with count_retrains() as trained:
        again = retrain_edits(
            config, edits[::-1], [1, config.seed], train_t, test_t, tmp_path, 1, progress=False
        )
    assert trained == []  # all read back
    torch.testing.assert_close(again, first.flip(0, 1), rtol=0, atol=0)


def test_plan_and_share(splits):
    opponents = {"influence-last": torch.tensor([[4, 2], [7, 8]])}
    words = {
        "influence-last": pd.DataFrame(
            {
                "test_row": [0, 0, 1, 1],
                "rank": [0, 1, 0, 1],
                "train_index": [4, 2, 7, 8],
                "start": [3, -1, 1, 5],
                "end": [5, -1, 2, 6],
                "word": ["a", None, "b", "c"],
                "contribution": [-1.0, float("nan"), -0.5, -0.1],
            }
        )
    }
    plan = fixing_plan([10, 20], opponents, words, ("remove", "replace"))
    by_key = {(r.point, r.method, r.fix): r for r in plan.itertuples()}
    assert by_key[(10, "control", "none")].edit == Edit()
    assert by_key[(10, "influence-last", "remove")].edit == Edit(removed=(2, 4))
    assert by_key[(10, "influence-last", "replace")].edit == Edit(masked=((4, 3, 5),))
    assert by_key[(20, "influence-last", "replace")].n_edited == 2
    plan = fixing_plan([10, 20], opponents, words, ("replace",), pad_id=1)
    assert {r.edit.pad_id for r in plan.itertuples() if r.fix == "replace"} == {1}
    table = pd.DataFrame(
        {
            "method": ["m"] * 4,
            "fix": ["f"] * 4,
            "point": [1, 1, 2, 2],
            "fixed": [True, True, True, False],
            "p_true": [0.6, 0.7, 0.5, 0.2],
            "p_control": [0.4, 0.4, 0.4, 0.4],
            "n_edited": [3] * 4,
            "fixed_control": [False, True, False, False],
        }
    )
    share = fixed_share(table).iloc[0]
    assert share["share_fixed"] == 0.75 and share["mistakes_fixed"] == 0.5
    assert share["newly_fixed"] == 0.5
    assert share["mean_dp"] == pytest.approx(0.1) and share["n_retrains"] == 4


class PadsWithOne:
    """BERT's tokenizer, but padding with id 1 (as RoBERTa's <pad>): what run_fixing must write."""

    pad_token_id = 1

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def __getattr__(self, name: str):
        return getattr(self.tokenizer, name)


def test_run_fixing_end_to_end(splits, tmp_path, cnn_config, count_retrains, monkeypatch):
    config = FixingConfig(
        train=cnn_config(), n_mistakes=2, p_range=(0.0, 1.0), k=3, seeds=(0, 1), n_workers=1
    )
    real_tokenizer = fixing.load_tokenizer
    monkeypatch.setattr(fixing, "load_tokenizer", lambda name: PadsWithOne(real_tokenizer(name)))
    with count_retrains() as trained:
        result = run_fixing(config, splits, cache=tmp_path, progress=False)
    assert len(result.mistakes) == 2
    replaced = result.plan.loc[result.plan["fix"] == "replace", "edit"]
    assert len(replaced) == 4 and {edit.pad_id for edit in replaced} == {1}  # the tokenizer's
    probs = predict_proba(
        train(config.train, splits, cache=tmp_path).load_model(), tensors(splits, "test")
    )
    labels = tensors(splits, "test")["labels"]
    assert all(probs[m].argmax() != labels[m] for m in result.mistakes)
    # 2 mistakes × (control + 2 methods × 2 fixes) × 2 seeds; the control is one set per seed.
    assert len(result.table) == 2 * 5 * 2
    assert set(result.summary["method"]) == {"control", "tracin-we-topk", "influence-last"}
    control = result.table[(result.table["method"] == "control") & (result.table["seed"] == 0)]
    # Seed 0 is the trained model itself, bitwise: the same fit on one torch thread, here
    # (conftest) and in the workers (retrain_edits: threads=1).
    assert not control["fixed"].any()
    assert (result.summary.loc[result.summary["method"] == "control", "newly_fixed"] == 0).all()
    assert (result.summary["newly_fixed"] <= result.summary["share_fixed"]).all()
    assert len(trained) == len(
        {(r.edit, s) for r in result.plan.itertuples() for s in config.seeds}
    )
    assert (result.out_dir / "fixing.csv").is_file()
    assert json.loads((result.out_dir / "mistakes.json").read_text())["mistakes"] == result.mistakes
    metrics = result.metrics()  # what notebook 05 records
    control = result.summary.set_index(["method", "fix"]).loc[("control", "none")]
    assert metrics["n_mistakes"] == 2 and metrics["control_share_fixed"] == control["share_fixed"]
    assert json.loads(json.dumps(metrics)) == metrics
    # out_dir is claimed as every evaluation's: before any work, another run refused.
    mine = tmp_path / "mine"
    again = run_fixing(config, splits, cache=tmp_path, progress=False, out_dir=mine)
    assert again.out_dir == mine and again.mistakes == result.mistakes
    other = replace(config, seeds=(0,))
    monkeypatch.setattr(fixing, "train", lambda *a, **k: pytest.fail("work before the claim"))
    with pytest.raises(CheckpointError, match="holds another fixing run"):
        run_fixing(other, splits, cache=tmp_path, progress=False, out_dir=mine)
