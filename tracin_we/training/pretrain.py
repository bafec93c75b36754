"""Masked-language-model pretraining of BERT-tiny on the texts a fine-tuning run does not use.

**Corpus** (``pretraining_corpus``). For a fine-tuning ``DataConfig``: every distinct text of the
task's train and test splits except the texts of that config's ``train``, ``validation`` and
``test`` splits (``data.make_splits``), compared by content, so that no fine-tuning example and no
evaluated test point is pretrained on. Each text keeps its category's name as its *domain*
(``TaskSpec.label_names``); the labels are never a training target here. ``n_corpus`` draws a
domain-stratified sample.

**Masks** (``mask_tokens``; BERT, Devlin et al. 2019, arXiv 1810.04805 §3.1 and appendix A.1):
of each text's n real tokens (special tokens such as [CLS], [SEP], [PAD] excluded),
max(1, round(0.15·n)) positions are predicted; each is replaced by [MASK] with probability 0.8,
by a token drawn uniformly from the vocabulary with 0.1 (as
``transformers.DataCollatorForLanguageModeling``), or kept with 0.1. The draw is seeded by
(``seed``, sha256 of the text): a text's masks are fixed — the static masking of BERT's
``create_pretraining_data.py`` — and do not depend on which other texts are in the corpus, so
removing texts (counterfactual pretraining) changes nothing else.

**Loss**. ℓ_MLM(z) = mean over z's predicted positions i of −log p(x_i | x̃), x̃ the masked text;
a mini-batch's loss is the mean of ℓ_MLM over its texts, so an SGD step is −η · mean_z ∇ℓ_MLM(z),
the per-example form TracIn assumes. Logits are computed at predicted positions only.

**Model** (``MaskedLM``): ``transformers.BertForMaskedLM`` with BERT-tiny's config and an
*untied* output decoder: the word-embedding matrix E is then only the input embedding, as in the
classifier, and ∇_E ℓ_MLM(z) is non-zero only in the rows of the tokens fed (TracIn-WE's sparse
rows; with BERT's tied decoder every row would get a gradient through the softmax).

**Run** (``pretrain``): ``loop.fit`` with the MLM loss inside ``cached_run``'s cached,
resumable, verified run (the same files as ``train``: ``epoch<N>.pt`` with their learning rate,
``final.pt``, ``result.json``) under ``<cache>/pretrain/bert-tiny-mlm-<key>``. Fine-tuning starts
from it with ``TrainConfig(init_from=str(result.run_dir))`` (``load_encoder``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from datasets import Dataset
from torch import nn
from transformers import BertConfig, BertForMaskedLM

from tracin_we.core.checkpoints import load_checkpoint
from tracin_we.core.data import DataConfig, make_splits, stratified_sample, tokenize
from tracin_we.core.inputs import CLS_ID, MASK_ID, PAD_ID, SEP_ID, Tensors
from tracin_we.core.models import bert_tiny_config
from tracin_we.core.params import check_types, from_params
from tracin_we.core.persistence import Folder, cache_dir, config_key, file_sha256, tensor_digest
from tracin_we.core.tasks import load_raw
from tracin_we.core.tokenizer import VOCAB_SIZE, load_tokenizer
from tracin_we.training.cached_run import Checkpoint, fit_epochs, load_checkpoints, open_run
from tracin_we.training.recipe import RECIPE_VERSION, check_recipe

log = logging.getLogger(__name__)

IGNORE = -100  # MLM target of a position that is not predicted (transformers' convention)
MASK_SHARES = (0.8, 0.1, 0.1)  # [MASK], random token, unchanged (BERT appendix A.1)


@dataclass(frozen=True)
class PretrainConfig:
    """MLM pretraining of BERT-tiny on the texts that fine-tuning on ``data`` leaves unused.

    ``data`` is the *fine-tuning* data config: its splits are excluded from the corpus, and its
    ``max_length`` and ``tokenizer`` are used. Frozen: it keys the cache.
    """

    data: DataConfig = field(default_factory=DataConfig)
    n_corpus: int | None = None  # texts pretrained on (domain-stratified sample); None: all unused
    mask_prob: float = 0.15  # share of each text's tokens predicted (BERT)
    epochs: int = 3
    lr: float = 1e-3
    momentum: float = 0.9  # SGD momentum, or Adam's beta1
    optimizer: str = "adam"  # "adam" (BERT pretrains with Adam) or "sgd"
    batch_size: int = 32
    checkpoint_epochs: tuple[int, ...] = (1, 2, 3)  # save after these epochs (1-based)
    seed: int = 0  # model init, masks, corpus sample, batch order and dropout
    max_grad_norm: float | None = None  # clip the global gradient norm

    def __post_init__(self) -> None:
        check_types(self)
        object.__setattr__(self, "checkpoint_epochs", tuple(self.checkpoint_epochs))
        if self.n_corpus is not None and self.n_corpus < 1:
            raise ValueError(f"n_corpus={self.n_corpus} must be a positive integer or None")
        if not 0 < self.mask_prob < 1:
            raise ValueError(f"mask_prob={self.mask_prob} must be in (0, 1)")
        if load_tokenizer(self.data.tokenizer).mask_token_id is None:
            raise ValueError(
                f"tokenizer={self.data.tokenizer!r} has no mask token; MLM pretraining replaces "
                "tokens by it: give a tokenizer with one (save it with tokenizer.mask_token set)"
            )
        check_recipe(self)

    @property
    def freeze_embeddings(self) -> bool:
        """Pretraining always trains the word embeddings (``recipe.Recipe``)."""
        return False

    @classmethod
    def from_params(cls, **params) -> PretrainConfig:
        """From flat parameters (``tracin_we.core.params``): data fields go to ``DataConfig``."""
        return from_params(cls, params)


class MaskedLM(nn.Module):
    """BERT-tiny's masked LM with an untied decoder (module docstring). ``forward`` returns the
    final hidden states (B, T, d); ``losses`` the per-text ℓ_MLM."""

    def __init__(self, config: BertConfig) -> None:
        super().__init__()
        if config.tie_word_embeddings:
            raise ValueError("config: tie_word_embeddings must be False (module docstring)")
        self.model = BertForMaskedLM(config)
        self.model.set_attn_implementation("eager")

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        out = self.model.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        )
        return out.last_hidden_state

    def losses(self, batch: Tensors) -> torch.Tensor:
        """(B,) ℓ_MLM per text: mean −log p over its predicted positions (``labels`` ≠ −100)."""
        hidden = self(batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids"))
        targets = batch["labels"]
        text, position = (targets != IGNORE).nonzero(as_tuple=True)
        logits = self.model.cls(hidden[text, position])  # (n predicted, V)
        nll = F.cross_entropy(logits, targets[text, position], reduction="none")
        counts = torch.bincount(text, minlength=len(targets)).clamp(min=1).to(nll.dtype)
        return nll.new_zeros(len(targets)).index_add(0, text, nll) / counts

    def word_embeddings(self) -> nn.Embedding:
        return self.model.get_input_embeddings()


def mlm_loss(model: MaskedLM, batch: Tensors) -> torch.Tensor:
    """A mini-batch's loss: the mean of ℓ_MLM over its texts (``loop.fit``'s ``loss_fn``)."""
    return model.losses(batch).mean()


def new_mlm_model(seed: int, data: DataConfig | None = None) -> MaskedLM:
    """A randomly initialised ``MaskedLM`` (``seed`` fixes every weight) for the tokenizer of
    ``data`` (None: bert-base-uncased): one embedding row per id, its [PAD] row kept at zero."""
    torch.manual_seed(seed)
    vocab_size = data.vocab_size if data is not None and data.vocab_size else VOCAB_SIZE
    pad = data.pad_token_id if data is not None and data.pad_token_id is not None else PAD_ID
    return MaskedLM(bert_tiny_config(vocab_size, tie_word_embeddings=False, pad_token_id=pad))


def text_seed(text: str, seed: int) -> int:
    """A 64-bit seed from ``seed`` and the text's content (sha256): fixes the text's masks."""
    return int.from_bytes(hashlib.sha256(f"{seed}\0{text}".encode()).digest()[:8], "little")


def mask_tokens(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    texts: list[str],
    seed: int,
    mask_prob: float = 0.15,
    mask_id: int = MASK_ID,
    vocab_size: int = VOCAB_SIZE,
    special_ids: tuple[int, ...] = (PAD_ID, CLS_ID, SEP_ID),
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT's masking (module docstring), fixed per (text, ``seed``).

    ``input_ids``, ``attention_mask``: (N, T); ``texts``: the N texts (they seed the draws).
    Returns the masked ids (N, T) and the targets (N, T): the original id at each predicted
    position, −100 elsewhere. Every text with a real token gets at least one prediction.
    """
    masked, labels = input_ids.clone(), torch.full_like(input_ids, IGNORE)
    candidates = attention_mask.bool() & ~torch.isin(input_ids, torch.tensor(special_ids))
    for row, text in enumerate(texts):
        positions = candidates[row].nonzero().flatten().numpy()
        if not len(positions):
            continue
        rng = np.random.default_rng(text_seed(text, seed))
        size = max(1, round(mask_prob * len(positions)))
        chosen = torch.as_tensor(np.sort(rng.choice(positions, size=size, replace=False)))
        action = torch.as_tensor(rng.random(len(chosen)))
        random_ids = torch.as_tensor(rng.integers(0, vocab_size, len(chosen)))
        labels[row, chosen] = input_ids[row, chosen]
        replace_by_mask = action < MASK_SHARES[0]
        replace_by_random = (action >= MASK_SHARES[0]) & (action < sum(MASK_SHARES[:2]))
        masked[row, chosen[replace_by_mask]] = mask_id
        masked[row, chosen[replace_by_random]] = random_ids[replace_by_random].to(masked.dtype)
    return masked, labels


