from __future__ import annotations

import pytest
import torch

from tracin_we.experiments.noise import aggregate, auc_ndr, ndr_at, ndr_curve, ranks


def test_ndr_counts_flipped_examples_by_hand():
    score = torch.tensor([0.5, -2.0, 0.1, -1.0, 3.0, -0.5, 0.0, 2.0, 1.0, -3.0])
    noisy = torch.tensor([0, 1, 0, 0, 1, 1, 0, 0, 0, 0], dtype=torch.bool)
    # ascending: idx 9 (-3), 1 (-2, noisy), 3 (-1), 5 (-0.5, noisy), 6, 2, 0, 8, 7, 4 (noisy)
    assert ndr_curve(score, noisy).tolist() == pytest.approx(
        [0, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3, 1]
    )
    assert ndr_at(score, noisy, 0.3) == pytest.approx(1 / 3)  # lowest 3: idx 9, 1, 3
    assert ndr_at(score, noisy, 0.4) == pytest.approx(2 / 3)


def test_auc_ndr_is_one_for_a_perfect_ranking_and_lower_otherwise():
    noisy = torch.tensor([1, 1, 0, 0, 0, 0, 0, 0, 0, 0], dtype=torch.bool)
    assert auc_ndr(torch.arange(10.0), noisy) == pytest.approx(1.0)
    worst = auc_ndr(-torch.arange(10.0), noisy)
    # found after 9 and 10 inspected: curve sum 0.5 + 1 = 1.5; ideal: 0.5 + 9 * 1 = 9.5
    assert worst == pytest.approx(1.5 / 9.5)


def test_rank_and_vote_match_hand_computed_examples():
    columns = torch.tensor([[3.0, 0.0], [1.0, 2.0], [2.0, 1.0], [0.0, 3.0], [4.0, 4.0]])
    assert ranks(columns[:, 0]).tolist() == [3, 1, 2, 0, 4]
    assert ranks(columns[:, 1]).tolist() == [0, 2, 1, 3, 4]
    assert aggregate(columns, "rank").tolist() == [1.5, 1.5, 1.5, 1.5, 4.0]
    # T = round(0.2 * 5) = 1: only rank 0 of each column votes, with weight 1
    assert aggregate(columns, "vote").tolist() == [-1.0, 0.0, 0.0, -1.0, 0.0]
    assert aggregate(columns, "mean").tolist() == [1.5, 1.5, 1.5, 1.5, 4.0]


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="how='median'; allowed"):
        aggregate(torch.zeros(3, 2), "median")
    with pytest.raises(ValueError, match="marks no example"):
        ndr_curve(torch.zeros(3), torch.zeros(3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"fraction=0 must be in \(0, 1\]"):
        ndr_at(torch.zeros(3), torch.tensor([True, False, False]), 0)


def test_ndr_table_has_each_column_and_each_aggregation():
    from tracin_we.experiments.noise import ndr_table

    noisy = torch.tensor([1, 0, 0, 1, 0, 0, 0, 0, 0, 0], dtype=torch.bool)
    columns = {"a": torch.arange(10.0), "b": -torch.arange(10.0)}
    table = ndr_table(columns, noisy, fraction=0.3).set_index("column")
    assert list(table.index) == ["a", "b", "agg:mean", "agg:rank", "agg:vote"]
    assert table.loc["a", "NDR@30%"] == ndr_at(columns["a"], noisy, 0.3) == 0.5
    assert table.loc["b", "AUC-NDR"] == pytest.approx(auc_ndr(columns["b"], noisy))
