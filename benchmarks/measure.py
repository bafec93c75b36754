"""What the benchmarks share: peak memory (RSS on CPU, the allocator's on CUDA), device sync,
perturbed checkpoints and the bare batched backward passes of TracIn-WE."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import resource
import sys
import time
from pathlib import Path

import torch
from torch import nn

from tracin_we.core.inputs import Tensors
from tracin_we.influence.gradients import batches, embedding_grads


def synchronize(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def rss_bytes(field: str) -> int | None:
    """``VmRSS`` / ``VmHWM`` of this process from /proc (Linux), or None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def reset_peak(device: str | torch.device) -> int:
    """Start a fresh peak-memory measurement; return the memory in use now (bytes)."""
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    with contextlib.suppress(OSError, AttributeError):  # hand freed heap pages back, so that
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # reusing them shows in the peak
    try:  # "5" resets VmHWM to the current resident set (Linux ≥ 4.0)
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        print(
            "warning: cannot reset the peak RSS; the baseline may hide part of the peak",
            file=sys.stderr,
        )
    return rss_bytes("VmRSS") or 0


def peak_since_reset(device: str | torch.device) -> int:
    """Peak bytes since ``reset_peak``: on CUDA allocated memory, else the peak resident set."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    peak = rss_bytes("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def perturbed_checkpoints(model: nn.Module, count: int) -> list[tuple[dict, float]]:
    """``count`` checkpoints: the weights plus N(0, 0.01²) noise (a different draw each) and
    learning rates 0.01, 0.005, ..."""
    generator = torch.Generator().manual_seed(1)
    out = []
    for c in range(count):
        state = {
            k: v + 0.01 * torch.randn(v.shape, generator=generator, dtype=v.dtype)
            if v.is_floating_point()
            else v.clone()
            for k, v in model.state_dict().items()
        }
        out.append((state, 0.01 / (c + 1)))
    return out


def bare_backward_seconds(
    model: nn.Module,
    checkpoints: list[tuple[dict, float]],
    datasets: list[Tensors],
    batch_size: int,
    device: str,
) -> float:
    """Seconds in exactly the ``embedding_grads`` calls TracIn-WE makes (every batch of every
    dataset at every checkpoint, the model already loaded), and nothing else."""
    model = model.to(device).eval()
    seconds = 0.0
    for state, _ in checkpoints:
        model.load_state_dict(state)
        for data in datasets:
            for batch in batches(data, batch_size, device):
                synchronize(device)
                start = time.perf_counter()
                embedding_grads(model, batch)
                synchronize(device)
                seconds += time.perf_counter() - start
    model.cpu()
    return seconds
