"""Multi-stage influence (tracin_we.influence.multistage) against brute force on tiny models."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForSequenceClassification

from tests.conftest import texts
from tracin_we.core.hf_models import HFClassifier
from tracin_we.core.inputs import model_inputs
from tracin_we.core.models import word_embeddings
from tracin_we.influence.multistage import (
    by_domain,
    multistage_influence_function,
    multistage_tracin_we,
)
from tracin_we.training.pretrain import MaskedLM, mask_tokens

V = 120  # vocabulary of the tiny models: conftest.texts uses ids 101-114


def tiny_bert(**changes) -> BertConfig:
    sizes = dict(
        vocab_size=V,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=16,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertConfig(**(sizes | changes))


def perturbed(state: dict, seed: int, scale: float = 0.3) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        k: v + scale * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
        for k, v in state.items()
    }


@pytest.fixture
def two_stages():
    """A tiny masked LM with two checkpoints, a tiny classifier with two states, an MLM corpus of
    6 texts and 4 test texts (labels of 3 classes)."""
    torch.manual_seed(0)
    mlm = MaskedLM(tiny_bert(tie_word_embeddings=False))
    classifier = HFClassifier(BertForSequenceClassification(tiny_bert(num_labels=3)))
    classifier.model.set_attn_implementation("eager")
    base = mlm.state_dict()
    pre = [(perturbed(base, 1), 0.5), (perturbed(base, 2), 0.1)]
    fine = [perturbed(classifier.state_dict(), 3), perturbed(classifier.state_dict(), 4)]
    raw = model_inputs(texts(6, seed=5))
    masked, labels = mask_tokens(
        raw["input_ids"], raw["attention_mask"], [f"t{i}" for i in range(6)], 0, 0.3, 103, V
    )
    corpus = {
        "input_ids": masked,
        "attention_mask": raw["attention_mask"],
        "token_type_ids": raw["token_type_ids"],
        "labels": labels,
    }
    test = model_inputs(texts(4, seed=6))
    return mlm, pre, corpus, classifier, fine, test


def dense_grad(model, loss) -> torch.Tensor:
    weight = word_embeddings(model).weight
    return torch.autograd.grad(loss, weight)[0]


def test_multistage_tracin_we_equals_dense_embedding_gradients(two_stages):
    mlm, pre, corpus, classifier, fine, test = two_stages
    got = multistage_tracin_we(mlm, pre, corpus, classifier, fine, test, batch_size=4)
    mlm.eval()
    classifier.eval()
    test_grads = []
    for j in range(4):
        one = {k: v[j : j + 1] for k, v in test.items()}
        total = 0
        for state in fine:
            classifier.load_state_dict(state)
            logits = classifier(one["input_ids"], one["attention_mask"], one["token_type_ids"])
            total = total + dense_grad(classifier, F.cross_entropy(logits, one["labels"]))
        test_grads.append(total.flatten())
    expected = torch.zeros(4, 6)
    for state, lr in pre:
        mlm.load_state_dict(state)
        for i in range(6):
            one = {k: v[i : i + 1] for k, v in corpus.items()}
            g = dense_grad(mlm, mlm.losses(one).sum()).flatten()
            expected[:, i] += lr * torch.stack([t @ g for t in test_grads])
    assert expected.abs().max() > 1e-4  # the texts share words: not a trivial zero
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-7)


def test_multistage_tracin_we_restores_the_models_and_checks_the_vocabulary(two_stages):
    mlm, pre, corpus, classifier, fine, test = two_stages
    before = {k: v.clone() for k, v in classifier.state_dict().items()}
    multistage_tracin_we(mlm, pre, corpus, classifier.train(), fine[:1], test)
    assert classifier.training
    assert all(torch.equal(before[k], v) for k, v in classifier.state_dict().items())
    other = HFClassifier(BertForSequenceClassification(tiny_bert(num_labels=3, vocab_size=V + 1)))
    with pytest.raises(ValueError, match="share one vocabulary"):
        multistage_tracin_we(mlm, pre, corpus, other, [other.state_dict()], test)


# ---- Chen et al.'s multi-stage influence function on a two-stage ridge problem ----
#
# Pretraining: ℓ_pre(z_i; E, u) = ½‖Eᵀx_i + u − t_i‖² + (λ/2)(‖E‖² + ‖u‖²), x_i bag-of-words counts.
# Fine-tuning (E frozen): L_ft(E, w) = mean_j ½(wᵀEᵀx_j − y_j)² + (μ/2)‖w‖²; test: ½(wᵀEᵀx′ − y′)².
# Both optima have closed forms, so the derivative in ε and leave-one-out are exact.

LAM, MU = 0.1, 0.05


def ridge_problem(n_pre: int = 40, vocab: int = 6, d: int = 2, n_ft: int = 30, n_test: int = 5):
    g = torch.Generator().manual_seed(0)

    def counts(n: int) -> torch.Tensor:
        return torch.randint(0, 3, (n, vocab), generator=g).double()

    x_pre, t_pre = counts(n_pre), torch.randn(n_pre, d, generator=g, dtype=torch.float64)
    x_ft, x_test = counts(n_ft), counts(n_test)
    y_ft = torch.randn(n_ft, generator=g, dtype=torch.float64)
    y_test = torch.randn(n_test, generator=g, dtype=torch.float64)

    def pre_losses(e: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        fit = 0.5 * (x_pre @ e + u - t_pre).pow(2).sum(-1)
        return fit + 0.5 * LAM * (e.pow(2).sum() + u.pow(2).sum())

    def ft_objective(e: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return 0.5 * (x_ft @ e @ w - y_ft).pow(2).mean() + 0.5 * MU * w.pow(2).sum()

    def test_losses(e: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return 0.5 * (x_test @ e @ w - y_test).pow(2)

    def pretrain(weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """argmin Σ_i weights_i ℓ_pre(z_i): weighted ridge on φ_i = [x_i, 1]."""
        phi = torch.cat([x_pre, torch.ones(n_pre, 1, dtype=torch.float64)], 1)
        gram = phi.T @ (weights[:, None] * phi) + LAM * weights.sum() * torch.eye(
            vocab + 1, dtype=torch.float64
        )
        m = torch.linalg.solve(gram, phi.T @ (weights[:, None] * t_pre))
        return m[:vocab], m[vocab]

    def finetune(e: torch.Tensor) -> torch.Tensor:
        h = x_ft @ e
        return torch.linalg.solve(
            h.T @ h / n_ft + MU * torch.eye(d, dtype=torch.float64), h.T @ y_ft / n_ft
        )

    def test_loss_after(weights: torch.Tensor) -> torch.Tensor:
        e, _ = pretrain(weights)
        return test_losses(e, finetune(e))

    return pre_losses, ft_objective, test_losses, pretrain, finetune, test_loss_after, n_pre


def test_multistage_influence_function_is_the_exact_derivative_of_both_stages():
    pre_losses, ft_objective, test_losses, pretrain, finetune, after, n = ridge_problem()
    uniform = torch.full((n,), 1.0 / n, dtype=torch.float64)
    e, u = pretrain(uniform)
    w = finetune(e)
    scores = multistage_influence_function(pre_losses, ft_objective, test_losses, e, u, w)
    assert scores.shape == (5, n)
    h = 1e-6
    for z in (0, 7, 23):
        bump = torch.zeros(n, dtype=torch.float64)
        bump[z] = h
        derivative = (after(uniform + bump) - after(uniform - bump)) / (2 * h)
        # score = −dℓ(z′)/dε (positive = proponent)
        torch.testing.assert_close(scores[:, z], -derivative, rtol=1e-5, atol=1e-9)


def test_multistage_influence_function_predicts_leave_one_out():
    """Removing one of 200 pretraining texts and solving both stages again moves each test loss
    by about +score/n: the same sign where the effect is not tiny, and correlated."""
    pre_losses, ft_objective, test_losses, pretrain, finetune, after, n = ridge_problem(n_pre=200)
    uniform = torch.full((n,), 1.0 / n, dtype=torch.float64)
    e, u = pretrain(uniform)
    scores = multistage_influence_function(pre_losses, ft_objective, test_losses, e, u, finetune(e))
    base = after(uniform)
    actual = torch.stack(
        [
            after(torch.cat([uniform[:z], uniform.new_zeros(1), uniform[z + 1 :]])) - base
            for z in range(n)
        ],
        dim=1,
    )  # (n_test, n): Δℓ(z′) when z is left out of pretraining
    predicted = scores / n  # Δℓ ≈ +score/n
    big = actual.abs() > actual.abs().median()
    assert (torch.sign(predicted[big]) == torch.sign(actual[big])).float().mean() > 0.95
    correlation = torch.corrcoef(torch.stack([predicted.flatten(), actual.flatten()]))[0, 1]
    assert correlation > 0.95


def test_the_fine_tuning_response_matters():
    """Without the W*(E) term (D = ∇_E ℓ′ only) the scores differ: the indirect path is real."""
    pre_losses, ft_objective, test_losses, pretrain, finetune, _, n = ridge_problem()
    e, u = pretrain(torch.full((n,), 1.0 / n, dtype=torch.float64))
    w = finetune(e)
    full = multistage_influence_function(pre_losses, ft_objective, test_losses, e, u, w)
    frozen_w = multistage_influence_function(
        pre_losses, lambda e_, w_: ft_objective(e.detach(), w_), test_losses, e, u, w
    )
    assert not torch.allclose(full, frozen_w, rtol=1e-3)


def test_by_domain_sums_and_averages_blocks():
    domains = ["World", "Sports", "World", "Sci/Tech", "Sports"]
    classes = ["b", "a", "b"]
    scores = torch.tensor(
        [
            [1.0, 2.0, 3.0, 4.0, 5.0],
            [10.0, 20.0, 30.0, 40.0, 50.0],
            [100.0, 200.0, 300.0, 400.0, 500.0],
        ]
    )
    table = by_domain(scores, domains, classes)
    assert list(table.index) == ["Sci/Tech", "Sports", "World"]
    assert list(table.columns) == ["a", "b"]
    assert table.loc["World", "b"] == 1 + 3 + 100 + 300
    assert table.loc["Sports", "a"] == 20 + 50
    assert table.loc["Sci/Tech", "b"] == 4 + 400
    assert table.to_numpy().sum() == pytest.approx(scores.sum().item())
    mean = by_domain(scores, domains, classes, reduce="mean")
    assert mean.loc["World", "b"] == pytest.approx((1 + 3 + 100 + 300) / 4)
    assert mean.loc["Sports", "a"] == pytest.approx(35.0)
    with pytest.raises(ValueError, match="expected"):
        by_domain(scores.T, domains, classes)
    with pytest.raises(ValueError, match="reduce"):
        by_domain(scores, domains, classes, reduce="max")
