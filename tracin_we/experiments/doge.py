"""DoGE domain reweighting of MLM pretraining towards a fine-tuning target.

DoGE (Fan, Pagliardini, Jaggi 2023, "DoGE: Domain Reweighting with Generalization Estimation",
arXiv 2310.15393, §2 eq. 4–6 and the reference trainer ``update_domain_weights`` of
github.com/Olivia-fsm/DoGE, ``src/trainer.py``). Pretraining domains i = 1..k (here: the corpus
texts' categories, ``pretrain.pretraining_corpus``) keep weights α ∈ Δ_k. Each step t:

1. one gradient per domain, g_i = ∇_θ L_MLM(B_i; θ_t) on a mini-batch B_i of domain i, and the
   target's, g_T = ∇_θ L_MLM(B_T; θ_t) (B_T: see *Target* below); θ = every trained weight;
2. scores W_i = η_t · Σ_{j ∈ target} ⟨g_i, g_j⟩ (one target gradient here), divided by the mean
   domain-gradient norm (1/k) Σ_i ‖g_i‖ (+1e-6), and clipped to [η_t·dw_min, η_t·dw_max];
3. log α ← log α + W/μ (mirror descent with the Bregman step 1/μ);
4. α ← softmax(log α), then smoothed α ← (1 − ε) α + ε/k;
5. the model steps on Σ_i α_i g_i with the new α (the reference's ``add_model_grad_ls``).

Reference defaults: μ = 0.05, dw_min = 0, dw_max = 5, ε = 0. With dw_min = 0 a domain whose
gradient opposes the target's scores 0, like an orthogonal one: both lose weight only relative to
the aligned domains (through the softmax). The reference skips ⟨g_i, g_i⟩ when the target is a
training domain; here the target is never a pretraining domain (its texts are not in the corpus).
The weights reported for a later pretraining run are the mean of α over the steps (the
reference's ``avg_dw``), as DoGE's §3 retrains on them.

**Target.** The fine-tuning task is a classifier, but DoGE needs the gradient of a loss on the
model being pretrained: g_T is the MLM loss gradient on the fine-tuning *train* texts of the target
subtask (``target_tensors``, masked as the corpus, ``pretrain.mlm_tensors``) — the OOD-target
setting of DoGE §4 ("generalise to a domain not trained on"). No evaluated test point is used.

**Domains at the same budget** (``mixture_keep``): the corpus texts a pretraining run on weights
α keeps: n texts, round(α_i n) of domain i (largest remainder, capped by what the domain holds,
the rest given to the domains with texts left in order of α), drawn with a seeded generator.
Uniform α gives the baseline at the same number of texts (= the same token budget up to the
texts' lengths).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from tracin_we.core.inputs import Tensors, select
from tracin_we.core.params import check_types
from tracin_we.training.recipe import Recipe

_NO_GRADIENT = {"grad_norm": float("nan"), "cosine": float("nan")}  # step 0: the start


@dataclass(frozen=True)
class DogeStep:
    """One DoGE update: the new ``weights`` α (k,) and the clipped ``scores`` W (k,)."""

    weights: torch.Tensor
    scores: torch.Tensor


def doge_update(
    weights: torch.Tensor,
    domain_grads: torch.Tensor,
    target_grads: torch.Tensor,
    lr: float,
    mu: float = 0.05,
    dw_min: float = 0.0,
    dw_max: float = 5.0,
    eps: float = 0.0,
) -> DogeStep:
    """Steps 2–4 of the module docstring. ``weights``: α (k,), positive, summing to 1;
    ``domain_grads``: g_i (k, P); ``target_grads``: g_j (m, P) or (P,); ``lr``: η_t."""
    if target_grads.ndim == 1:
        target_grads = target_grads[None]
    if weights.ndim != 1 or domain_grads.shape[0] != len(weights):
        raise ValueError(
            f"weights {tuple(weights.shape)} and domain_grads {tuple(domain_grads.shape)}: "
            "need (k,) and (k, P)"
        )
    if target_grads.shape[-1] != domain_grads.shape[-1]:
        raise ValueError(
            f"target_grads has {target_grads.shape[-1]} parameters, domain_grads "
            f"{domain_grads.shape[-1]}"
        )
    # the k x m inner products in the gradients' dtype (float32: P is millions), the rest float64
    scores = lr * (domain_grads @ target_grads.T).double().sum(-1)
    scores = scores / (domain_grads.norm(dim=-1).double().mean() + 1e-6)
    scores = scores.clamp(lr * dw_min, lr * dw_max)
    new = torch.softmax(weights.double().log() + scores / mu, dim=-1)
    new = (1 - eps) * new + eps / len(new)
    return DogeStep(new, scores)


@dataclass(frozen=True)
class DogeSettings:
    """DoGE's knobs (module docstring); reference defaults."""

    doge_steps: int = 50  # weight updates (each takes k + 1 gradients)
    doge_batch: int = 8  # texts per domain (and target) mini-batch
    mu: float = 0.05  # Bregman step: log α += W / mu
    dw_min: float = 0.0  # score clip, in units of the learning rate
    dw_max: float = 5.0
    reweight_eps: float = 0.0  # smoothing towards uniform

    def __post_init__(self) -> None:
        check_types(self)
        for name in ("doge_steps", "doge_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be a positive integer")
        if not self.mu > 0:
            raise ValueError(f"mu={self.mu} must be > 0")
        if not self.dw_min <= self.dw_max:
            raise ValueError(f"dw_min={self.dw_min} must be <= dw_max={self.dw_max}")
        if not 0 <= self.reweight_eps < 1:
            raise ValueError(f"reweight_eps={self.reweight_eps} must be in [0, 1)")


