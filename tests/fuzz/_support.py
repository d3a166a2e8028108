"""Shared pieces of the fuzz suite: example budgets and structure-aware value strategies.

``BCFL_FUZZ_EXAMPLES`` multiplies every test's ``max_examples`` (default 1): set it to 100
for a long run. Strategies are derived from the encoded dataclasses' field types, so a new
consensus message or field is fuzzed without touching this file.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from typing import Annotated, Any, get_args, get_origin

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from node.codec import MaxCount, MaxSize, Size, Uint

FUZZ_SCALE = max(1, int(os.environ.get("BCFL_FUZZ_EXAMPLES", "1")))


def fuzz_settings(max_examples: int, **kwargs: Any) -> settings:
    """Bounded by default (CI); ``BCFL_FUZZ_EXAMPLES=N`` runs N times as many examples."""
    return settings(
        max_examples=max_examples * FUZZ_SCALE,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        **kwargs,
    )


def boundary_uints(bits: int) -> st.SearchStrategy[int]:
    """Uniform values plus the edges a decoder or a replica is most likely to get wrong."""
    top = (1 << bits) - 1
    edges = st.sampled_from(sorted({0, 1, 2, top - 1, top, top >> 1, (top >> 1) + 1}))
    return st.one_of(edges, st.integers(0, top), st.integers(0, 64))


def strategy_for_type(tp: Any, small: bool = True) -> st.SearchStrategy[Any]:
    """A strategy for any type ``node/codec.py`` encodes (dataclasses included)."""
    markers: tuple[Any, ...] = ()
    if get_origin(tp) is Annotated:
        tp, *rest = get_args(tp)
        markers = tuple(rest)
    size = next((m.n for m in markers if isinstance(m, Size)), None)
    size_max = next((m.n for m in markers if isinstance(m, MaxSize)), None)
    count_max = next((m.n for m in markers if isinstance(m, MaxCount)), None)
    bits = next((m.bits for m in markers if isinstance(m, Uint)), 64)
    if tp is bool:
        return st.booleans()
    if tp is int:
        return boundary_uints(bits)
    if tp is bytes:
        if size is not None:
            return st.binary(min_size=size, max_size=size)
        return st.binary(max_size=min(size_max or 48, 48))
    if tp is str:
        return st.text(st.characters(codec="utf-8"), max_size=min(size_max or 16, 16))
    if get_origin(tp) is tuple:
        element = strategy_for_type(get_args(tp)[0], small)
        return st.lists(element, max_size=min(count_max or 3, 3 if small else 6)).map(tuple)
    if get_origin(tp) in (typing.Union, __import__("types").UnionType):
        args = get_args(tp)
        return st.one_of(
            *[st.none() if a is type(None) else strategy_for_type(a, small) for a in args]
        )
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return dataclass_strategy(tp, small)
    raise TypeError(f"no strategy for {tp!r}")


def dataclass_strategy(cls: type, small: bool = True) -> st.SearchStrategy[Any]:
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: strategy_for_type(hints[f.name], small) for f in dataclasses.fields(cls)}
    return st.builds(cls, **fields)
