"""``model.generate()`` that is right for soft prompts: prompt tuning, P-tuning and prefix tuning.

With peft 0.21.2 and transformers 5.24, ``PeftModel.generate`` gives wrong tokens for every soft prompt: peft's
``prepare_inputs_for_generation`` still reads and injects ``past_key_values`` and ``cache_position``, which
transformers renamed (``cache``) and removed, so prompt tuning and P-tuning re-run the virtual tokens at every
step (the first token is right, later ones are not) and prefix tuning loses its prefix on most models. Left padding,
as tokenizers pad for generation, also puts the virtual tokens before the pads.

:func:`enable_soft_prompt_generate` gives the model its own ``generate`` (an attribute of that one model, set
explicitly, never at import) whose inputs are built the way peft's training forward builds them:

- prompt tuning and P-tuning: the first forward gets the virtual token embeddings right before each row's own
  tokens, after its padding (``[pads | virtual tokens | text]``), and every later step feeds one new token to the
  key/value cache;
- prefix tuning: the cache starts with the prefix key/values (``[prefix | pads | text]``); where a sliding window
  would count the pads against the prefix, each group of rows with the same padding is run on its own first, and
  the batch continues from their caches laid out as ``[pads | prefix | text]``.

Attention masks and position ids always cover the virtual tokens, so every row computes what it computes alone
(greedy, sampling, beam search; left or right padding: right-padded rows are moved to the left first, and the
returned sequences start with the inputs exactly as they were passed). Logits processors, stopping criteria,
streamers, ``max_length`` and ``return_dict_in_generate`` work as with any model; with right-padded inputs, the
first three see the rows moved to left padding (each row's tokens at its end), as they are decoded.

This is an upstream workaround (entry 3 of ``softprompt_hf/core/upstream.py``, which lists them all): it depends on
transformers 5.24's ``prepare_inputs_for_generation`` keywords (``cache``, ``next_sequence_length``) and on
peft 0.21.2's ``get_prompt``, ``word_embeddings`` and ``base_model_prepare_inputs_for_generation``. Once
``PeftModel.generate`` with a soft prompt gives the model's own tokens again, ``enable_soft_prompt_generate``
can return the model unchanged.
"""

from __future__ import annotations

import contextlib
import inspect
import types
from collections.abc import Iterator
from typing import Any

import torch
from peft import PeftModel, PeftModelForCausalLM, PeftType
from transformers.cache_utils import Cache

from ..core.kv_cache import cache_from_key_values, cache_key_values
from ..core.upstream import attention_windows, cache_argument, prefix_cache_from_peft, takes_logits_to_keep

__all__ = ["disable_soft_prompt_generate", "enable_soft_prompt_generate", "soft_prompt_generate"]

_METHODS = (PeftType.PROMPT_TUNING, PeftType.P_TUNING, PeftType.PREFIX_TUNING)
_STATE = "_softprompt_hf_generate"

# Arguments of generate() this version cannot make exact, with what to do instead.
_REFUSED = {
    "inputs_embeds": "pass input_ids (the soft prompt's virtual tokens are put in front of their embeddings)",
    "assistant_model": "assisted decoding is not supported with a soft prompt; generate without an assistant",
    "prompt_lookup_num_tokens": "prompt lookup decoding is not supported with a soft prompt",
    "cache": "a cache of earlier steps cannot be continued; pass the whole sequence as input_ids",
    "past_key_values": "a cache of earlier steps cannot be continued; pass the whole sequence as input_ids",
    "position_ids": "positions are computed from the attention mask, virtual tokens included; leave position_ids unset",
    "task_ids": "task_ids are for multitask prompt tuning, which this does not cover",
    "custom_generate": "a custom decoding loop from the Hub builds its own inputs; use the built-in decoding",
}


def enable_soft_prompt_generate(model: PeftModel) -> PeftModel:
    """Makes ``model.generate()`` right for a soft prompt: the tokens it returns are those of greedy decoding (or
    sampling, beam search) by repeated full forwards of the model, one row at a time, also for batches padded on
    the left or on the right.

    Call it once on a loaded or trained prompt tuning, P-tuning or prefix tuning ``PeftModel`` (e.g. from
    ``AutoPeftModelForCausalLM.from_pretrained``); it returns the model. Nothing else changes: training, the
    forward, and every other model are untouched. :func:`disable_soft_prompt_generate` undoes it, and
    :func:`soft_prompt_generate` enables it for a ``with`` block.

    ``generate()`` then refuses, with a message, what it cannot make exact: ``inputs_embeds``, assisted or prompt
    lookup decoding, continuing a cache passed in, a cache other than the default dynamic one
    (``cache_implementation="static"`` and others), chunked prefill, and attention masks with holes (rows must be
    padded on one side).

    Args:
        model: A ``PeftModel`` for causal LM whose active adapter is prompt tuning, P-tuning or prefix tuning.

    Returns:
        The same model.

    Raises:
        TypeError: ``model`` is not a ``PeftModel``, or its adapter is another method.
    """
    _check_method(model)
    if _STATE in model.__dict__:
        return model
    previous = model.__dict__.get("generate")
    model.__dict__[_STATE] = previous
    model.generate = types.MethodType(_generate, model)  # type: ignore[method-assign]
    return model


