"""Key/value caches built from tensors: a soft prompt's or a shared prompt's key/values, read from one cache and
given to a batch as the start of another (decoding, ``generate()``, training with the prompt computed once)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache

from .upstream import set_seen_length

__all__ = ["cache_from_key_values", "cache_key_values", "prefix_cache"]


def cache_key_values(cache: Cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each layer's keys and values in a filled ``DynamicCache`` (``(batch, heads, length, head_dim)``)."""
    # transformers 5.24 cache layers hold their tensors in `keys` / `values` (listed in softprompt_hf.core.upstream).
    pairs = []
    for layer in cache.layers:
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        if not isinstance(keys, torch.Tensor) or not isinstance(values, torch.Tensor):
            raise TypeError(f"Cannot read the key/values of a {type(layer).__name__} cache layer.")
        pairs.append((keys, values))
    return pairs


def prefix_cache(
    key_values: Sequence[tuple[torch.Tensor, torch.Tensor]], batch: int, config: Any, length: int | None = None
) -> DynamicCache:
    """A new cache for ``batch`` rows that all start with the same one-row ``key_values`` (from
    :func:`cache_key_values`); the prefix is shared, not copied, until a forward appends to it. ``length``: see
    :func:`cache_from_key_values`."""
    return cache_from_key_values(
        [(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)) for k, v in key_values], config, length
    )


def cache_from_key_values(
    key_values: Sequence[tuple[torch.Tensor, torch.Tensor]], config: Any, length: int | None = None
) -> DynamicCache:
    """A cache holding each layer's ``(keys, values)`` (``(batch, heads, positions, head_dim)``).

    ``length`` is the number of positions the key/values stand for. A sliding-window layer holds only the last
    ``window - 1`` key/values of a longer sequence, but must count every position: its masks are placed by that count.
    """
    # transformers 5.24 builds a cache from per-layer key/values with `ddp_cache_data` (listed in
    # softprompt_hf.core.upstream).
    cache = DynamicCache(ddp_cache_data=list(key_values), config=config)
    if length is not None:
        set_seen_length(cache, length)
    return cache
