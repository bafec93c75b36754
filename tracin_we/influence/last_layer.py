"""Methods on the final linear layer f = W a + b: TracIn-Last, Influence-Last, representer points,
TracIn-TFIDF. Per example they need only a (the layer's input) and δ = ∂ℓ/∂f = softmax − onehot(y),
both from a forward pass. Positive = proponent throughout.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse import csr_matrix
from sklearn.feature_extraction.text import TfidfTransformer

from tracin_we.core.inputs import Tensors
from tracin_we.core.models import classifier_layer
from tracin_we.influence.context import Run
from tracin_we.influence.gradients import last_layer_features

HESSIAN_CHUNK = 4096  # examples per step when summing the Hessian (bounds its n × C² × h buffer)


@dataclass(frozen=True)
class LastLayerKernel:
    """TracIn-Last: ∇_W ℓ = δ aᵀ (and ∇_b ℓ = δ), so the kernel factorises as
    (a · a' + 1 with a bias) × (δ · δ'); with ``activations=False`` only δ · δ' (TracIn-TFIDF)."""

    bias: bool
    activations: bool = True

    @property
    def kind(self) -> str:
        return "last"  # the features (a, δ) do not depend on ``bias`` or ``activations``

    def features(self, run: Run, data: Tensors) -> Tensors:
        out = last_layer_features(run.model, data, run.options.batch_size, run.options.device)
        onehot = F.one_hot(data["labels"].to(out["probs"].device), out["probs"].shape[1])
        return {"a": out["a"], "delta": out["probs"] - onehot.to(out["probs"].dtype)}

    def pairwise(self, test: Tensors, train: Tensors) -> torch.Tensor:
        logit_part = test["delta"] @ train["delta"].T
        if not self.activations:
            return logit_part
        return (test["a"] @ train["a"].T + float(self.bias)) * logit_part

    def diagonal(self, features: Tensors) -> torch.Tensor:
        logit_part = features["delta"].pow(2).sum(-1)
        if not self.activations:
            return logit_part
        return (features["a"].pow(2).sum(-1) + float(self.bias)) * logit_part


def last_layer_kernel(run: Run, activations: bool = True) -> LastLayerKernel:
    return LastLayerKernel(classifier_layer(run.model).bias is not None, activations)


def _last_features(
    run: Run, train: Tensors, test: Tensors | None
) -> tuple[LastLayerKernel, Tensors, Tensors | None]:
    """The kernel and the features of ``train`` (cached) and ``test`` at the last checkpoint."""
    kernel = last_layer_kernel(run)
    state = run.load_last()
    train_features = run.train_features(kernel, state, train)
    return kernel, train_features, None if test is None else kernel.features(run, test)


def _flat_grads(features: Tensors, bias: bool) -> torch.Tensor:
    """(n, C·(h+1)) per-example gradients of (W, b) = δ ⊗ [a, 1] (δ ⊗ a without a bias)."""
    a = features["a"]
    if bias:
        a = torch.cat([a, a.new_ones(len(a), 1)], 1)
    return (features["delta"].unsqueeze(-1) * a.unsqueeze(1)).flatten(1)


def _hessian(features: Tensors, labels: torch.Tensor, bias: bool) -> torch.Tensor:
    """Exact Hessian of the mean cross-entropy over (W, b): (1/n) Σ_i S_i ⊗ ã_i ã_iᵀ with
    S_i = diag(p_i) − p_i p_iᵀ and ã_i = [a_i, 1], in ``_flat_grads``' order."""
    a, delta = features["a"].double(), features["delta"].double()
    if bias:
        a = torch.cat([a, a.new_ones(len(a), 1)], 1)
    probs = delta + F.one_hot(labels.to(delta.device), delta.shape[1]).double()
    c, h = delta.shape[1], a.shape[1]
    total = a.new_zeros(c, h, c, h)
    for s in range(0, len(a), HESSIAN_CHUNK):
        p, x = probs[s : s + HESSIAN_CHUNK], a[s : s + HESSIAN_CHUNK]
        curvature = torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1)
        total += torch.einsum("icd,ik,il->ckdl", curvature, x, x)
    return (total / len(a)).reshape(c * h, c * h)


def damped_hessian(
    features: Tensors, labels: torch.Tensor, bias: bool, damping: float
) -> torch.Tensor:
    """H + damping·I, float64, with H the exact Hessian of the mean cross-entropy over (W, b)
    (``_hessian``), in ``_flat_grads``' order."""
    hessian = _hessian(features, labels, bias)
    hessian += damping * torch.eye(len(hessian), dtype=hessian.dtype, device=hessian.device)
    return hessian


