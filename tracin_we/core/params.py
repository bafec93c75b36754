"""Flat parameters → validated configs: the one boundary between notebooks/presets and the package.

A notebook's ``parameters`` cell, a preset section and ``papermill -p`` all give *flat* names
(``n_train``, ``lr``, ``methods``, ...), while the package takes nested frozen dataclasses
(``DeletionConfig(train=TrainConfig(data=DataConfig(...)))``). Three functions bridge them:

- ``build_config(DeletionConfig, globals())``: in a notebook, the config from the names in scope
  that are the config's fields (nanoGPT's ``config_keys``); everything else in scope is ignored.
- ``from_params(DeletionConfig, params)``: the same from a dict, where an unknown name is an error.
- ``check_types(config)``: called first in every config's ``__post_init__``; each field must match
  its annotation, else a ``ValueError`` naming the field, the type wanted and the value got; then
  the value rules that hold for every config (``check_values``), so that no config repeats them.

Rules:
- A flat name goes to every config of the tree that declares it (``seed`` sets both
  ``DataConfig.seed`` and ``TrainConfig.seed``); the nested fields themselves (``train``,
  ``data``) are built, never taken from the flat names.
- Strings are parsed here, once: where a field does not accept a ``str`` and the value is a string
  holding a Python literal (``"[1, 2]"``, ``"0.5"``, ``"True"``, ``"None"``), as ``papermill -p``
  passes lists, the literal is used. Any other string stays a string, for ``check_types`` to refuse.
- Types: ``int`` refuses ``bool`` and ``float``; ``float`` accepts ``int``; ``bool`` is ``True`` or
  ``False`` only (not ``"no"``, not ``1``); a list/tuple field takes a list or a tuple whose
  elements have the right type. A bare string for a list field is an error, never split into
  characters or wrapped: ``methods="tracin-we"`` → give ``methods=["tracin-we"]``.
- Values, for every config (``check_values``): a float is finite (NaN and ±inf refused), in a
  list or dict too; a seed
  (a field named ``seed``, ``*_seed`` or ``seeds``) is in [0, 2**32). Ranges that differ per
  field (``lr > 0``, ``epochs >= 1``) are each config's own ``__post_init__`` checks.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import math
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

T = TypeVar("T")

# numpy's seeds (RandomState, np.random.seed) are 32-bit unsigned; torch's are wider.
SEED_LIMIT = 2**32


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """Field name → resolved annotation (annotations are strings under ``from __future__``) of
    the fields a caller sets (a dataclass's ``init=False`` fields are derived, not parameters)."""
    hints = typing.get_type_hints(cls)
    if dataclasses.is_dataclass(cls):
        return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}
    return hints


def flat_fields(cls: type) -> set[str]:
    """Every flat parameter name ``cls`` accepts: its own fields and, recursively, those of its
    nested config dataclasses (whose own names are not parameters)."""
    names = set()
    for name, hint in _hints(cls).items():
        names |= flat_fields(hint) if dataclasses.is_dataclass(hint) else {name}
    return names


def derived_fields(cls: type) -> set[str]:
    """The ``init=False`` fields of ``cls`` and of its nested configs: computed when the config
    is built (``DataConfig.vocab_size``), so ``asdict`` holds them but no caller sets them."""
    if not dataclasses.is_dataclass(cls):
        return set()
    names = {f.name for f in dataclasses.fields(cls) if not f.init}
    for hint in _hints(cls).values():
        names |= derived_fields(hint)
    return names


def from_params(cls: type[T], params: Mapping[str, Any]) -> T:
    """Build the config ``cls`` from flat ``params``; an unknown name is a ``ValueError``. Derived
    fields (as a flattened ``asdict`` holds them) are recomputed, not read."""
    params = {k: v for k, v in params.items() if k not in derived_fields(cls)}
    unknown = sorted(set(params) - flat_fields(cls))
    if unknown:
        raise ValueError(
            f"unknown parameters {unknown} for {cls.__name__}; allowed: {sorted(flat_fields(cls))}"
        )
    return _build(cls, params)


def build_config(cls: type[T], namespace: Mapping[str, Any], /, **overrides: Any) -> T:
    """The config ``cls`` from a notebook's ``globals()``: the names in ``namespace`` that are
    fields of ``cls`` (or of its nested configs), then ``overrides`` (which must be fields).

    ``config = build_config(DeletionConfig, globals(), methods=["tracin-we"])``
    """
    accepted = flat_fields(cls)
    picked = {name: namespace[name] for name in sorted(accepted) if name in namespace}
    bad = sorted(set(overrides) - accepted)
    if bad:
        raise ValueError(f"overrides {bad} are not parameters of {cls.__name__}")
    return from_params(cls, picked | overrides)


def _build(cls: type[T], params: Mapping[str, Any]) -> T:
    kwargs = {}
    for name, hint in _hints(cls).items():
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, params)
        elif name in params:
            kwargs[name] = parse_literal(params[name], hint)
    return cls(**kwargs)