def disable_soft_prompt_generate(model: PeftModel) -> PeftModel:
    """Gives ``model`` back peft's own ``generate()`` (undoes :func:`enable_soft_prompt_generate`); returns it."""
    if _STATE not in model.__dict__:
        return model
    previous = model.__dict__.pop(_STATE)
    if previous is None:
        del model.__dict__["generate"]
    else:
        model.__dict__["generate"] = previous
    return model


@contextlib.contextmanager
def soft_prompt_generate(model: PeftModel) -> Iterator[PeftModel]:
    """Enables :func:`enable_soft_prompt_generate` for a ``with`` block (and leaves it on if it already was)."""
    already = _STATE in model.__dict__
    enable_soft_prompt_generate(model)
    try:
        yield model
    finally:
        if not already:
            disable_soft_prompt_generate(model)


def fixes_generate(model: Any) -> bool:
    """Whether :func:`enable_soft_prompt_generate` applies to ``model``: a causal LM ``PeftModel`` whose active
    adapter is prompt tuning, P-tuning or prefix tuning."""
    return isinstance(model, PeftModelForCausalLM) and model.active_peft_config.peft_type in _METHODS


def _check_method(model: Any) -> Any:
    if not isinstance(model, PeftModelForCausalLM):
        raise TypeError(
            "enable_soft_prompt_generate takes a causal LM PeftModel with a soft prompt (AutoPeftModelForCausalLM, "
            f"get_peft_model on a causal LM), not a {type(model).__name__}; a plain transformers model's generate() "
            "needs no fix."
        )
    config = model.active_peft_config
    if config.peft_type not in _METHODS:
        raise TypeError(
            f"enable_soft_prompt_generate covers prompt tuning, P-tuning and prefix tuning; this adapter is "
            f"{config.peft_type.value}, whose generate() it does not change."
        )
    return config


def _generate(self: PeftModel, inputs: torch.Tensor | None = None, **kwargs: Any) -> Any:
    config = _check_method(self)
    for name, fix in _REFUSED.items():
        if kwargs.get(name) is not None:
            raise ValueError(f"generate({name}=...) with a soft prompt: {fix}.")
    generation_config = kwargs.get("generation_config") or self.generation_config
    implementation = kwargs.get("cache_implementation", getattr(generation_config, "cache_implementation", None))
    if implementation not in (None, "dynamic"):
        raise ValueError(
            f"generate(cache_implementation={implementation!r}) with a soft prompt: only the default dynamic cache "
            "holds the virtual tokens correctly; leave cache_implementation unset."
        )
    if kwargs.get("prefill_chunk_size", getattr(generation_config, "prefill_chunk_size", None)) is not None:
        raise ValueError("generate(prefill_chunk_size=...) with a soft prompt: leave prefill_chunk_size unset.")
    input_ids = kwargs.pop("input_ids", inputs)
    if input_ids is None:
        raise ValueError("generate() with a soft prompt needs input_ids (the prompt's tokens).")
    mask = kwargs.pop("attention_mask", None)
    if mask is None:
        mask = torch.ones_like(input_ids)
    left_ids, left_mask, moved = _to_left_padding(input_ids, mask)
    decoding = _Decoding(self, config, _new_tokens(generation_config, kwargs, input_ids.shape[1]))
    previous = self.__dict__.get("prepare_inputs_for_generation")
    # peft's generate() hands `self.prepare_inputs_for_generation` to the base model for the call: ours, for now.
    self.__dict__["prepare_inputs_for_generation"] = decoding.prepare_inputs
    try:
        # The generate() this one replaced: peft's, or another wrapper's set on this model before.
        previous_generate = self.__dict__.get(_STATE) or types.MethodType(type(self).generate, self)
        outputs = previous_generate(input_ids=left_ids, attention_mask=left_mask, **kwargs)
    finally:
        if previous is None:
            self.__dict__.pop("prepare_inputs_for_generation", None)
        else:
            self.__dict__["prepare_inputs_for_generation"] = previous
    if moved:
        outputs = _restore_inputs(outputs, input_ids)
    return outputs


