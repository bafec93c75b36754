"""TRAK (traker) and EK-FAC (kronfluence) through their libraries, each against an independent
computation on a tiny model: TRAK's formula by autograd without projection, and EK-FAC where it is
exact (one linear output whose residuals all have size 1: the Fisher is then a Kronecker
product, and EK-FAC equals the damped inverse Fisher)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tracin_we.core.models import word_embeddings
from tracin_we.influence.peers import (
    conv1d_as_conv2d,
    default_trak_params,
    ekfac_scores,
    kronfluence_scores,
    trak_scores,
)
from tracin_we.training.model_init import new_model
from tracin_we.training.recipe import TrainConfig

pytest.importorskip("trak")
pytest.importorskip("kronfluence")


class BagOfWords(nn.Module):
    """Mean of word embeddings → Linear: a classifier small enough to check by hand."""

    def __init__(self, vocab: int = 30, dim: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.embeddings = nn.Embedding(vocab, dim, padding_idx=0)
        self.classifier = nn.Linear(dim, classes)

    def word_embeddings(self) -> nn.Embedding:
        return self.embeddings

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        mask = (attention_mask if attention_mask is not None else input_ids > 0).float()
        pooled = (self.embeddings(input_ids) * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return self.classifier(pooled)


def tokens(
    n: int, seed: int, classes: int = 3, vocab: int = 30, length: int = 6
) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (n, length), generator=g)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": torch.randint(0, classes, (n,), generator=g),
    }


def checkpoints(model: nn.Module, n: int) -> list[tuple[dict, float]]:
    """``n`` state dicts, each a random step further; the model is left as it was."""
    start, out = {k: v.clone() for k, v in model.state_dict().items()}, []
    for seed in range(n):
        torch.manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.3 * torch.randn_like(p))
        out.append(({k: v.clone() for k, v in model.state_dict().items()}, 0.1))
    model.load_state_dict(start)
    return out


def margin_grads(model, state, data, names) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example: ∇ of log p/(1−p) w.r.t. ``names`` (n, P), and 1 − p (n,)."""
    model.load_state_dict(state)
    params = dict(model.named_parameters())
    rows, q = [], []
    for i in range(len(data["labels"])):
        logits = model(data["input_ids"][i : i + 1], data["attention_mask"][i : i + 1])[0]
        y = data["labels"][i]
        others = torch.cat([logits[:y], logits[y + 1 :]])
        margin = logits[y] - others.logsumexp(0)
        grads = torch.autograd.grad(margin, [params[n] for n in names])
        rows.append(torch.cat([g.flatten() for g in grads]))
        q.append(1 - logits.softmax(0)[y].detach())
    return torch.stack(rows), torch.stack(q)


def test_trak_equals_its_formula_by_autograd():
    from trak.projectors import NoOpProjector

    torch.manual_seed(0)
    model = BagOfWords()
    states = checkpoints(model, 2)
    train, test = tokens(24, 1), tokens(5, 2)
    names = default_trak_params(model)
    assert names == ["classifier.weight", "classifier.bias"]  # the word embedding left out
    got = trak_scores(
        model, states, train, test, params=names, projector=NoOpProjector(device="cpu")
    )
    n_params = sum(model.get_parameter(n).numel() for n in names)
    total, q_total = 0, 0
    for state, _ in states:
        phi, q = margin_grads(model, state, train, names)
        phi_test, _ = margin_grads(model, state, test, names)
        inverse = torch.linalg.inv(phi.T @ phi)
        total = total + phi_test @ (inverse / inverse.abs().mean()) @ phi.T / n_params
        q_total = q_total + q
    expected = total / len(states) * (q_total / len(states))[None, :]
    assert got.shape == (5, 24)
    torch.testing.assert_close(got, expected, rtol=2e-3, atol=1e-6)
    from trak.gradient_computers import FunctionalGradientComputer  # every parameter's gradient

    full = trak_scores(
        model, states, train, test, params=names, projector=NoOpProjector(device="cpu"),
        gradient_computer=FunctionalGradientComputer,
    )  # fmt: skip
    torch.testing.assert_close(got, full, rtol=1e-5, atol=1e-7)  # the shortcut changes nothing


class Regression(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, 1)

    def forward(self, x):
        return self.linear(x).squeeze(-1)


