"""Training with the soft prompt's layers computed once per batch instead of once per row.

Prompt tuning and P-tuning put the same virtual token embeddings in front of every row, and attention is
causal: the virtual tokens attend only to each other, so their hidden states and key/values are the same in
every row of a batch. peft's forward still runs them through every layer for every row: 8 to 20 extra
positions on rows of a few dozen tokens, a fifth or more of a step. This module computes them once (a batch
of one) and gives their key/values to the rest of the batch as a cache, the way prefix tuning's key/values are
given; gradients flow back through that cache to the soft prompt, summed over the rows as before. The loss and
the gradients are the stock ones up to float rounding.

Sliding-window attention (Mistral, the local layers of Gemma 2 and 3) is shared exactly too: a window is placed by
position, the virtual tokens hold the first positions of every row with or without the cache, and a sliding cache
layer keeps all of them as long as there are fewer than its window (Gemma 3 270M: 512 positions), so every real
token sees the virtual tokens it would see in peft's forward, and no others.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from peft import PeftModel, PeftType
from torch.utils.hooks import RemovableHandle
from transformers import DynamicCache
from transformers.utils import logging

from ..core.kv_cache import cache_key_values, prefix_cache
from ..core.upstream import activation_checkpointing_enabled, attention_windows, cache_argument, takes_cache

__all__ = ["enable_shared_prompt"]

logger = logging.get_logger(__name__)

_IGNORE_INDEX = -100
_SHARED_TYPES = (PeftType.PROMPT_TUNING, PeftType.P_TUNING)


def enable_shared_prompt(model: torch.nn.Module, *, in_eval: bool = False) -> RemovableHandle | None:
    """Makes the training forward of a prompt-tuning or P-tuning model run the virtual tokens once per batch.

    A forward pre-hook on the base causal LM takes what peft's forward hands it (the soft prompt's embeddings
    in front of every row's, ``-100`` labels under them), runs the virtual tokens alone as a batch of one,
    and passes their key/values as the cache of a forward over the real tokens only. A call is changed only
    when that is exact: training mode (or eval mode with ``in_eval=True``) with labels; no cache,
    ``position_ids``, ``shift_labels`` or ``logits_to_keep`` positions of its own; no activation
    checkpointing; more than one row; the same virtual token embeddings in every row, nothing masked among
    them, and no label on the first real token (the collator never puts one there: the prompt comes first).
    Any other call runs unchanged. ``outputs.logits`` then
    covers the real tokens only. Combine freely with
    :func:`~softprompt_hf.modeling.label_logits.enable_label_only_logits` (this hook runs first).

    Not enabled (a log line says why, and ``None`` is returned) for prefix tuning (its key/values are already
    computed once), models that are not prompt-tuning or P-tuning ``PeftModel``\\ s, base models with dropout
    (each row would no longer get its own dropout masks), and base models whose forward takes no cache or
    whose cache is not made of plain full-attention and sliding-window layers, or with as many virtual tokens as the
    smallest sliding window (its cache layer would drop some). Not for FSDP or DeepSpeed ZeRO-3, which expect each layer
    to run once per forward.

    Args:
        model: A ``PeftModel`` with a prompt-tuning or P-tuning adapter.
        in_eval: Also share in eval-mode calls with labels (the ``Trainer``'s eval loss).

    Returns:
        The hook's handle (``handle.remove()`` restores peft's forward), or ``None`` if not enabled.

    Example:

    ```python
    >>> from transformers import Trainer
    >>> from softprompt_hf import SoftPromptDataCollator, build_soft_prompt_model
    >>> model = build_soft_prompt_model(base_model, method="prompt_tuning", tokenizer=tokenizer)
    >>> handle = enable_shared_prompt(model)  # the virtual tokens run once per batch
    >>> trainer = Trainer(model=model, args=args, train_dataset=data.train,
    ...                   data_collator=SoftPromptDataCollator(tokenizer))
    >>> trainer.train().global_step  # the Trainer also prints the run's summary
    {'train_runtime': ...}
    2
    >>> handle.remove()  # peft's forward again

    ```
    """
    reason = _unsupported(model)
    if reason is not None:
        logger.info("The soft prompt is computed per row, as peft does: %s.", reason)
        return None
    base: Any = model.get_base_model()  # type: ignore[operator]
    peft_config: Any = model.active_peft_config
    virtual: int = peft_config.num_virtual_tokens
    config = base.config
    cache_name = cache_argument(base)

    def share_virtual_tokens(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> Any:
        if args or (not module.training and not in_eval):
            return None
        embeds, labels, mask = kwargs.get("inputs_embeds"), kwargs.get("labels"), kwargs.get("attention_mask")
        if embeds is None or labels is None or kwargs.get("input_ids") is not None:
            return None
        if kwargs.get(cache_name) is not None or kwargs.get("position_ids") is not None:
            return None
        if kwargs.get("past_key_values") is not None or kwargs.get("shift_labels") is not None:
            return None
        batch, length = embeds.shape[:2]
        if isinstance(kwargs.get("logits_to_keep"), torch.Tensor):
            return None  # positions chosen in the whole sequence, virtual tokens included
        if batch < 2 or length <= virtual or activation_checkpointing_enabled(module):
            return None
        if not bool((labels[:, : virtual + 1] == _IGNORE_INDEX).all()):
            return None
        if mask is not None and not bool((mask[:, :virtual] == 1).all()):
            return None
        prefix = embeds[:1, :virtual]
        if not torch.equal(embeds[:, :virtual], prefix.expand(batch, -1, -1)):
            return None
        # The virtual tokens alone, one row: their key/values for every row.
        virtual_cache = DynamicCache(config=config)
        prefix_mask = None if mask is None else mask[:1, :virtual]
        module(
            inputs_embeds=prefix,
            attention_mask=prefix_mask,
            use_cache=True,
            logits_to_keep=1,
            **{cache_name: virtual_cache},
        )
        shared = prefix_cache(cache_key_values(virtual_cache), batch, config)
        # The attention mask keeps covering the virtual tokens (now the cache) and the real tokens.
        kwargs.update({"inputs_embeds": embeds[:, virtual:], "labels": labels[:, virtual:], "use_cache": True})
        kwargs[cache_name] = shared
        return args, kwargs

    return base.register_forward_pre_hook(share_virtual_tokens, with_kwargs=True, prepend=True)


def _unsupported(model: torch.nn.Module) -> str | None:
    """Why the virtual tokens cannot be shared exactly in ``model``, or ``None`` if they can."""
    if not isinstance(model, PeftModel):
        return f"{type(model).__name__} is not a PeftModel"
    config = model.active_peft_config
    if config.peft_type not in _SHARED_TYPES:
        return f"{config.peft_type.value} is not prompt tuning or P-tuning"
    base: Any = model.get_base_model()
    parameters = inspect.signature(base.forward).parameters
    if not {"inputs_embeds", "labels", "attention_mask", "use_cache", "logits_to_keep"} <= set(parameters):
        return f"{type(base).__name__}.forward does not take the arguments needed"
    if not takes_cache(base):
        return f"{type(base).__name__}.forward takes no key/value cache"
    dropout = _dropout(base)
    if dropout is not None:
        return f"{type(base).__name__} has dropout ({dropout}), so each row's virtual tokens differ in training"
    windows, plain_attention = attention_windows(base.config)
    if not plain_attention:
        return f"{type(base).__name__} has cache layers other than full or sliding-window attention"
    virtual = config.num_virtual_tokens
    smallest = min((window for window in windows if window is not None), default=None)
    if smallest is not None and virtual >= smallest:
        # transformers 5.24's sliding cache layer keeps the last `window - 1` key/values only.
        return f"its {virtual} virtual tokens do not fit in its {smallest}-token sliding window"
    return None


def _dropout(model: torch.nn.Module) -> str | None:
    """The first active dropout of ``model`` (a ``Dropout`` module, or a dropout rate its modules apply
    themselves), or ``None``."""
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd) and module.p > 0:
            return f"{name}: p={module.p}"
        for attribute, value in vars(module).items():
            if "drop" in attribute and isinstance(value, float) and value > 0:
                return f"{name}.{attribute}={value}"
    return None