def _new_tokens(generation_config: Any, kwargs: dict[str, Any], length: int) -> int:
    """How many tokens this call may generate at most."""
    new = kwargs.get("max_new_tokens", getattr(generation_config, "max_new_tokens", None))
    if new is None:
        new = kwargs.get("max_length", getattr(generation_config, "max_length", None) or 20) - length
    return max(int(new), 1)


def _to_left_padding(input_ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """The rows moved to the left padding that generation needs (each row's tokens at the end), and whether any
    row moved. Rows must be padded on one side: their mask's ones a single block at the start or the end."""
    if mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask has shape {tuple(mask.shape)}, input_ids {tuple(input_ids.shape)}.")
    ones = mask.bool()
    counts = ones.sum(dim=1)
    width = mask.shape[1]
    columns = torch.arange(width, device=mask.device)
    left = columns[None, :] >= (width - counts)[:, None]
    right = columns[None, :] < counts[:, None]
    is_left = (ones == left).all(dim=1)
    is_right = (ones == right).all(dim=1)
    if not bool((is_left | is_right).all()):
        row = int((~(is_left | is_right)).nonzero()[0])
        raise ValueError(
            f"Row {row} of the attention_mask has padding inside its tokens; with a soft prompt, generate() needs "
            "each row padded on one side only (tokenizer(..., padding=True) with padding_side 'left' or 'right')."
        )
    if bool((counts == 0).any()):
        raise ValueError("A row of the attention_mask is all padding: give every row at least one token.")
    if bool(is_left.all()):
        return input_ids, mask, False
    # Roll each right-padded row so that its tokens end the row.
    shift = torch.where(is_left, torch.zeros_like(counts), width - counts)
    index = (columns[None, :] - shift[:, None]) % width
    return input_ids.gather(1, index), left.to(mask.dtype), True


def _restore_inputs(outputs: Any, input_ids: torch.Tensor) -> Any:
    """Puts the inputs, as they were passed, back at the start of the returned sequences."""
    sequences = outputs if isinstance(outputs, torch.Tensor) else outputs.sequences
    repeats = sequences.shape[0] // input_ids.shape[0]
    sequences[:, : input_ids.shape[1]] = input_ids.repeat_interleave(repeats, dim=0)
    return outputs


class _Decoding:
    """One ``generate()`` call's input preparation: where each row's virtual tokens are and how each step's
    attention mask and positions cover them."""

    def __init__(self, model: PeftModel, config: Any, new_tokens: int) -> None:
        self.model: Any = model
        self.config = config
        self.virtual = int(config.num_virtual_tokens)
        self.base: Any = model.get_base_model()
        self.base_prepare = model.base_model_prepare_inputs_for_generation
        # Where the virtual tokens sit: right before each row's tokens (True, "[pads | virtual | text]"), or at the
        # start of every row ("[prefix | pads | text]", prefix tuning's cache when no sliding window cuts it).
        self.after_pads = config.peft_type != PeftType.PREFIX_TUNING
        windows = [w for w in attention_windows(getattr(self.base, "config", None))[0] if w is not None]
        self.window: int | None = min(windows) if windows else None
        self.new_tokens = new_tokens
        self.empty_cache: Cache | None = None
        self.cache_name = cache_argument(self.base)
        self.keeps_logits = takes_logits_to_keep(self.base)
        self.takes_positions = "position_ids" in inspect.signature(self.base.forward).parameters

    def full_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """The attention mask over the virtual tokens and the sequence, ``(batch, virtual + length)``."""
        if not self.after_pads:
            return torch.cat([mask.new_ones(mask.shape[0], self.virtual), mask], dim=1)
        # Left padding: each row's ones end it; the virtual tokens add as many.
        width = mask.shape[1] + self.virtual
        counts = mask.sum(dim=1, keepdim=True) + self.virtual
        return (torch.arange(width, device=mask.device)[None, :] >= width - counts).to(mask.dtype)

    def prepare_inputs(self, input_ids: torch.Tensor, **kwargs: Any) -> dict[str, Any]:
        mask: torch.Tensor | None = kwargs.get("attention_mask")
        if mask is None:  # transformers drops an all-ones mask (no padding): every position is attended
            mask = torch.ones_like(input_ids)
        # generate() passes the cache under the name the model's forward takes (transformers 5.24: cache; 5.23:
        # past_key_values, core.upstream entry 1).
        cache: Cache | None = kwargs.get(self.cache_name)
        use_cache = kwargs.get("use_cache", True)
        first = not use_cache or cache is None or cache.get_seq_length() == 0
        # The empty cache generate() made for this model (its layer kinds), for prompt tuning and P-tuning to fill.
        self.empty_cache = cache if use_cache and cache is not None and cache.get_seq_length() == 0 else None
        if first:
            kwargs["next_sequence_length"] = None  # the whole prompt
            kwargs[self.cache_name] = None
        model_inputs = self.base_prepare(input_ids, **kwargs)
        if first:
            model_inputs.update(self._first_inputs(input_ids, mask, model_inputs))
        else:
            model_inputs["attention_mask"] = self.full_mask(mask)
        if "position_ids" in model_inputs:
            model_inputs["position_ids"] = self._positions(
                model_inputs["attention_mask"], self._fed_length(model_inputs)
            )
        return model_inputs

    @staticmethod
    def _fed_length(model_inputs: dict[str, Any]) -> int:
        if model_inputs.get("inputs_embeds") is not None:
            return int(model_inputs["inputs_embeds"].shape[1])
        return int(model_inputs["input_ids"].shape[1])

    @staticmethod
    def _positions(full_mask: torch.Tensor, fed: int) -> torch.Tensor:
        # Each token's position counts the tokens before it in its own row, virtual tokens included, as alone.
        positions = full_mask.long().cumsum(dim=1) - 1
        return positions.masked_fill(full_mask == 0, 1)[:, -fed:]

    def _first_inputs(self, input_ids: torch.Tensor, mask: torch.Tensor, model_inputs: dict[str, Any]) -> dict:
        batch = input_ids.shape[0]
        if self.config.peft_type != PeftType.PREFIX_TUNING:
            embeds = self.model.word_embeddings(input_ids)
            prompt = self.model.get_prompt(batch_size=batch).to(embeds.dtype)
            full_mask = self.full_mask(mask)
            # Row i: its pads, the virtual tokens, its tokens (left padding keeps the tokens at the end).
            pads = (mask == 0).sum(dim=1)
            width = full_mask.shape[1]
            slots = torch.arange(width, device=mask.device)[None, :].expand(batch, -1)
            is_virtual = (slots >= pads[:, None]) & (slots < (pads + self.virtual)[:, None])
            token_index = torch.where(slots < pads[:, None], slots, slots - self.virtual).clamp(min=0)
            virtual_index = (slots - pads[:, None]).clamp(0, self.virtual - 1)
            gathered_tokens = embeds.gather(1, token_index[..., None].expand(-1, -1, embeds.shape[-1]))
            gathered_prompt = prompt.gather(1, virtual_index[..., None].expand(-1, -1, prompt.shape[-1]))
            inputs_embeds = torch.where(is_virtual[..., None], gathered_prompt, gathered_tokens)
            return {
                "input_ids": None,
                "inputs_embeds": inputs_embeds,
                "attention_mask": full_mask,
                self.cache_name: self.empty_cache,
            }
        length = input_ids.shape[1]
        padded = bool((mask == 0).any())
        if self.window is not None and padded and self.virtual + length + self.new_tokens > self.window:
            return self._prefill_by_padding(input_ids, mask)
        self.after_pads = False
        cache = prefix_cache_from_peft(self.model, batch, self.virtual + length)
        return {self.cache_name: cache, "attention_mask": self.full_mask(mask), "use_cache": True}

    def _prefill_by_padding(self, input_ids: torch.Tensor, mask: torch.Tensor) -> dict[str, Any]:
        """Prefix tuning under a sliding window: each group of rows with the same padding runs its tokens but the
        last after the prefix alone; the batch continues from their caches laid out as ``[pads | prefix | text]``,
        so the window counts only each row's own positions."""
        self.after_pads = True
        batch, length = input_ids.shape
        pads = (mask == 0).sum(dim=1)
        total = self.virtual + length - 1
        layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        for pad in sorted(set(pads.tolist())):
            rows = (pads == pad).nonzero().flatten()
            own = input_ids[rows, pad:-1]
            cache = prefix_cache_from_peft(self.model, len(rows), self.virtual + own.shape[1])
            if own.shape[1]:
                extra: dict[str, Any] = {"logits_to_keep": 1} if self.keeps_logits else {}
                if self.takes_positions:
                    extra["position_ids"] = self.virtual + torch.arange(own.shape[1], device=own.device)[None, :]
                group_mask = mask.new_ones(len(rows), self.virtual + own.shape[1])
                self.base(input_ids=own, attention_mask=group_mask, use_cache=True, **{self.cache_name: cache}, **extra)
            for index, (keys, values) in enumerate(cache_key_values(cache)):
                if index == len(layers):
                    shape = (batch, keys.shape[1], total, keys.shape[3])
                    layers.append((keys.new_zeros(shape), values.new_zeros(shape)))
                # Right-aligned: the row's pads (masked out) first.
                layers[index][0][rows, :, total - keys.shape[2] :] = keys
                layers[index][1][rows, :, total - values.shape[2] :] = values
        return {
            "input_ids": input_ids[:, -1:],
            self.cache_name: cache_from_key_values(layers, self.base.config, length=total),
            "attention_mask": self.full_mask(mask),
            "use_cache": True,
        }
