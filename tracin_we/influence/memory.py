"""What a call will hold in memory, estimated before any gradient, and refused when it cannot fit.

Dense per-example gradients are the risk: TracIn-Layer (``params``) and grad-cos on a parameter
regex keep one flattened gradient of P parameters per example, for the whole training set and
the whole test set at once (``layers.ParamKernel``). On BERT-tiny (P = 4.4 M with the word
embedding) that is 17.6 MB per example in float32: 200 training × 400 test texts need 10.5 GB.
The other methods keep per-example features of a few hundred numbers (the last layer's input,
sparse word-embedding rows) and the score matrix.

Estimate, in bytes, with b = the bytes of one element of ``dtype``:

- dense gradients: P · b · (n_held + 2 · batch_size), where n_held = n_train + n_test for
  ``scores``, n for ``self_influence``, checkpoints · n_test + chunk for the streaming top-k,
  and 2 · batch_size (at most the larger set's size) covers one batch's per-example gradients
  and autograd's work space; with ``cache_dir``, one more copy of the training (or chunk)
  gradients, serialised;
- the scores: 2 · n_test · n_train · b (the running sum over checkpoints and one checkpoint's
  part); n_test · (chunk + k) · b · 2 when streaming.

The model, its activations and Python itself come on top. Measured (BERT-tiny, all 4.4 M
parameters, 64 train × 32 test texts of 32 tokens, batch 16, 2 checkpoints, float32): estimate
2.1 GiB, peak resident memory 1.9 GiB above the process's before the call (3.5 GiB before the
(n, P) gradients were written in place and the previous checkpoint's released).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from tracin_we.influence.options import STREAMING_METHODS, Options, select_params


@dataclass(frozen=True)
class Estimate:
    """Peak bytes of a call and the formula that gave them, in words."""

    bytes: int
    formula: str


def dense_params(model: nn.Module, method: str, options: Options) -> int:
    """P: the number of parameters whose per-example gradients ``method`` keeps dense (0 for
    methods that keep none)."""
    if method == "tracin-layer":
        chosen = select_params(model, options.params, "params")
    elif method == "grad-cos" and options.layer not in ("last", "embedding"):
        chosen = select_params(model, options.layer, "layer")
    else:
        return 0
    sizes = dict(model.named_parameters())
    return sum(sizes[name].numel() for name in chosen)


def estimate(
    method: str,
    model: nn.Module,
    options: Options,
    n_train: int,
    n_test: int,
    checkpoints: int,
    chunk: int | None = None,
    k: int = 0,
) -> Estimate:
    """The peak of ``scores`` (``chunk=None``; ``n_test=0`` for ``self_influence``) or of the
    streaming top-k (``chunk`` training examples at a time, ``k`` kept), per the module
    docstring."""
    b = torch.empty((), dtype=options.dtype).element_size()
    p = dense_params(model, method, options)
    batch = min(options.batch_size, max(n_train if chunk is None else chunk, n_test))
    if chunk is None:
        held, held_text = n_train + n_test, f"{n_train:,} train + {n_test:,} test"
        cached = n_train
        matrix = 2 * n_test * n_train
        matrix_text = f"2 × {n_test:,} × {n_train:,} scores"
    else:
        held = checkpoints * n_test + chunk
        held_text = f"{checkpoints} checkpoints × {n_test:,} test + {chunk:,} chunk"
        cached = chunk
        matrix = 2 * n_test * (chunk + k)
        matrix_text = f"2 × {n_test:,} × ({chunk:,} + {k}) scores"
    cached = cached if options.cache_dir is not None else 0
    gradients = p * (held + 2 * batch + cached)
    text = f"{matrix_text} × {b} B"
    if p:
        cache_text = f" + {cached:,} serialised for cache_dir" if cached else ""
        text = (
            f"{p:,} parameters × {b} B × ({held_text} + 2 × {batch} batch{cache_text} examples) "
            f"+ {text}"
        )
    return Estimate(b * (gradients + matrix), text)


def available_bytes(device: str | torch.device) -> tuple[int, str]:
    """Memory free for a new allocation on ``device`` and where that number comes from: CUDA's
    ``mem_get_info``; on the CPU psutil's ``available``, else ``MemAvailable`` of /proc/meminfo
    (2**63 when neither can be read: nothing is refused)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0]), f"free on {device} (torch.cuda)"
    try:
        import psutil

        return int(psutil.virtual_memory().available), "available RAM (psutil)"
    except ImportError:  # psutil is optional: the kernel's own estimate serves as well
        pass
    try:
        with open("/proc/meminfo") as f:
            found = re.search(r"^MemAvailable:\s+(\d+) kB", f.read(), re.MULTILINE)
        if found:
            return int(found.group(1)) * 1024, "MemAvailable (/proc/meminfo)"
    except OSError:
        pass
    return 2**63, "unknown"


def check_memory(
    method: str,
    model: nn.Module,
    options: Options,
    n_train: int,
    n_test: int,
    checkpoints: int,
    chunk: int | None = None,
    k: int = 0,
) -> Estimate:
    """``MemoryError`` before any work when ``estimate`` exceeds ``available_bytes``, naming the
    estimate, the memory available and the options that lower it; else the estimate."""
    need = estimate(method, model, options, n_train, n_test, checkpoints, chunk, k)
    have, source = available_bytes(options.device)
    if need.bytes <= have:
        return need
    fixes = [
        "fewer parameters (a narrower `params`/`layer` regex, e.g. one layer, or tracin-we: "
        "sparse word-embedding rows instead of dense gradients)"
        if dense_params(model, method, options)
        else None,
        f"a smaller batch_size (now {options.batch_size})",
        "fewer test examples per call (split the test set)",
        "top_k_streaming(..., chunk_size=...) to walk the training set in chunks"
        if chunk is None and method in STREAMING_METHODS
        else (f"a smaller chunk_size (in effect now: {chunk:,})" if chunk is not None else None),
        "dtype=torch.float32 instead of float64" if options.dtype == torch.float64 else None,
    ]
    raise MemoryError(
        f"method={method!r} would need about {size(need.bytes)} ({need.formula}), more than "
        f"the {size(have)} {source}; nothing was computed. To fit: "
        + "; ".join(f for f in fixes if f)
    )


def size(n_bytes: int) -> str:
    """``n_bytes`` in GiB from 1 GiB on, else MiB."""
    return f"{n_bytes / 2**30:.1f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.1f} MiB"