@dataclass
class DogeResult:
    """``history``: one row per (step, domain) with ``weight`` α, ``score`` W, the domain
    gradient's ``grad_norm`` ‖g_i‖ and its ``cosine`` with g_T (step 0: the uniform start, no
    gradient); ``average``: mean α over steps 1..T per domain (the weights to pretrain on);
    ``final``: α after the last step; ``state``: the DoGE-trained model's weights."""

    history: pd.DataFrame
    average: dict[str, float]
    final: dict[str, float]
    state: dict[str, torch.Tensor]


def flat_grad(model: nn.Module, loss: torch.Tensor, params: list[nn.Parameter]) -> torch.Tensor:
    """∇ loss over ``params``, flattened and concatenated (P,); zeros for unused parameters."""
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.cat(
        [
            (g if g is not None else torch.zeros_like(p)).flatten()
            for g, p in zip(grads, params, strict=True)
        ]
    )


def run_doge(
    model: nn.Module,
    corpus: Tensors,
    domains: Sequence[str],
    target: Tensors,
    recipe: Recipe,
    settings: DogeSettings,
    loss_fn,
    device: str = "cpu",
    progress: bool = False,
) -> DogeResult:
    """DoGE (module docstring) on ``model`` in place: ``corpus`` (MLM inputs, N rows) with
    ``domains[i]`` the domain of row i, ``target`` the target's MLM inputs. ``recipe``: the
    optimizer (``optimizer``, ``lr``, ``momentum``, ``seed``; η_t = ``lr``, constant);
    ``loss_fn(model, batch)``: a mini-batch's mean loss (``pretrain.mlm_loss``). Mini-batches are
    drawn with replacement across steps from a generator seeded by ``recipe.seed``: the run is
    repeatable bit for bit on one CPU type and thread count."""
    names = sorted(set(domains))
    if len(names) < 2:
        raise ValueError(f"domains: DoGE needs at least 2 domains, got {names}")
    if len(domains) != len(corpus["input_ids"]):
        raise ValueError(
            f"domains has {len(domains)} entries, the corpus {len(corpus['input_ids'])}"
        )
    rows = [np.flatnonzero(np.asarray(domains) == d) for d in names]
    rng = np.random.default_rng(recipe.seed)
    torch.manual_seed(recipe.seed)  # dropout
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = (
        torch.optim.Adam(params, lr=recipe.lr, betas=(recipe.momentum, 0.999), fused=True)
        if recipe.optimizer == "adam"
        else torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum)
    )
    weights = torch.full((len(names),), 1 / len(names), dtype=torch.float64)
    records = [{"step": 0, "domain": d, "weight": 1 / len(names), "score": 0.0} for d in names]
    n_target = len(target["input_ids"])

    def grad_of(tensors: Tensors, index: np.ndarray) -> torch.Tensor:
        batch = select(tensors, torch.as_tensor(index), device)
        return flat_grad(model, loss_fn(model, batch), params)

    for step in tqdm(range(1, settings.doge_steps + 1), "DoGE", disable=not progress):
        grads = torch.stack(
            [grad_of(corpus, rng.choice(r, min(settings.doge_batch, len(r)), False)) for r in rows]
        )
        target_grad = grad_of(
            target, rng.choice(n_target, min(settings.doge_batch, n_target), False)
        )
        update = doge_update(
            weights,
            grads,
            target_grad,
            recipe.lr,
            settings.mu,
            settings.dw_min,
            settings.dw_max,
            settings.reweight_eps,
        )
        weights = update.weights
        combined = weights.to(grads.dtype) @ grads  # Σ_i α_i g_i
        offset = 0
        for p in params:
            p.grad = combined[offset : offset + p.numel()].view_as(p).to(p.device).clone()
            offset += p.numel()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        norms = grads.norm(dim=-1).double()
        cosines = (grads @ target_grad).double() / (norms * target_grad.norm().double() + 1e-12)
        records += [
            {"step": step, "domain": d, "weight": float(w), "score": float(s)}
            | {"grad_norm": float(n), "cosine": float(c)}
            for d, w, s, n, c in zip(names, weights, update.scores, norms, cosines, strict=True)
        ]
    history = pd.DataFrame.from_records(records)
    later = history[history["step"] > 0]
    average = later.groupby("domain")["weight"].mean().to_dict()
    final = history[history["step"] == settings.doge_steps].set_index("domain")["weight"].to_dict()
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return DogeResult(history, average, final, state)