class Rows(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


def regression_task():
    from kronfluence.task import Task

    class Squared(Task):
        def compute_train_loss(self, batch, model, sample=False):
            return 0.5 * ((model(batch["x"]) - batch["y"]) ** 2).sum()

        def compute_measurement(self, batch, model):
            return self.compute_train_loss(batch, model)

    return Squared()


def test_ekfac_equals_the_damped_inverse_fisher_where_it_is_exact():
    torch.manual_seed(0)
    n, dim, damping = 64, 3, 0.05
    model = Regression(dim)
    x, sign = torch.randn(n, dim), torch.randint(0, 2, (n,)).float() * 2 - 1
    with torch.no_grad():
        y = model(x) - sign  # every residual f(x) − y is ±1: the Fisher is A ⊗ 1 exactly
    x_test = torch.randn(4, dim)
    with torch.no_grad():
        y_test = model(x_test) - torch.randn(4)
    got = kronfluence_scores(
        model, regression_task(), Rows(x, y), Rows(x_test, y_test), damping=damping,
        empirical_fisher=True, batch_size=16,
    )  # fmt: skip

    def grads(inputs, targets):  # per example ∇ 0.5 (f − y)² = (f − y) [x, 1]
        with torch.no_grad():
            residual = model(inputs) - targets
        return residual[:, None] * torch.cat([inputs, torch.ones(len(inputs), 1)], 1)

    g_train, g_test = grads(x, y), grads(x_test, y_test)
    fisher = g_train.T @ g_train / n
    expected = g_test @ torch.linalg.solve(fisher + damping * torch.eye(dim + 1), g_train.T)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def cnn() -> nn.Module:
    config = TrainConfig.from_params(model="cnn", n_train=40, n_val=0, n_test=10, max_length=16)
    return new_model(config)[0].eval()


def test_the_cnns_convolutions_run_as_conv2d_with_the_same_outputs():
    model, ids = cnn(), torch.randint(1, 30522, (3, 16))
    converted = conv1d_as_conv2d(model)
    assert not any(isinstance(m, nn.Conv1d) for m in converted.modules())
    assert word_embeddings(converted).weight.data_ptr() != word_embeddings(model).weight.data_ptr()
    torch.testing.assert_close(converted(ids), model(ids), rtol=1e-5, atol=1e-6)


def test_ekfac_on_the_cnn_ranks_an_example_its_own_proponent():
    torch.manual_seed(0)
    model = cnn()
    train = tokens(32, 3, classes=4, vocab=30522, length=16)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    got = ekfac_scores(model, state, train, {k: v[:6] for k, v in train.items()}, damping=1e-3)
    assert got.shape == (6, 32) and torch.isfinite(got).all()
    assert (got[torch.arange(6), torch.arange(6)] > 0).all()  # ∇ℓᵀ (G + λI)⁻¹ ∇ℓ > 0


def test_scores_api_runs_both_and_refuses_what_they_lack():
    from tracin_we.influence import scores, self_influence

    torch.manual_seed(0)
    model = BagOfWords()
    states = checkpoints(model, 2)
    train, test = tokens(24, 1), tokens(5, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}  # not a checkpoint's
    trak = scores("trak", model, states, train, test, proj_dim=8, progress=False)
    ekfac = scores("ekfac", model, states, train, test, ekfac_damping=0.01, progress=False)
    assert trak.shape == ekfac.shape == (5, 24)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # restored
    torch.testing.assert_close(ekfac, ekfac_scores(model, states[-1][0], train, test, 0.01))
    one = scores("trak", model, states[:1], train, test, proj_dim=8, progress=False)
    assert one.shape == (5, 24) and torch.isfinite(one).all()  # one checkpoint: one model
    with pytest.raises(
        ValueError, match=r"proj_dim=16 must be <= the 24 training texts and the 15"
    ):
        scores("trak", model, states, train, test, proj_dim=16)
    with pytest.raises(ValueError, match="has no self-influence"):
        self_influence("trak", model, states, train)
    with pytest.raises(ValueError, match="proj_dim=0 must be a positive integer"):
        scores("trak", model, states, train, test, proj_dim=0)
    with pytest.raises(ValueError, match=r"ekfac_damping=-1\.0 must be None or > 0"):
        scores("ekfac", model, states, train, test, ekfac_damping=-1.0)