def influence_last_vectors(run: Run, train: Tensors, test: Tensors) -> torch.Tensor:
    """v(z') = (H + damping·I)⁻¹ ∇_θ ℓ(z') per test example, (n_test, C, h + bias), float64, at the
    last checkpoint: Influence-Last's score of a training example z on z' is v(z') · ∇_θ ℓ(z)
    (``influence_last`` solves against the training gradients instead)."""
    kernel, train_features, test_features = _last_features(run, train, test)
    hessian = damped_hessian(train_features, train["labels"], kernel.bias, run.options.damping)
    test_grads = _flat_grads({k: v.double() for k, v in test_features.items()}, kernel.bias)
    solved = torch.linalg.solve(hessian, test_grads.T).T
    return solved.reshape(len(solved), test_features["delta"].shape[1], -1)


def influence_last(run: Run, train: Tensors, test: Tensors | None) -> torch.Tensor:
    """Koh & Liang influence restricted to the last layer, at the last checkpoint:
    +∇ℓ(z')ᵀ (H + damping·I)⁻¹ ∇ℓ(z), H the exact Hessian of the mean training loss (the minus of
    Koh & Liang's I_up,loss, so positive = proponent). (n_test, n_train); with ``test=None``, the
    self-influences (n_train,)."""
    kernel, train_features, test_features = _last_features(run, train, test)
    hessian = damped_hessian(train_features, train["labels"], kernel.bias, run.options.damping)
    train_grads = _flat_grads(train_features, kernel.bias)
    solved = torch.linalg.solve(hessian, train_grads.double().T).to(train_grads.dtype)
    if test is None:
        return (train_grads * solved.T).sum(-1)
    return _flat_grads(test_features, kernel.bias) @ solved


def representer(run: Run, train: Tensors, test: Tensors | None) -> torch.Tensor:
    """Representer points (Yeh et al. 2018) on the final activation at the last checkpoint:
    α_i[c] (a_i · a'), α_i = −1/(2λn) ∂ℓ(z_i)/∂f, c = the test point's ground-truth class.
    (n_test, n_train); with ``test=None``, the self-influences (n_train,)."""
    _, train_features, test_features = _last_features(run, train, test)
    alpha = -train_features["delta"] / (2 * run.options.l2 * len(train["labels"]))
    if test is None:
        own = alpha.gather(1, train["labels"].to(alpha.device).unsqueeze(1)).squeeze(1)
        return own * train_features["a"].pow(2).sum(-1)
    classes = test["labels"].to(alpha.device)
    return alpha[:, classes].T * (test_features["a"] @ train_features["a"].T)


def tfidf_cosine(train: Tensors, test: Tensors, ignore: tuple[int, ...]) -> torch.Tensor:
    """(n_test, n_train) cosine of TF-IDF vectors of token ids (``ignore`` left out), fitted on
    ``train`` with scikit-learn; ids absent from ``train`` carry no weight, as for a vectorizer
    fitted there."""
    vocab = np.unique(_token_lists(train, ignore)[1])
    if not len(vocab):
        return torch.zeros(len(test["input_ids"]), len(train["input_ids"]), dtype=torch.float64)
    train_counts, test_counts = (_counts(data, vocab, ignore) for data in (train, test))
    tfidf = TfidfTransformer().fit(train_counts)
    cosine = tfidf.transform(test_counts) @ tfidf.transform(train_counts).T
    return torch.as_tensor(cosine.toarray())


def tfidf_self_cosine(data: Tensors, ignore: tuple[int, ...]) -> torch.Tensor:
    """(n,) the TF-IDF cosine of each text with itself: 1, or 0 for a text without any word."""
    rows, _ = _token_lists(data, ignore)
    return torch.as_tensor(np.bincount(rows, minlength=len(data["input_ids"])) > 0).double()


def _token_lists(data: Tensors, ignore: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(example, token id) of every unmasked position whose id is not in ``ignore``."""
    keep = data["attention_mask"].bool() & ~torch.isin(data["input_ids"], torch.tensor(ignore))
    rows, cols = keep.nonzero(as_tuple=True)
    return rows.numpy(), data["input_ids"][rows, cols].numpy()


def _counts(data: Tensors, vocab: np.ndarray, ignore: tuple[int, ...]) -> csr_matrix:
    rows, ids = _token_lists(data, ignore)
    cols = np.searchsorted(vocab, ids)
    known = (cols < len(vocab)) & (vocab[np.minimum(cols, len(vocab) - 1)] == ids)
    return csr_matrix(
        (np.ones(known.sum()), (rows[known], cols[known])),
        shape=(len(data["input_ids"]), len(vocab)),
    )
