"""The no-word-overlap experiment: least-overlap candidates, deletion restricted to them, and a
tiny pooled sweep (CNN with frozen embeddings, 32 synthetic texts, 4 test points)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from tracin_we import influence
from tracin_we.core.inputs import CLS_ID, SEP_ID
from tracin_we.core.persistence import CheckpointError
from tracin_we.experiments.deletion import auc_del, run_deletion
from tracin_we.experiments.overlap import (
    least_overlap_candidates,
    overlap_summary,
    paper_comparison,
    restrict_to_candidates,
    run_no_overlap,
)
from tracin_we.influence.last_layer import tfidf_cosine

N_TRAIN, N_TEST = 32, 16
# conftest's splits, cnn_config, deletion_config: frozen word embeddings, one k, one seed.
SPLITS = {"n_train": N_TRAIN, "n_test": N_TEST, "noise_ids": 60}
RECIPE = {"freeze_embeddings": True}
SWEEP = {"ks": (3,), "seeds": (0,)}


def texts(rows: list[list[int]], length: int = 6) -> dict[str, torch.Tensor]:
    """[CLS] + ids + [SEP], padded with [PAD] to ``length``."""
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row) + 2] = torch.tensor([CLS_ID, *row, SEP_ID])
    return {"input_ids": ids, "attention_mask": (ids != 0).long()}


def test_least_overlap_candidates_by_hand():
    train = texts([[5, 6], [9], [5, 7], [7, 8, 10, 11], [6, 9, 9]])
    test = texts([[5, 6]])
    # Cosines to the test text: 1, 0, > 0, 0, > 0; [CLS]/[SEP]/[PAD] (shared by all) ignored.
    assert least_overlap_candidates(train, test, 0.2).tolist() == [
        [False, True, False, False, False]
    ]  # tie: lower index
    assert least_overlap_candidates(train, test, 0.4).tolist() == [
        [False, True, False, True, False]
    ]
    assert least_overlap_candidates(train, test, 1.0).all()
    # Counting [CLS]/[SEP] as words, the one-word text [9] overlaps more than the four-word one.
    with_specials = least_overlap_candidates(train, test, 0.2, ignore=(0,))
    assert with_specials.tolist() == [[False, False, False, True, False]]
    summary = overlap_summary(train, test, least_overlap_candidates(train, test, 0.4))
    assert summary.loc[0, "candidates_sharing_no_word"] == 2
    assert summary.loc[0, "candidate_max_cosine"] == 0.0


def test_least_overlap_candidates_rank_by_cosine():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 1040, (40, 10), generator=g)
    train, test = (
        {"input_ids": ids[:30], "attention_mask": torch.ones(30, 10)},
        {"input_ids": ids[30:], "attention_mask": torch.ones(10, 10)},
    )
    candidates = least_overlap_candidates(train, test, 0.2)
    assert (candidates.sum(1) == 6).all()
    cosine = tfidf_cosine(train, test, ())
    inside = cosine.masked_fill(~candidates, -1).max(1).values
    outside = cosine.masked_fill(candidates, 2).min(1).values
    assert (inside <= outside).all()


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, 0.01])
def test_candidate_fraction_refused(fraction):
    train = texts([[5], [6], [7]])
    with pytest.raises(ValueError, match=f"candidate_fraction={fraction}"):
        least_overlap_candidates(train, texts([[5]]), fraction)


@pytest.mark.parametrize("direction", ["proponents", "opponents"])
def test_restricted_top_k_is_the_top_k_among_candidates(direction):
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(5, 50, generator=g)
    candidates = torch.rand(5, 50, generator=g) < 0.3
    candidates[:, :10] = True  # at least 10 per row
    k = int(candidates.sum(1).min())
    proponents = direction == "proponents"
    chosen = influence.top_k(
        restrict_to_candidates(scores, candidates, direction), k, proponents=proponents
    ).indices
    for row in range(5):
        allowed = torch.nonzero(candidates[row]).flatten()
        order = torch.sort(scores[row, allowed], descending=proponents, stable=True).indices
        assert chosen[row].tolist() == allowed[order[:k]].tolist()
    with pytest.raises(ValueError, match="direction='up'"):
        restrict_to_candidates(scores, candidates, "up")


def test_no_overlap_sweep(splits, tmp_path, deletion_config, count_retrains):
    config = deletion_config()
    with count_retrains() as trained:
        result = run_no_overlap(
            config, splits, candidate_fraction=0.25, cache=tmp_path, progress=False
        )
    deletion = result.deletion
    assert result.candidates.shape == (4, N_TRAIN) and (result.candidates.sum(1) == 8).all()
    assert len(deletion.plan) == 4 * 2 * 2  # points × methods × directions (one k)
    for row in deletion.plan.itertuples():
        assert all(result.candidates[row.position, i] for i in row.removed), row
    # The baseline (seed 0, nothing removed) is trained once and shared by both directions.
    assert sum(job.removed == () for job in trained) == 1
    assert deletion.n_trained == len(trained)
    assert set(deletion.table["direction"]) == {"proponents", "opponents"}
    torch.testing.assert_close(
        torch.tensor(deletion.summary[["DEL+", "DEL-"]].to_numpy(dtype=float)),
        torch.tensor(auc_del(deletion.table, config)[["DEL+", "DEL-"]].to_numpy(dtype=float)),
    )
    one_way = run_deletion(
        replace(config, directions=("opponents",)),
        splits,
        scores={},
        cache=tmp_path,
        progress=False,
    )
    unrestricted = set(one_way.plan["removed"])
    restricted = set(deletion.plan.loc[deletion.plan["direction"] == "opponents", "removed"])
    assert unrestricted != restricted  # the restriction changed the deleted sets
    assert (deletion.out_dir / "auc_del.csv").is_file()
    assert set(result.sweeps) == {"proponents", "opponents"}
    table = paper_comparison(deletion.summary)
    assert table.loc["tracin-we", "paper DEL+"] == -0.033
    assert table["paper DEL-"].isna().loc["random"]


def test_no_overlap_out_dir_is_claimed_like_every_evaluation(splits, tmp_path, deletion_config):
    """``out_dir`` holds the pooled tables; another run's folder is refused unless ``overwrite``,
    a folder with a file tracin-we did not write always (retrains are cached: reruns are fast)."""
    run = lambda fraction, **kw: run_no_overlap(  # noqa: E731
        deletion_config(), splits, candidate_fraction=fraction, cache=tmp_path, progress=False,
        out_dir=tmp_path / "mine", **kw,
    )  # fmt: skip
    first = run(0.25)
    assert first.deletion.out_dir == tmp_path / "mine"
    assert (tmp_path / "mine" / "auc_del.csv").is_file()
    with pytest.raises(CheckpointError, match="holds another no-overlap run"):
        run(0.5)
    run(0.5, overwrite=True)
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match=r"did not write \(\['notes\.txt'\]\)"):
        run(0.25, overwrite=True)


def test_k_above_the_candidates_refused(splits, tmp_path, deletion_config):
    with pytest.raises(ValueError, match=r"ks=\[9\]: each k must be <= the 8 candidates"):
        run_no_overlap(
            deletion_config(ks=(9,)),
            splits,
            candidate_fraction=0.25,
            cache=tmp_path,
            progress=False,
        )