def parse_literal(value: Any, hint: Any) -> Any:
    """``value`` parsed as a Python literal when it is a string and ``hint`` takes no string;
    otherwise ``value`` unchanged (a string that is no literal is left for ``check_types``)."""
    if not isinstance(value, str) or _matches(value, hint):
        return value
    try:
        return ast.literal_eval(value.strip())
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return value


def check_types(config: Any) -> None:
    """Each field of the dataclass instance ``config`` against its annotation, then against the
    value rules of ``check_values``; the first mismatch is a ``ValueError`` naming the field, the
    value got and what is allowed."""
    for name, hint in _hints(type(config)).items():
        value = getattr(config, name)
        if not _matches(value, hint):
            wanted = describe(hint)
            example = f" (one value: {name}=[{value!r}])" if isinstance(value, str) else ""
            raise ValueError(
                f"{name}={value!r} has type {type(value).__name__}; {name} must be {wanted}"
                + (example if "list" in wanted else "")
            )
        check_values(name, value, hint)


def check_values(name: str, value: Any, hint: Any) -> None:
    """The rules every config shares, for a field ``name`` whose ``value`` matches ``hint``:

    - every float the annotation calls ``float`` (alone, in a list or tuple, as a dict value) is
      finite (no field of the package means anything by ±inf);
    - a seed field (``seed``, ``*_seed``, ``seeds``) holds integers in [0, 2**32).

    The seed rule goes by name, not by a typed alias: every seed of the package is named so, the
    range is numpy's whichever config holds the seed, and a name rule covers each config,
    present or future, without its author having to remember an annotation (a forgotten alias
    would skip the check silently)."""
    for number in _floats(value, hint):
        if not _finite(number):
            subject = name if number is value else f"each number of {name}"
            raise ValueError(f"{name}={value!r}: {subject} must be finite, not NaN or ±inf")
    if is_seed(name):
        many = isinstance(value, (tuple, list))
        bad = [s for s in (value if many else [value]) if isinstance(s, int)]
        bad = [s for s in bad if not 0 <= s < SEED_LIMIT]
        if bad:
            which = f"{bad[0]} in it is not" if many else f"{name} must be"
            raise ValueError(
                f"{name}={value!r}: {which} an integer in [0, 2**32) (numpy's seed range)"
            )


def is_int(value: Any) -> bool:
    """An ``int`` that is not a ``bool`` (``True`` is an int to Python, never to a parameter)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(name: str, value: Any, low: int, high: int | None = None, context: str = "") -> None:
    """``value`` is an int (not a bool) in [``low``, ``high``] (``high`` None: no upper bound),
    else a ``ValueError`` naming ``name``, the bounds and ``context``. For parameters that are
    not config fields (a notebook's own); fields get ``check_types``."""
    if not is_int(value) or value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name}={value!r} must be an integer {bound}{context}")


def is_seed(name: str) -> bool:
    """Whether the field ``name`` holds a random seed (or a list of them)."""
    return name in ("seed", "seeds") or name.endswith("_seed")


def _finite(number: float) -> bool:
    try:
        return math.isfinite(number)
    except OverflowError:  # an int beyond the largest float (10**400 for lr)
        return False


def _floats(value: Any, hint: Any) -> Iterator[float]:
    """The numbers in ``value`` at the places where ``hint`` says ``float`` (``value`` already
    matches ``hint``)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        match = next((h for h in args if _matches(value, h)), None)
        yield from _floats(value, match) if match is not None else ()
    elif origin in (tuple, list):
        if origin is tuple and args and args[-1] is not Ellipsis:
            for item, item_hint in zip(value, args, strict=True):
                yield from _floats(item, item_hint)
        elif args:
            for item in value:
                yield from _floats(item, args[0])
    elif origin is dict and args:
        for item in value.values():
            yield from _floats(item, args[1])
    elif hint is float:
        yield value


def _matches(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if hint is None or hint is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in args)
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if origin in (tuple, list):
        if not isinstance(value, (tuple, list)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(map(_matches, value, args))
        return all(_matches(v, args[0]) for v in value) if args else True
    if origin is dict:
        key, item = args or (Any, Any)
        return isinstance(value, dict) and all(
            _matches(k, key) and _matches(v, item) for k, v in value.items()
        )
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    raise TypeError(f"check_types cannot check the annotation {hint!r}")


def describe(hint: Any, article: bool = True) -> str:
    """An annotation in words, for error messages: ``tuple[int, ...]`` → ``a list of int``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is None or hint is type(None):
        return "None"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(h, article) for h in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin in (tuple, list):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"a list of {len(args)} values ({', '.join(describe(a, False) for a in args)})"
        return f"a list of {describe(args[0], False) if args else 'values'}"
    if origin is dict:
        key, item = args or (Any, Any)
        return f"a dict of {describe(key, False)} to {describe(item, False)}"
    if hint is bool:
        return "True or False" if article else "bool"
    name = getattr(hint, "__name__", repr(hint))
    if hint is float and article:
        return "a float (an int is fine)"
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}" if article else name