def pretraining_corpus(config: PretrainConfig) -> Dataset:
    """The corpus (module docstring), tokenized, in a fixed order: columns ``text``, ``domain``
    (the category's name), ``label`` (its index), ``source`` ("train"/"test"), ``source_index``
    (row in that raw split), ``input_ids``, ``attention_mask``, ``token_type_ids``."""
    data = config.data
    splits = make_splits(data)
    used = {t for name in splits for t in splits[name]["text"]}
    frames = []
    for source in ("train", "test"):
        raw = load_raw(data.dataset, source, data.data_dir)
        frames.append(raw.rename_axis("source_index").reset_index().assign(source=source))
    pool = pd.concat(frames, ignore_index=True).drop_duplicates("text")
    pool = pool[~pool["text"].isin(used)].reset_index(drop=True)
    if "text_pair" in pool:
        raise ValueError(f"dataset={data.dataset!r}: MLM pretraining takes single texts only")
    if config.n_corpus is not None:
        if config.n_corpus > len(pool):
            raise ValueError(
                f"n_corpus={config.n_corpus} exceeds the {len(pool)} texts that fine-tuning on "
                f"this data config leaves unused"
            )
        rng = np.random.default_rng(config.seed)
        pool = pool.iloc[np.sort(stratified_sample(pool["label"].to_numpy(), config.n_corpus, rng))]
    names = data.task.label_names
    pool = pool.assign(domain=[names[label] for label in pool["label"]])
    columns = ["text", "domain", "label", "source", "source_index"]
    corpus = Dataset.from_pandas(pool[columns].reset_index(drop=True), preserve_index=False)
    return tokenize(corpus, load_tokenizer(data.tokenizer), data.max_length)


