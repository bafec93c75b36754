"""Influence of *pretraining* texts on a fine-tuned model's test predictions.

Two stages share the word-embedding matrix E (V × d): MLM pretraining (``training.pretrain``)
with checkpoints θ_t^pre and learning rates η_t, then fine-tuning of a classifier started from it,
ending at θ^ft. Positive = proponent throughout: pretraining on z lowers the test loss of z′.

**Multi-stage TracIn-WE** (``multistage_tracin_we``; TracIn, Pruthi et al. 2020, arXiv 2002.08484,
restricted to E as TracIn-WE, arXiv 2202.11844 v1 eq. 2):

    score(z, z′) = Σ_t η_t Σ_{w ∈ x̃ ∩ x′} g_w^MLM(z; θ_t^pre) · g_w(z′; θ^ft),

g_w^MLM(z) = Σ_{i: x̃_i = w} ∂ℓ_MLM(z)/∂e_i (x̃ the masked text as fed: a [MASK] row never meets a
test text), g_w(z′) = Σ_{i: x′_i = w} ∂ℓ(z′)/∂e_i of the cross-entropy at the true class — only
the words the two texts share. With ``test_states`` = several fine-tuning checkpoints, g_w(z′) is
summed over them; the default (``multistage_scores``) is the final model alone.

*When it is the first-order effect.* The pretraining step on z at t moves E by
ΔE = −η_t ∇_E ℓ_MLM(z; θ_t^pre), rows of z's tokens only. As in TracIn, take that displacement to
survive to the end of pretraining unchanged. (a) Embeddings frozen during fine-tuning
(``TrainConfig.freeze_embeddings``): E^ft = E^pre, so with the fine-tuned encoder and head held
fixed the test loss changes by ∇_E ℓ(z′; θ^ft) · ΔE = −η_t ⟨g^MLM(z), g(z′)⟩ to first order, and
the sum over t is exactly the score (a decrease of the loss: proponent). What it leaves out is
the fine-tuned weights' own response to E, −∇_W ℓ′ᵀ H_WW⁻¹ ∂²L_ft/∂W∂E · ΔE, which Chen et al.'s
influence function below keeps. (b) Embeddings updated during fine-tuning: E^ft = E^pre + Σ_s
(−η_s ∇_E L_ft(θ_s)), whose steps depend on E^pre, so ΔE^ft = (I − Σ_s η_s ∇²_EE L_ft + …) ΔE^pre;
the score takes ΔE^ft ≈ ΔE^pre — an approximation, good when fine-tuning moves E little (few
steps, small learning rate). Only the word-embedding matrix is traced: the encoder, also handed
from pretraining to fine-tuning, is not (as TracIn-WE ignores the other layers).

**Multi-stage influence function** (``multistage_influence_function``; Chen, Si, Li, Chelba,
Kumar, Boning, Hsieh 2020, "Multi-Stage Influence Function", arXiv 2007.09081, the case of an
embedding frozen during fine-tuning). Pretraining minimises L_pre(E, U) = mean_z ℓ_pre(z; E, U)
(U: pretraining-only weights); fine-tuning minimises L_ft(E, W) over W with E fixed. Up-weighting
z by ε moves the pretraining optimum by dΘ/dε = −H_pre⁻¹ ∇_Θ ℓ_pre(z) (Θ = (E, U), H_pre =
∇²_Θ L_pre; Koh & Liang 2017), and the fine-tuning optimum follows E: dW*/dE = −H_WW⁻¹ H_WE
(implicit function theorem on ∇_W L_ft = 0). So

    dℓ(z′)/dε = −D(z′) · [H_pre⁻¹ ∇_Θ ℓ_pre(z)]_E,  D(z′) = ∇_E ℓ′ − ∇_W ℓ′ᵀ H_WW⁻¹ H_WE,

and the score is its negative (positive = proponent, as ``influence-last``). Removing z from n
pretraining texts is ε = −1/n, so retraining both stages without it changes the test loss by
Δℓ(z′) ≈ +score(z, z′)/n (removing a proponent raises the loss). Hessians are formed
explicitly (``torch.func.hessian``) and solved in float64, so this is for small models (a few
thousand parameters).

**Domains** (``by_domain``): scores summed (or averaged) over the pretraining texts of each
domain and the test points of each class — the domain × test-class table of a heatmap.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import pandas as pd
import torch
from torch import nn
from torch.func import hessian, jacrev
from tqdm.auto import tqdm

from tracin_we.core.checkpoints import StateDict
from tracin_we.core.inputs import Tensors
from tracin_we.core.models import word_embeddings
from tracin_we.influence.embedding import sparse_dot
from tracin_we.influence.gradients import (
    SparseRows,
    batch_rows,
    batches,
    embedding_grads,
    sparse_rows,
)

__all__ = [
    "by_domain",
    "finetuned_rows",
    "mlm_rows",
    "multistage_influence_function",
    "multistage_scores",
    "multistage_tracin_we",
]


def mlm_rows(
    model: nn.Module,
    corpus: Tensors,
    batch_size: int = 64,
    device: str = "cpu",
    progress: bool = False,
) -> SparseRows:
    """Each text's MLM word-embedding gradient rows g_w^MLM at the weights loaded in ``model``
    (a ``pretrain.MaskedLM``: ``losses(batch)`` gives (B,) per-text ℓ_MLM), [PAD] dropped."""
    vocab_size = word_embeddings(model).num_embeddings
    parts = []
    n_batches = -(-len(corpus["input_ids"]) // batch_size)
    for batch in tqdm(
        batches(corpus, batch_size, device), "MLM gradients", n_batches, disable=not progress
    ):
        grads = embedding_grads(model, batch, loss=lambda m, b: m.losses(b).sum())
        keep = batch["attention_mask"].bool()
        parts.append(sparse_rows(batch["input_ids"], grads, keep, vocab_size))
    return SparseRows.cat(parts)


def finetuned_rows(
    classifier: nn.Module,
    states: Sequence[StateDict],
    test: Tensors,
    batch_size: int = 64,
    device: str = "cpu",
) -> SparseRows:
    """g_w(z′) of each test text, summed over the fine-tuning ``states`` (their ids coincide:
    they depend on the text only)."""
    total = None
    for state in states:
        classifier.load_state_dict(state)
        rows = SparseRows.cat(
            [batch_rows(classifier, batch) for batch in batches(test, batch_size, device)]
        )
        total = (
            rows if total is None else SparseRows(total.ids, total.rows + rows.rows, total.offsets)
        )
    return total


def multistage_tracin_we(
    mlm_model: nn.Module,
    pretrain_checkpoints: Sequence[tuple[StateDict, float]],
    corpus: Tensors,
    classifier: nn.Module,
    test_states: Sequence[StateDict],
    test: Tensors,
    batch_size: int = 64,
    device: str = "cpu",
    progress: bool = False,
) -> torch.Tensor:
    """(n_test, n_corpus) multi-stage TracIn-WE (module docstring); positive = proponent.

    ``mlm_model`` (``pretrain.MaskedLM``) takes each ``(state_dict, lr)`` of
    ``pretrain_checkpoints`` in turn; ``corpus``: MLM inputs (masked ``input_ids``,
    ``attention_mask``, ``labels`` (N, T)); ``classifier`` takes each of ``test_states`` (g_w(z′)
    is summed over them); ``test``: classifier inputs with ``labels`` (n_test,). Both models are
    put back as they were (weights, train/eval mode) afterwards. Shared tokens are scored by
    ``embedding.sparse_dot``'s fast default (within ``embedding.FAST_RTOL`` of the exact sum).
    """
    if not pretrain_checkpoints or not test_states:
        raise ValueError("pretrain_checkpoints and test_states must each hold at least one entry")
    vocab = word_embeddings(mlm_model).num_embeddings
    if word_embeddings(classifier).num_embeddings != vocab:
        raise ValueError(
            f"classifier: its word embedding has {word_embeddings(classifier).num_embeddings} "
            f"rows, the masked LM's {vocab}; both stages must share one vocabulary"
        )
    with _restored(mlm_model), _restored(classifier):
        classifier.to(device).eval()
        mlm_model.to(device).eval()
        test_g = finetuned_rows(classifier, test_states, test, batch_size, device)
        total = None
        for state, lr in pretrain_checkpoints:
            mlm_model.load_state_dict(state)
            rows = mlm_rows(mlm_model, corpus, batch_size, device, progress)
            part = lr * sparse_dot(test_g, rows)
            total = part if total is None else total + part
    return total.cpu()


def multistage_scores(
    pretrained, finetuned, test: Tensors, test_at: str = "final", **kw
) -> torch.Tensor:
    """``multistage_tracin_we`` from a ``pretrain.PretrainResult`` and a ``train.TrainResult``
    started from it: g_E(z′) at the fine-tuned model's final weights (``test_at="final"``, the
    default) or summed over its saved checkpoints (``"checkpoints"``). (n_test, n_corpus), columns
    in the order of ``pretrained.corpus``. ``kw``: ``batch_size``, ``device``, ``progress``."""
    if test_at not in ("final", "checkpoints"):
        raise ValueError(f"test_at={test_at!r}; allowed: 'final', 'checkpoints'")
    chosen = [finetuned.final] if test_at == "final" else finetuned.checkpoints
    states = [c.load()["state_dict"] for c in chosen]
    return multistage_tracin_we(
        pretrained.load_model(),
        pretrained.checkpoint_pairs(),
        pretrained.tensors,
        finetuned.load_model(),
        states,
        test,
        **kw,
    )


def multistage_influence_function(
    pretrain_losses: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    finetune_objective: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    test_losses: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    embedding: torch.Tensor,
    pretrain_head: torch.Tensor,
    finetune_params: torch.Tensor,
    damping: float = 0.0,
) -> torch.Tensor:
    """(n_test, n_pre) Chen et al.'s multi-stage influence, embedding frozen during fine-tuning
    (module docstring): D(z′) · [(H_pre + damping·I)⁻¹ ∇_Θ ℓ_pre(z)]_E, positive = proponent.

    ``pretrain_losses(E, U)`` → (n_pre,) per-example pretraining losses (L_pre is their mean; put
    any regulariser into each); ``finetune_objective(E, W)`` → the scalar fine-tuning objective;
    ``test_losses(E, W)`` → (n_test,). ``embedding`` (E), ``pretrain_head`` (U, may be empty) and
    ``finetune_params`` (W) are the two optima, tensors of any shape. Everything runs in float64.
    """
    e_shape, u_shape, w_shape = embedding.shape, pretrain_head.shape, finetune_params.shape
    n_e = embedding.numel()
    e, u, w = (t.detach().double().flatten() for t in (embedding, pretrain_head, finetune_params))

    def pre_losses(theta: torch.Tensor) -> torch.Tensor:
        return pretrain_losses(theta[:n_e].view(e_shape), theta[n_e:].view(u_shape))

    def ft(e_flat: torch.Tensor, w_flat: torch.Tensor) -> torch.Tensor:
        return finetune_objective(e_flat.view(e_shape), w_flat.view(w_shape))

    def tests(e_flat: torch.Tensor, w_flat: torch.Tensor) -> torch.Tensor:
        return test_losses(e_flat.view(e_shape), w_flat.view(w_shape))

    theta = torch.cat([e, u])
    h_pre = hessian(lambda t: pre_losses(t).mean())(theta)
    h_pre = h_pre + damping * torch.eye(len(theta), dtype=theta.dtype)
    g_pre = jacrev(pre_losses)(theta)  # (n_pre, P)
    shift = torch.linalg.solve(h_pre, g_pre.T)[:n_e]  # (n_E, n_pre): −dE/dε per example
    h_ww = hessian(ft, argnums=1)(e, w) + damping * torch.eye(len(w), dtype=w.dtype)
    h_we = jacrev(jacrev(ft, argnums=1), argnums=0)(e, w)  # (n_W, n_E)
    d_e, d_w = jacrev(tests, argnums=(0, 1))(e, w)  # (n_test, n_E), (n_test, n_W)
    total = d_e - d_w @ torch.linalg.solve(h_ww, h_we)  # D(z′): dℓ′/dE through W*(E)
    return total @ shift


def by_domain(
    scores: torch.Tensor,
    domains: Sequence[Hashable],
    test_classes: Sequence[Hashable],
    reduce: str = "sum",
) -> pd.DataFrame:
    """The domain × test-class table of ``scores`` (n_test, n_corpus): entry (d, c) sums (``"sum"``)
    or averages (``"mean"``) the scores of the pretraining texts of domain ``domains[i]`` = d on
    the test points of class ``test_classes[j]`` = c. Rows and columns in sorted order."""
    if reduce not in ("sum", "mean"):
        raise ValueError(f"reduce={reduce!r}; allowed: 'sum', 'mean'")
    if scores.shape != (len(test_classes), len(domains)):
        raise ValueError(
            f"scores has shape {tuple(scores.shape)}; expected (len(test_classes), len(domains)) "
            f"= ({len(test_classes)}, {len(domains)})"
        )
    frame = pd.DataFrame(scores.double().numpy(), index=list(test_classes), columns=list(domains))
    by_column = frame.T.groupby(level=0, sort=True)  # pretraining domains
    per_domain = by_column.sum() if reduce == "sum" else by_column.mean()
    by_class = per_domain.T.groupby(level=0, sort=True)  # test classes
    table = (by_class.sum() if reduce == "sum" else by_class.mean()).T
    return table.rename_axis(index="domain", columns="test_class")


class _restored:
    """Context manager: the model's weights, device and train/eval mode are put back on exit."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> nn.Module:
        self.state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.training = self.model.training
        self.device = next(self.model.parameters()).device
        return self.model

    def __exit__(self, *exc: object) -> None:
        self.model.to(self.device)
        self.model.load_state_dict(self.state)
        self.model.train(self.training)
