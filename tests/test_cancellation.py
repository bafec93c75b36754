from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForSequenceClassification

from tracin_we.core.hf_models import HFClassifier
from tracin_we.core.models import CNNClassifier
from tracin_we.experiments.cancellation import cancellation, layer_groups


def tiny_bert() -> HFClassifier:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=40,
        hidden_size=8,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=16,
        num_labels=3,
    )
    model = BertForSequenceClassification(config)
    model.set_attn_implementation("eager")  # as build_model does: vmap-friendly
    return HFClassifier(model).eval()


def tiny_data(n: int = 6, length: int = 10, vocab: int = 40) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    rows = []
    for i in range(n):
        ids = torch.randint(1, vocab, (length,), generator=g)
        ids[0], ids[1] = 5, 5  # a repeated token
        mask = torch.ones(length, dtype=torch.long)
        mask[length - 1 - i % 3 :] = 0  # padding of varying length
        ids[mask == 0] = 0
        rows.append(
            {
                "input_ids": ids.tolist(),
                "attention_mask": mask.tolist(),
                "token_type_ids": [0] * length,
                "label": i % 3,
            }
        )
    return rows


def brute_force(model, data) -> dict[str, tuple[float, float, float, float]]:
    """Per parameter tensor: (Σ‖g_i‖₁, ‖Σg_i‖₁, Σ‖g_i‖₂, ‖Σg_i‖₂) from one backward per example."""
    grads = {n: [] for n, _ in model.named_parameters()}
    for row in data:
        model.zero_grad()
        batch = {k: torch.tensor([v]) for k, v in row.items() if k != "label"}
        F.cross_entropy(model(**batch), torch.tensor([row["label"]])).backward()
        for n, p in model.named_parameters():
            grads[n].append(p.grad.detach().flatten().clone())
    out = {}
    for n, gs in grads.items():
        g = torch.stack(gs).double()
        out[n] = (
            g.abs().sum().item(),
            g.sum(0).abs().sum().item(),
            g.norm(dim=1).sum().item(),
            g.sum(0).norm().item(),
        )
    return out


@pytest.mark.parametrize(
    "make", [tiny_bert, lambda: CNNClassifier(3, vocab_size=40, embed_dim=6, channels=4).eval()]
)
def test_matches_brute_force_per_tensor_including_sparse_embedding(make):
    model, data = make(), tiny_data()
    table = cancellation(model, None, data, batch_size=4)
    expected = brute_force(model, data)
    tensors = table[table.level == "tensor"].set_index("name")
    assert set(tensors.index) == set(expected)
    # float32 batches of 4 against one backward per example: other summation orders (seen: at
    # most 6% of this tolerance; abs for the key biases, whose gradient is 0 up to ~1e-14).
    for name, (sum_l1, l1_of_sum, sum_l2, l2_of_sum) in expected.items():
        got = tensors.loc[name]
        assert got.sum_l1 == pytest.approx(sum_l1, rel=1e-4, abs=1e-7), name
        assert got.l1_of_sum == pytest.approx(l1_of_sum, rel=1e-4, abs=1e-7), name
        assert got.sum_l2 == pytest.approx(sum_l2, rel=1e-4, abs=1e-7), name
        assert got.l2_of_sum == pytest.approx(l2_of_sum, rel=1e-4, abs=1e-7), name


def test_ratios_are_at_least_one():
    table = cancellation(tiny_bert(), None, tiny_data(8), batch_size=3)
    finite = table[table.l1_of_sum > 0]
    for variant in ("C_l1", "C_l2"):
        assert (finite[variant] >= 1 - 1e-6).all(), variant


def test_ratio_is_one_when_all_gradients_are_parallel_with_the_same_sign():
    data = tiny_data(1) * 5  # five copies of one example: identical gradients
    table = cancellation(tiny_bert(), None, data, batch_size=2)
    # Attention key biases have a zero gradient (softmax ignores a shift): only rounding noise.
    moved = table[table.sum_l1 > 1e-6 * table.sum_l1.max()]
    assert len(moved) > 0.8 * len(table)
    assert moved.C_l1.tolist() == pytest.approx([1.0] * len(moved), rel=1e-5)
    assert moved.C_l2.tolist() == pytest.approx([1.0] * len(moved), rel=1e-5)


def test_groups_run_first_to_last_and_can_be_chosen():
    model = tiny_bert()
    order = list(dict.fromkeys(layer_groups(model).values()))
    assert order[0] == "word_embeddings" and order[-1] == "classifier"
    assert "layer0.attention" in order and "layer1.ffn" in order and "pooler" in order
    table = cancellation(model, None, tiny_data(), groups=["classifier"])
    assert set(table.group) == {"classifier"}
    with pytest.raises(ValueError, match=r"unknown layer names \['layer9'\]"):
        cancellation(model, None, tiny_data(), groups=["layer9"])


def test_float64_model_accumulates_in_its_own_dtype():
    """A float64 model's sums are float64 (its embedding rows once met a float32 accumulator)."""
    model = CNNClassifier(3, vocab_size=40, embed_dim=6, channels=4).double().eval()
    data = tiny_data()
    table = cancellation(model, None, data, batch_size=4)
    tensors = table[table.level == "tensor"].set_index("name")
    for name, (sum_l1, l1_of_sum, _, _) in brute_force(model, data).items():
        assert tensors.loc[name].sum_l1 == pytest.approx(sum_l1, rel=1e-10), name
        assert tensors.loc[name].l1_of_sum == pytest.approx(l1_of_sum, rel=1e-10), name