def mlm_tensors(corpus: Dataset, config: PretrainConfig) -> Tensors:
    """The corpus as MLM inputs: masked ``input_ids``, ``attention_mask``, ``token_type_ids``
    (N, T) and the targets ``labels`` (N, T), −100 where not predicted."""
    tokenizer = load_tokenizer(config.data.tokenizer)
    ids = torch.as_tensor(corpus["input_ids"])
    attention = torch.as_tensor(corpus["attention_mask"])
    masked, labels = mask_tokens(
        ids,
        attention,
        list(corpus["text"]),
        config.seed,
        config.mask_prob,
        tokenizer.mask_token_id,
        len(tokenizer),
        tuple(tokenizer.all_special_ids),
    )
    return {
        "input_ids": masked,
        "attention_mask": attention,
        "token_type_ids": torch.as_tensor(corpus["token_type_ids"]),
        "labels": labels,
    }


@dataclass
class PretrainResult:
    """A finished pretraining run: its folder, config, corpus, MLM inputs and checkpoints."""

    run_dir: Path
    config: PretrainConfig
    corpus: Dataset
    tensors: Tensors
    checkpoints: list[Checkpoint]
    final: Checkpoint
    metrics: dict
    history: list[dict]

    def checkpoint_pairs(self) -> list[tuple[dict, float]]:
        """``(state_dict, lr)`` per saved checkpoint (hash-checked): multi-stage TracIn-WE's θ_t
        and η_t."""
        return [(c.load()["state_dict"], c.lr) for c in self.checkpoints]

    def load_model(self, which: str = "final") -> MaskedLM:
        """The masked LM at ``which`` = "final" or "epoch<N>", in eval mode."""
        options = {"final": self.final} | {f"epoch{c.epoch}": c for c in self.checkpoints}
        if which not in options:
            raise ValueError(f"which={which!r}; allowed: {sorted(options)}")
        model = new_mlm_model(self.config.seed, self.config.data)
        model.load_state_dict(options[which].load()["state_dict"])
        return model.eval()