def mixture_keep(
    domains: Sequence[str], weights: dict[str, float], n: int, seed: int
) -> torch.Tensor:
    """(N,) bool: ``n`` corpus texts drawn with domain shares ``weights`` (module docstring).
    ``domains[i]``: the domain of corpus row i; every domain of ``weights`` must occur."""
    domains = np.asarray(domains)
    names = sorted(weights)
    missing = [d for d in names if not (domains == d).any()]
    if missing or not names:
        raise ValueError(f"weights: domains {missing or names} have no corpus text")
    if not 1 <= n <= len(domains):
        raise ValueError(f"n={n} must be in [1, {len(domains)}] (the corpus size)")
    share = np.array([weights[d] for d in names], dtype=float)
    if (share < 0).any() or not share.sum() > 0:
        raise ValueError(f"weights={weights} must be >= 0 with a positive sum")
    share = share / share.sum()
    available = np.array([(domains == d).sum() for d in names])
    if available.sum() < n:
        raise ValueError(
            f"n={n}: the domains of weights ({names}) hold only {available.sum()} corpus texts; "
            "weight more domains or draw fewer texts"
        )
    quota = share * n
    take = np.minimum(np.floor(quota).astype(int), available)
    order = np.argsort(-(quota - np.floor(quota)), kind="stable")
    by_weight = np.argsort(-share, kind="stable")
    while take.sum() < n:  # remainders first, then whatever room is left, heaviest first
        room = [i for i in (*order, *by_weight) if take[i] < available[i]]
        take[room[0]] += 1
        order = order[order != room[0]]
    rng = np.random.default_rng(seed)
    keep = np.zeros(len(domains), dtype=bool)
    for name, count in zip(names, take, strict=True):
        keep[rng.choice(np.flatnonzero(domains == name), count, replace=False)] = True
    return torch.as_tensor(keep)
