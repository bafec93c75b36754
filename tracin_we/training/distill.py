"""A pretrained BERT-tiny offline: MiniLM distilled into the BERT-tiny architecture.

The paper's BERT-tiny (Google's pretrained ``bert_uncased_L-2_H-128_A-2``) needs the hub. The
pretrained encoder this project has offline is MiniLM (``core.pretrained``: all-MiniLM-L6-v2, 6
layers, hidden 384, 12 heads, BERT's uncased WordPiece ids), whose training step costs ~14× a
BERT-tiny one: too slow for hundreds of retrains. Distillation gives a BERT-tiny that starts
where MiniLM's representations are, once, cached.

**Corpus** (``pretrain.pretraining_corpus``): the texts that fine-tuning on ``data`` leaves
unused; no fine-tuning text and no test point is distilled on.

**Student**: BERT-tiny's encoder (2 layers, hidden 128, 2 heads). Its word embeddings start
from MiniLM's, PCA-projected to 128 dimensions (``embedding_init``); the rest is seeded random.

**Loss**: TinyBERT's embedding and hidden-state terms (Jiao et al. 2020, arXiv 1909.10351, §3.1,
with its uniform layer map), per text z and averaged over a mini-batch:

    ℓ(z) = (1/3) Σ_{(s, t) ∈ LAYER_MAP} mean over z's real tokens i of ‖W_s h_s,i − h^T_t,i‖² / 384

h_s: the student's hidden states after s layers (0: the embedding output), h^T_t the teacher's
after t, W_s a learned 128 → 384 map. TinyBERT's attention term matches attention maps head by
head and needs equal head counts (2 here, 12 in MiniLM), so it is left out; so is its
prediction-layer term (the teacher has no task head). The teacher's states are computed once per
run and held in memory in float16: 3 × 384 numbers per token, ~2 GB for the ~14,000 offline texts
of 64 tokens (``n_corpus`` draws fewer; a hub-sized corpus needs it).

**Run** (``distill``): ``loop.fit`` inside ``cached_run``'s cached, resumable, verified run under
``<cache>/distill/bert-tiny-from-<teacher>-<key>``. Its ``final.pt`` holds ``model.bert.*`` as a
pretraining run's does, so fine-tuning starts from it with ``TrainConfig(init_from=...)``: the run
folder, or ``"distilled:minilm-l6"`` (``recipe.DISTILLED``), which distils for the fine-tuning
data config when no cached run exists, once, in the process that trains the model
(``model_init.new_model``; ``train.trained`` and retrain workers only read it back).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import BertModel

from tracin_we.core.data import DataConfig
from tracin_we.core.inputs import PAD_ID, Tensors, model_inputs
from tracin_we.core.models import bert_tiny_config, build_model
from tracin_we.core.params import check_types
from tracin_we.core.persistence import Folder, cache_dir, config_key, tensor_digest
from tracin_we.core.pretrained import PRETRAINED
from tracin_we.core.tokenizer import VOCAB_SIZE
from tracin_we.training.cached_run import fit_epochs, open_run
from tracin_we.training.embedding_init import init_embeddings, projected_embeddings
from tracin_we.training.pretrain import PretrainConfig, pretraining_corpus
from tracin_we.training.recipe import DISTILLED, RECIPE_VERSION, check_recipe

LAYER_MAP = ((0, 0), (1, 3), (2, 6))  # (student layer, teacher layer); 0: embedding output
WIDTH = 128  # BERT-tiny's hidden size
# In the cache key: raise it when the loss, the student or LAYER_MAP change what a run computes.
DISTILL_VERSION = 1


class NotDistilled(FileNotFoundError):
    """``init_from="distilled:<teacher>"`` names a distillation not run yet, where the caller
    may not run it (``distill(create=False)``: a retrain worker, ``train.trained``)."""


@dataclass(frozen=True)
class DistillConfig:
    """Distillation of ``teacher`` into BERT-tiny on the texts that fine-tuning on ``data``
    leaves unused (module docstring). Frozen: it keys the cache."""

    data: DataConfig = field(default_factory=DataConfig)
    teacher: str = "minilm-l6"  # a key of core.pretrained.PRETRAINED
    n_corpus: int | None = None  # texts distilled on (domain-stratified sample); None: all unused
    epochs: int = 6
    lr: float = 1e-3
    momentum: float = 0.9  # Adam's beta1
    optimizer: str = "adam"
    batch_size: int = 32
    checkpoint_epochs: tuple[int, ...] = (6,)
    seed: int = 0  # student init, corpus sample and batch order
    max_grad_norm: float | None = None

    def __post_init__(self) -> None:
        check_types(self)
        object.__setattr__(self, "checkpoint_epochs", tuple(self.checkpoint_epochs))
        if self.teacher not in PRETRAINED:
            raise ValueError(f"teacher={self.teacher!r} is unknown; allowed: {list(PRETRAINED)}")
        if self.data.vocab_size is not None:
            raise ValueError(
                f"tokenizer={self.data.tokenizer!r}: distillation reads the teacher's ids "
                "(bert-base-uncased); leave tokenizer as None"
            )
        check_recipe(self)

    @property
    def freeze_embeddings(self) -> bool:
        return False


class Student(nn.Module):
    """BERT-tiny's encoder (``model.bert``, keys as ``pretrain.MaskedLM``'s) and the maps W_s
    (``project``) of the distillation loss."""

    def __init__(self, seed: int, teacher_width: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        config = bert_tiny_config(VOCAB_SIZE, pad_token_id=PAD_ID)
        self.model = nn.Module()
        self.model.bert = BertModel(config, add_pooling_layer=False)
        self.model.bert.set_attn_implementation("eager")
        width = config.hidden_size
        self.project = nn.ModuleList(nn.Linear(width, teacher_width) for _ in LAYER_MAP)

    def word_embeddings(self) -> nn.Embedding:
        return self.model.bert.get_input_embeddings()

    def hidden_states(self, batch: Tensors) -> tuple[torch.Tensor, ...]:
        """The student's hidden states after 0, 1 and 2 layers, each (B, T, 128)."""
        out = self.model.bert(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            token_type_ids=batch.get("token_type_ids"),
            output_hidden_states=True,
        )
        return out.hidden_states