def pretrain(
    config: PretrainConfig,
    run_dir: str | Path | None = None,
    cache: str | Path | None = None,
    overwrite: bool = False,
    device: str = "cpu",
    progress: bool = True,
) -> PretrainResult:
    """Pretrain ``config`` (or reuse its cached result). The folder defaults to
    ``<cache>/pretrain/bert-tiny-mlm-<key>``, the key hashing the resolved config, the masked
    corpus, the recipe version and the torch thread count (``train.resolved_config``)."""
    corpus = pretraining_corpus(config)
    tensors = mlm_tensors(corpus, config)
    model = new_mlm_model(config.seed, config.data)
    resolved = asdict(config)
    resolved["data"].pop("data_dir")
    resolved |= {
        "init": f"random(seed={config.seed})",
        "corpus_fingerprint": tensor_digest(tensors),
        "recipe": RECIPE_VERSION,
        "threads": torch.get_num_threads(),
    }
    resolved = json.loads(json.dumps(resolved))
    name = f"bert-tiny-mlm-{config_key(resolved)}"
    folder = Folder(Path(run_dir) if run_dir else cache_dir(cache) / "pretrain" / name)
    result = open_run(folder, resolved, overwrite, named=run_dir is not None)
    if result is None:
        result = fit_epochs(
            folder,
            resolved,
            model,
            tensors,
            config,
            {"init": resolved["init"]},
            device=device,
            progress=progress,
            loss_fn=mlm_loss,
            final_metrics=lambda model, history: {"n_corpus": len(corpus)},
        )
    checkpoints, final = load_checkpoints(folder.path, result)
    return PretrainResult(
        folder.path,
        config,
        corpus,
        tensors,
        checkpoints,
        final,
        result["metrics"],
        result["history"],
    )


def load_encoder(model: nn.Module, source: str | Path | dict[str, torch.Tensor]) -> str:
    """Copy a pretraining run's word, position and token-type embeddings and encoder into the
    BERT-tiny classifier ``model`` (an ``HFClassifier``); its pooler and classifier head keep
    their seeded random init (MLM pretraining has no pooler). ``source``: a ``pretrain`` run
    folder (its ``final.pt``, hash-checked against ``result.json``), a checkpoint file, or a
    ``MaskedLM`` state dict (e.g. of a counterfactual re-pretraining, ``fit`` with ``keep``).
    Returns ``mlm:<sha256 of the file>`` (a state dict: ``mlm:<tensor_digest>``), the init's name
    in cache keys."""
    if isinstance(source, dict):
        state, sha = source, tensor_digest(source)
        source = "<state dict>"
    elif Path(source).is_dir():
        source = Path(source)
        result = Folder(source).read_json(
            "result.json", recompute=False, remedy="delete the pretraining run folder"
        )
        if result is None:
            raise ValueError(f"init_from={str(source)!r} holds no finished pretraining run")
        final = load_checkpoints(source, result)[1]
        state, sha = final.load()["state_dict"], final.sha256
    else:
        source = Path(source)
        state, sha = load_checkpoint(source)["state_dict"], file_sha256(source)
    prefix = "model.bert."
    encoder = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    bert = model.model.bert
    missing, unexpected = bert.load_state_dict(encoder, strict=False)
    if unexpected or any(not k.startswith("pooler.") for k in missing) or not encoder:
        raise ValueError(
            f"init_from={str(source)!r} is not a BERT-tiny MLM checkpoint of this vocabulary: "
            f"missing {[k for k in missing if not k.startswith('pooler.')][:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    log.info("bert-tiny: word embeddings and encoder from the run %s", source)
    return f"mlm:{sha[:16]}"
