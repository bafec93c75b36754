"""Progress bars of the influence loops (``tqdm.auto``: widgets in Jupyter, text elsewhere).

The public entry points (``scores``, ``self_influence``, ``word_scores``, the streaming top-k)
switch bars on for the duration of a call with ``shown(options.progress)``; the loops inside
(checkpoints, gradient batches, chunks of the sparse scoring) call ``bar`` and show nothing
otherwise, so internal callers (deletion, layerwise, by hand) stay quiet unless asked.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

_shown: ContextVar[bool] = ContextVar("tracin_we_progress", default=False)


@contextmanager
def shown(enabled: bool) -> Iterator[None]:
    """Bars of ``bar`` are shown inside (``enabled``) or hidden."""
    token = _shown.set(enabled)
    try:
        yield
    finally:
        _shown.reset(token)


def bar(
    items: Iterable[T], desc: str, total: int | None = None, unit: str = "it", leave: bool = False
) -> Iterable[T]:
    """``items`` behind a bar when bars are ``shown``, else ``items`` unchanged. Inner loops keep
    ``leave=False``: their bar disappears when done, so only the outer one stays."""
    if not _shown.get():
        return items
    return tqdm(items, desc=desc, total=total, unit=unit, leave=leave)