def distillation_loss(student: Student, batch: Tensors) -> torch.Tensor:
    """The mini-batch mean of ℓ(z) (module docstring); ``batch["teacher"]``: (B, 3, T, D)."""
    states = student.hidden_states(batch)
    real = batch["attention_mask"].bool()
    counts = real.sum(1).clamp(min=1)
    total = 0.0
    for k, ((s, _), project) in enumerate(zip(LAYER_MAP, student.project, strict=True)):
        target = batch["teacher"][:, k].float()
        error = (project(states[s]) - target).pow(2).mean(-1)  # (B, T): ‖·‖² / D
        total = total + (error * real).sum(1) / counts
    return (total / len(LAYER_MAP)).mean()


@torch.no_grad()
def teacher_states(
    teacher: str, tensors: Tensors, batch_size: int, device: str, progress: bool
) -> torch.Tensor:
    """(N, 3, T, D) float16: the teacher's hidden states at ``LAYER_MAP``'s layers."""
    model, _ = build_model(teacher, num_labels=2, seed=0, pretrained=True)
    bert = model.model.bert.to(device).eval()
    layers = [t for _, t in LAYER_MAP]
    n, length = tensors["input_ids"].shape
    states = torch.empty(n, len(layers), length, bert.config.hidden_size, dtype=torch.float16)
    for start in tqdm(range(0, n, batch_size), desc="teacher states", disable=not progress):
        batch = {k: v[start : start + batch_size].to(device) for k, v in tensors.items()}
        out = bert(**batch, output_hidden_states=True).hidden_states
        states[start : start + batch_size] = torch.stack([out[t] for t in layers], 1).half().cpu()
    return states


def distill_identity(config: DistillConfig, tensors: Tensors) -> dict:
    """What names a distillation run (its cache key): ``config`` but its data config, whose effect
    is the corpus ``tensors`` (fingerprinted; label noise changes nothing here), with the
    teacher's weights, the projected word embeddings, the recipe and ``DISTILL_VERSION``."""
    resolved = asdict(config)
    del resolved["data"]
    resolved |= {
        "teacher_weights": dict(PRETRAINED[config.teacher].sha256)["model.safetensors"],
        "corpus_fingerprint": tensor_digest(tensors),
        "embedding_init": tensor_digest(projected_embeddings(config.teacher, WIDTH, PAD_ID)),
        "recipe": RECIPE_VERSION,
        "distill": DISTILL_VERSION,
    }
    return json.loads(json.dumps(resolved))


def distill(
    config: DistillConfig,
    cache: str | Path | None = None,
    device: str = "cpu",
    progress: bool = True,
    create: bool = True,
) -> Path:
    """Distil ``config`` (or reuse its cached run); returns the run folder
    (``<cache>/distill/bert-tiny-from-<teacher>-<key>``, the key hashing ``distill_identity``).
    Unlike a training run's, the key leaves out the torch thread count, so
    that processes of any count (retrain workers run one thread) share one distilled model;
    ``result.json`` records the count it was made with. ``create=False``: a missing run is
    ``NotDistilled``, never a distillation."""
    corpus = pretraining_corpus(
        PretrainConfig(data=config.data, n_corpus=config.n_corpus, seed=config.seed)
    )
    tensors = model_inputs(corpus)
    resolved = distill_identity(config, tensors)
    name = f"bert-tiny-from-{config.teacher}-{config_key(resolved)}"
    folder = Folder(cache_dir(cache) / "distill" / name)
    done = folder.read_json("result.json", recompute=False) is not None
    if not (done and folder.read_json("config.json", recompute=False) == resolved) and not create:
        raise NotDistilled(
            f"init_from='{DISTILLED}{config.teacher}': no finished distillation in {folder} "
            "(training the model distils it, once; a retrain worker or trained() never does)"
        )
    if open_run(folder, resolved, overwrite=False, named=False) is not None:
        return folder.path
    inputs = {k: tensors[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    targets = teacher_states(config.teacher, inputs, config.batch_size, device, progress)
    student = Student(config.seed, targets.shape[-1])
    init = init_embeddings(student, config.teacher, PAD_ID)
    train = inputs | {"teacher": targets, "labels": torch.arange(len(targets))}

    fit_epochs(
        folder,
        resolved,
        student,
        train,
        config,
        {"init": init, "threads": torch.get_num_threads()},
        device=device,
        progress=progress,
        loss_fn=distillation_loss,
        final_metrics=lambda model, history: {"n_corpus": len(corpus)},
    )
    return folder.path


@lru_cache(maxsize=8)
def distilled_run(init_from: str, data: DataConfig, create: bool = True) -> Path:
    """The run folder of ``init_from="distilled:<teacher>"`` for fine-tuning on ``data``: the
    default ``DistillConfig`` of that teacher, distilled on the texts ``data`` leaves unused, in
    the default cache (``$TRACIN_WE_CACHE``, else ``runs/cache``); ``create``: as ``distill``'s."""
    teacher = init_from.removeprefix(DISTILLED)
    return distill(DistillConfig(data=data, teacher=teacher), create=create)
