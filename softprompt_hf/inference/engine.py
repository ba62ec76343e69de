"""The key/value-cache decoding engine that every decoding mode runs on: a causal LM, or a soft-prompt model's base
model, run with a key/value cache and the soft prompt placed where peft's training forward places it.

- :class:`CachedDecoder` runs one model (a plain causal LM, or one adapter's ``PeftModel``): the virtual tokens and
  the prompts' shared opening run once, prompts of different lengths batched exactly, the vocabulary projected a
  chunk at a time; a batch it decodes is a :class:`DecodingState`.
- :class:`MixedDecoder` runs rows of several adapters on one base model in the same batches, each with its own soft
  prompt, through their :class:`CachedDecoder` (here, not in ``mixed.py``, since the loops of ``loops.py`` take
  either decoder).
- The batching helpers (:func:`length_sorted_batches`, :func:`equal_length_batches`, :func:`join_rows`,
  :func:`common_prefix`, ``PROJECTION_ROWS``) and what the engine asks of a model (:func:`supports_logits_to_keep`,
  :func:`prompt_learning_config`).

The loops that decode with it are in :mod:`~softprompt_hf.inference.loops`, the public functions in
:mod:`~softprompt_hf.inference.labels`.
"""

from __future__ import annotations

import inspect
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch
from peft import PeftModel, PeftType
from transformers import DynamicCache
from transformers.cache_utils import Cache
from transformers.utils import logging

from ..core.kv_cache import cache_from_key_values, cache_key_values, prefix_cache
from ..core.upstream import (
    attention_windows,
    cache_argument,
    is_plain_dynamic_cache,
    positions_from_mask,
    prefix_cache_from_peft,
    takes_logits_to_keep,
)
from .output_head import ChunkedOutputHead

__all__ = [
    "CachedDecoder",
    "DecodingState",
    "MixedDecoder",
    "PROJECTION_ROWS",
    "common_prefix",
    "equal_length_batches",
    "join_rows",
    "length_sorted_batches",
    "prompt_learning_config",
    "supports_logits_to_keep",
]

logger = logging.get_logger(__name__)

# On a CPU, rows projected onto the vocabulary together in decoding (see CachedDecoder.batches_per_projection).
PROJECTION_ROWS = 128


def equal_length_batches(sequences: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    """Indices of ``sequences`` grouped by length (shortest first) and cut into batches of at most
    ``batch_size``: every batch can be stacked without padding."""
    by_length: dict[int, list[int]] = defaultdict(list)
    for index, ids in enumerate(sequences):
        by_length[len(ids)].append(index)
    return [
        indices[start : start + batch_size]
        for _, indices in sorted(by_length.items())
        for start in range(0, len(indices), batch_size)
    ]


def length_sorted_batches(sequences: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    """Indices of ``sequences`` sorted by length (shortest first) and cut into batches of at most ``batch_size``:
    each batch's rows are of similar lengths and carry little padding."""
    order = sorted(range(len(sequences)), key=lambda index: len(sequences[index]))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


class DecodingState:
    """A batch being decoded: the key/value cache, its attention mask, where each row's next token goes, and
    what each row's last position gave (``last``: its logits, or its output layer input, see
    :meth:`CachedDecoder.run`)."""

    def __init__(
        self,
        decoder: CachedDecoder,
        cache: Cache,
        mask: torch.Tensor,
        next_positions: torch.Tensor,
        last: torch.Tensor,
    ) -> None:
        self._decoder = decoder
        self.cache = cache
        self.mask = mask
        self.next_positions = next_positions
        self.last = last

    def feed(self, tokens: torch.Tensor, logits_to_keep: int | torch.Tensor = 1) -> torch.Tensor:
        """Appends ``tokens`` ``(batch, n)`` to every row; returns the outputs (see :meth:`CachedDecoder.run`)
        of the last ``logits_to_keep`` positions (``(batch, d)`` for 1, ``(batch, n, d)`` for 0, which keeps
        all), or of the ``True`` positions of a boolean ``(batch, n)`` mask (``(positions, d)``, row-major)."""
        n = tokens.shape[1]
        self.mask = torch.cat([self.mask, self.mask.new_ones(tokens.shape[0], n)], dim=1)
        positions = self.next_positions[:, None] + torch.arange(n, device=tokens.device)
        outputs = self._decoder.run(
            input_ids=tokens, cache=self.cache, mask=self.mask, positions=positions, logits_to_keep=logits_to_keep
        )
        self.next_positions = self.next_positions + n
        self.last = outputs[:, -1] if isinstance(logits_to_keep, int) and logits_to_keep == 1 else outputs
        return self.last

    def select_rows(self, indices: torch.Tensor) -> None:
        """Keeps only the rows at ``indices`` (in that order), e.g. those still decoding."""
        self.cache.batch_select_indices(indices)
        self.mask = self.mask[indices]
        self.next_positions = self.next_positions[indices]
        self.last = self.last[indices]

    def repeat_rows(self, repeats: int) -> None:
        """Repeats each row ``repeats`` times (row ``i`` becomes rows ``i * repeats ... i * repeats + repeats - 1``),
        so several continuations can share one prompt's cache."""
        self.cache.batch_repeat_interleave(repeats)
        self.mask = self.mask.repeat_interleave(repeats, dim=0)
        self.next_positions = self.next_positions.repeat_interleave(repeats, dim=0)
        self.last = self.last.repeat_interleave(repeats, dim=0)


class CachedDecoder:
    """Runs a causal LM, or the base model of a soft-prompt ``PeftModel``, with a key/value cache.

    For a soft prompt it builds what peft's forward builds, so cached decoding reads the same inputs at the
    same positions as the training forward: prompt tuning and P-tuning put the virtual token embeddings in
    front of the prompt's token embeddings (positions from 0); prefix tuning starts from a cache holding the
    prefix key/values (the real tokens at positions after the prefix). Causal attention makes the virtual
    tokens' key/values the same in every row, so for prompt tuning and P-tuning they are computed once per
    decoder (one row, the prompt encoder included) and every batch starts from them as prefix tuning starts
    from its own. For the same reason the tokens that all of the decoder's prompts start with (a template's
    fixed opening) are run once, after the virtual tokens, and each batch runs the rest of its prompts only.

    Prompts of different lengths share a batch when the model can be told each token's position: it takes
    ``position_ids``, or it derives positions from the attention mask (Bloom's ALiBi). Each prompt is padded
    on the right, the padding is masked out of attention, and each row's new tokens get the positions that
    follow its own prompt, so every row computes what it computes alone. Other models get equal-length
    batches without padding.

    Sliding-window attention (Mistral; Gemma 2/3 local layers) is placed by cache slot, not by position: in
    transformers 5.24 a query at slot ``s`` sees slots ``s - window + 1 ... s``, and a sliding cache layer keeps only
    the last ``window - 1`` of them. A row's pads take slots between its prompt and its new tokens, so its new
    tokens would see fewer of its own tokens than alone. Padding is therefore used only while a batch's slots all
    fit in the smallest window (virtual tokens + longest prompt + the tokens fed after it, see :meth:`batches`),
    where no window cuts anything; longer prompts are batched by equal length, without padding, which is exact
    (:meth:`run` refuses any padded batch beyond the window). Models with layers that keep other state
    (recurrent, linear attention), which pads would enter, get equal-length batches only.

    Where the model's logits are the output of a plain linear layer, the decoder applies that layer itself, a
    chunk of the vocabulary at a time (:class:`~softprompt_hf.inference.output_head.ChunkedOutputHead`), and keeps only
    what decoding and ranking need (the argmax, a few log-probabilities): ``run`` then returns the layer's
    inputs, and the model's own projection is skipped. The first forward checks that the model's logits are
    that layer's output; if not, the decoder keeps the model's logits.
    """

    _PROMPT_TYPES = (PeftType.PROMPT_TUNING, PeftType.P_TUNING)

    def __init__(
        self, model: torch.nn.Module, prompts: Sequence[Sequence[int]] = (), *, softcapped_head: bool = False
    ) -> None:
        self.peft_config = prompt_learning_config(model)
        self.model = model
        self.base: Any = model.get_base_model() if self.peft_config is not None else model  # type: ignore[operator]
        inner: Any = model.get_base_model() if isinstance(model, PeftModel) else model
        self._cache_argument = cache_argument(inner)
        self._keep = takes_logits_to_keep(inner)
        self._positions = "position_ids" in inspect.signature(inner.forward).parameters
        # Each layer's sliding window (None: it attends to the whole sequence), and whether every layer is
        # attention, full or windowed, whose padding the mask keeps out.
        self._layer_windows, plain_attention = attention_windows(getattr(self.base, "config", None))
        windows = [window for window in self._layer_windows if window is not None]
        self.window: int | None = min(windows) if windows else None
        self.mixed_lengths = plain_attention and (
            self._positions or positions_from_mask(getattr(inner, "config", None))
        )
        # softcapped_head: constrained decoding projects a few rows of the vocabulary, also for models that
        # soft-cap their logits (Gemma 2/3), where the head applies the same soft-capping.
        self.head = ChunkedOutputHead.of(self._target, softcap=softcapped_head)
        self._head_checked = False
        self.num_virtual_tokens = 0
        # What every row starts with, computed once as one row: the key/values of the virtual tokens (prompt
        # tuning, P-tuning) and then of the tokens that all prompts of this decoder start with.
        self._shared_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.shared_tokens: list[int] = []
        if self.peft_config is not None:
            self.num_virtual_tokens = self.peft_config.num_virtual_tokens
            if self.peft_config.peft_type in self._PROMPT_TYPES:
                self._shared_kv = self._virtual_token_cache()
        self._share_common_prefix(prompts)

    @torch.no_grad()
    def _virtual_token_cache(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Runs the soft prompt's virtual tokens alone, as peft's forward starts every row (at positions 0 to
        n - 1, attending only to each other), and returns their key/values per layer."""
        prompt = self.model.get_prompt(batch_size=1)  # type: ignore[operator]
        prompt = prompt.to(self.base.get_input_embeddings().weight.dtype)
        virtual = prompt.shape[1]
        cache: Cache = DynamicCache(config=self.base.config)
        mask = torch.ones(1, virtual, dtype=torch.long, device=prompt.device)
        positions = torch.arange(virtual, device=prompt.device)[None, :]
        self.run(inputs_embeds=prompt, cache=cache, mask=mask, positions=positions)
        return cache_key_values(cache)

    @torch.no_grad()
    def _share_common_prefix(self, prompts: Sequence[Sequence[int]]) -> None:
        """Runs once the tokens that all ``prompts`` start with (a template's fixed opening, say), after the
        virtual tokens; each batch then runs the rest of its prompts only. Every prompt keeps at least its last
        token, whose logits are the first prediction."""
        common = common_prefix(prompts)
        if not common:
            return
        virtual = self.num_virtual_tokens
        cache: Cache
        if self._shared_kv is not None:
            cache = prefix_cache(self._shared_kv, 1, self.base.config, length=virtual)
        elif self.peft_config is not None:  # prefix tuning: its key/values first, if they are a plain cache
            cache = prefix_cache_from_peft(self.model, batch_size=1, max_cache_len=virtual + len(common))
            if not is_plain_dynamic_cache(cache):
                return
        else:
            cache = DynamicCache(config=getattr(self.base, "config", None))
        device = next(self.model.parameters()).device
        input_ids = torch.tensor([common], device=device)
        mask = torch.ones(1, virtual + len(common), dtype=torch.long, device=device)
        positions = virtual + torch.arange(len(common), device=device)[None, :]
        self.run(input_ids=input_ids, cache=cache, mask=mask, positions=positions)
        self._shared_kv = cache_key_values(cache)
        self.shared_tokens = common

    @property
    def prefix_length(self) -> int:
        """How many positions each row's cache holds before its own tokens: the virtual tokens (or prefix tuning's
        key/values) and the shared tokens."""
        return self.num_virtual_tokens + len(self.shared_tokens)

    @torch.no_grad()
    def row_prefix(self) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """The key/values every row starts with, as one row (:attr:`prefix_length` positions): the shared
        key/values, or prefix tuning's own; ``None`` where they are not a plain cache (or the model has no soft
        prompt and its prompts share no tokens), whose rows cannot join another adapter's."""
        if self._shared_kv is not None:
            return self._shared_kv
        if self.peft_config is None:
            return None
        cache = prefix_cache_from_peft(self.model, batch_size=1, max_cache_len=self.num_virtual_tokens)
        return cache_key_values(cache) if is_plain_dynamic_cache(cache) else None

    @classmethod
    def supports(cls, model: torch.nn.Module) -> bool:
        """Whether the model can be decoded with a cache exactly: a plain causal LM, a ``PeftModel`` whose
        adapter is not a prompt-learning method, or prompt tuning, P-tuning and prefix tuning."""
        config = prompt_learning_config(model)
        return config is None or config.peft_type in (*cls._PROMPT_TYPES, PeftType.PREFIX_TUNING)

    def batches_per_projection(self, batch_size: int) -> int:
        """How many batches of ``batch_size`` prompts to decode in step, their positions projected onto the
        vocabulary together: on a CPU with the chunked head, enough for about ``PROJECTION_ROWS`` rows (per
        row, the chunked projection of 128 rows runs 1.4x faster than that of 32, ``benchmarks/RESULTS.md``);
        otherwise one. The batches' caches are held together, so memory grows with it as with a larger batch;
        the forward passes, whose activations would grow more, keep ``batch_size`` rows."""
        device = next(self.model.parameters()).device
        if self.head is None or device.type != "cpu":
            return 1
        return max(1, PROJECTION_ROWS // max(batch_size, 1))

    def batches(self, prompts: Sequence[Sequence[int]], batch_size: int, new_tokens: int = 0) -> list[list[int]]:
        """Indices of ``prompts`` in the batches this decoder can run exactly, when ``new_tokens`` tokens will be
        fed after each prompt (the generated tokens but the last; a label's tokens but its EOS): sorted by length
        (little padding) when lengths can be mixed, of equal lengths otherwise. With sliding-window attention,
        lengths are mixed only among the prompts whose virtual tokens + prompt + new tokens fit in the window
        (see the class docstring); the others are batched by equal length."""
        longest = None if self.window is None else self.window - self.num_virtual_tokens - new_tokens
        beyond = [] if longest is None else [i for i, ids in enumerate(prompts) if len(ids) > longest]
        if beyond and self.peft_config is not None:
            logger.warning_once(
                "%s attends within a %d-token sliding window in %d of its %d attention layers: there, with %d virtual "
                "tokens and %d new tokens, the last positions of a prompt longer than %d tokens no longer attend to "
                "the whole soft prompt (in training as in evaluation), so it steers them less. Results stay exact "
                "(such prompts are batched without padding); a shorter max_prompt_tokens or fewer virtual tokens "
                "keep the soft prompt in the window.",
                type(self.base).__name__,
                self.window,
                sum(window is not None for window in self._layer_windows),
                len(self._layer_windows),
                self.num_virtual_tokens,
                new_tokens,
                longest,
            )
        if not self.mixed_lengths:
            return equal_length_batches(prompts, batch_size)
        outside = set(beyond)
        within = [i for i in range(len(prompts)) if i not in outside]
        return [
            [indices[j] for j in batch]
            for indices, batching in ((within, length_sorted_batches), (beyond, equal_length_batches))
            for batch in batching([prompts[i] for i in indices], batch_size)
        ]

    def start(self, prompts: Sequence[Sequence[int]]) -> DecodingState:
        """Runs the prompts (token id lists, from those the decoder was made with, in one of :meth:`batches`)
        and returns the state holding their cache and the logits of each one's last position."""
        device = next(self.model.parameters()).device
        shared = len(self.shared_tokens)
        if any(list(ids[:shared]) != self.shared_tokens for ids in prompts):
            raise ValueError("These prompts do not start with the tokens this decoder shares; make a decoder for them.")
        prompts = [ids[shared:] for ids in prompts]
        batch = len(prompts)
        # The cache starts with the virtual tokens (prompt tuning, P-tuning: computed once per decoder; prefix
        # tuning: its key/values) and the shared tokens; the rest of each prompt follows them.
        offset = self.num_virtual_tokens + shared
        cache: Cache
        if self._shared_kv is not None:
            cache = prefix_cache(self._shared_kv, batch, self.base.config, length=offset)
        elif self.peft_config is not None:
            longest = max(len(ids) for ids in prompts)
            cache = prefix_cache_from_peft(self.model, batch_size=batch, max_cache_len=offset + longest)
        else:
            cache = DynamicCache(config=getattr(self.base, "config", None))
        prefix_mask = torch.ones(batch, offset, dtype=torch.long, device=device)
        return self.prefill(cache, prefix_mask, prompts, torch.full((batch,), offset, device=device))

    def prefill(
        self, cache: Cache, prefix_mask: torch.Tensor, prompts: Sequence[Sequence[int]], offsets: torch.Tensor
    ) -> DecodingState:
        """Runs ``prompts`` after what ``cache`` holds (each row's prefix: ``prefix_mask`` masks its slots, a row
        whose prefix is shorter than the longest is padded on the left), each from position ``offsets[row]`` (its
        own prefix length), and returns the state with each one's last position's outputs."""
        device = prefix_mask.device
        lengths = torch.tensor([len(ids) for ids in prompts], device=device)
        longest, shortest = int(lengths.max()), int(lengths.min())
        padded = longest != shortest or not bool(prefix_mask.all())
        if padded and not self.mixed_lengths:
            raise ValueError(f"{type(self.base).__name__} cannot decode prompts of different lengths in one batch.")
        # Right padding (with each row's own last token): causal attention keeps it out of the prompt's
        # positions, and the mask keeps it out of everything that follows.
        input_ids = torch.tensor([list(ids) + [ids[-1]] * (longest - len(ids)) for ids in prompts], device=device)
        batch = input_ids.shape[0]
        token_mask = (torch.arange(longest, device=device)[None, :] < lengths[:, None]).long()
        mask = torch.cat([prefix_mask, token_mask], dim=1)
        keep = longest - shortest + 1
        positions = offsets[:, None] + torch.arange(longest, device=device)
        inputs = {"input_ids": input_ids}
        if keep > 1 and self._keep:
            # Only each row's last prompt position: transformers >= 5.23 takes per-row positions (a (batch, 1)
            # integer tensor); a model that slices its own way is caught below.
            last_positions = (lengths - 1)[:, None]
            outputs = self.run(cache=cache, mask=mask, positions=positions, logits_to_keep=last_positions, **inputs)
            if outputs.shape[:2] == (batch, 1):
                return DecodingState(self, cache, mask, offsets + lengths, outputs[:, 0])
            raise RuntimeError(f"{type(self.base).__name__} ignored per-row logits_to_keep positions.")
        outputs = self.run(cache=cache, mask=mask, positions=positions, logits_to_keep=keep, **inputs)
        if keep == 1:
            last = outputs[:, -1]
        else:
            last = outputs[torch.arange(batch, device=device), lengths - 1 - (longest - keep)]
        return DecodingState(self, cache, mask, offsets + lengths, last)

    def run(
        self,
        *,
        cache: Cache,
        mask: torch.Tensor,
        positions: torch.Tensor,
        logits_to_keep: int | torch.Tensor = 1,
        **inputs: torch.Tensor,
    ) -> torch.Tensor:
        """Runs the model over ``inputs``, appending to ``cache``; returns, for the positions ``logits_to_keep``
        selects, their logits, or with :attr:`head` the output layer's inputs (which :meth:`argmax` and
        :meth:`log_probs` take either way)."""
        if self.window is not None and mask.shape[1] > self.window and not bool(mask.all()):
            # Padding inside a sliding window takes the place of a row's own tokens (see the class docstring).
            raise RuntimeError(
                f"A padded batch of {mask.shape[1]} positions crosses {type(self.base).__name__}'s "
                f"{self.window}-token sliding window, where its rows would not compute what they compute alone; "
                "batch the prompts with `CachedDecoder.batches(prompts, batch_size, new_tokens)`."
            )
        extra: dict[str, Any] = {"logits_to_keep": logits_to_keep} if self._keep else {}
        if self._positions:
            extra["position_ids"] = positions
        captured: list[torch.Tensor] = []
        handle = None
        if self.head is not None:
            # Keep the output layer's input; once the check below has passed, give the layer no position at all.
            skip = self._head_checked

            def capture(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
                captured.append(args[0])
                return (args[0][..., :0, :], *args[1:]) if skip else None

            handle = self.head.layer.register_forward_pre_hook(capture)
        try:
            outputs = self._target(
                attention_mask=mask, use_cache=True, **{self._cache_argument: cache}, **inputs, **extra
            )
        finally:
            if handle is not None:
                handle.remove()
        if self.head is not None and not self._head_checked:
            self._check_head(captured, outputs.logits)
        result = captured[-1] if self.head is not None else outputs.logits
        if not self._keep and isinstance(logits_to_keep, torch.Tensor) and logits_to_keep.dtype == torch.bool:
            result = result[logits_to_keep]
        elif not self._keep and isinstance(logits_to_keep, int) and logits_to_keep:
            result = result[:, -logits_to_keep:]
        return result

    @property
    def _target(self) -> Any:
        # The prefix of prompt methods is handled here, so the base model is called directly; a plain model or
        # another kind of adapter is called as it is.
        return self.base if self.peft_config is not None else self.model

    def _check_head(self, captured: list[torch.Tensor], logits: Any) -> None:
        """On the first forward: use the chunked head only if the model's logits are its layer's output."""
        assert self.head is not None
        if len(captured) == 1 and self.head.matches(captured[0], logits):
            self._head_checked = True
            return
        logger.info(
            "%s's logits are not its output layer's output (%d calls); decoding keeps the model's own logits.",
            type(self._target).__name__,
            len(captured),
        )
        self.head = None

    def argmax(self, outputs: torch.Tensor) -> torch.Tensor:
        """Each position's greedy token, from what :meth:`run` returned."""
        return self.head.argmax(outputs) if self.head is not None else outputs.argmax(dim=-1)

    def token_logits(self, outputs: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The logits of the vocabulary entries ``tokens`` (1-D token ids) at each position, ``(..., len(tokens))``,
        from what :meth:`run` returned: with :attr:`head`, only those rows of the output layer are computed."""
        if self.head is not None:
            return self.head.token_logits(outputs, tokens)
        return outputs[..., tokens]

    def log_probs(self, outputs: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Float32 log-probabilities of ``tokens`` (``(..., k)``) at each position, from what :meth:`run`
        returned."""
        if self.head is not None:
            return self.head.log_probs(outputs, tokens)
        return torch.log_softmax(outputs.float(), dim=-1).gather(-1, tokens)


class MixedDecoder:
    """Rows of several soft-prompt adapters on one base model (each a ``PeftModel`` around it) in the same batches.

    Each adapter keeps a :class:`CachedDecoder` of its own, which computes what all of its rows start with, once:
    its virtual tokens' key/values (prompt tuning, P-tuning) or its prefix key/values (prefix tuning), then its
    prompts' shared opening. A batch's cache holds each row's own prefix, padded on the left to the longest of the
    batch with masked slots; each row's tokens take the positions after its own prefix, as alone. So every row
    computes what it computes with its adapter alone (to float rounding: another batch shape is another matrix
    product). Mixing needs the model's per-row positions (``position_ids``, or Bloom's mask-derived ones); other
    models, and under a sliding window the rows whose padded slots would not fit in it (see
    :class:`CachedDecoder`), are batched by adapter and equal length, without padding. The base model is run
    through the first adapter's decoder (the same weights for all).
    """

    def __init__(self, decoders: Sequence[CachedDecoder], prefixes: Sequence[list[tuple[torch.Tensor, torch.Tensor]]]):
        self.decoders = list(decoders)
        self.runner = self.decoders[0]
        self.prefixes = list(prefixes)
        self.lengths = [decoder.prefix_length for decoder in self.decoders]

    @classmethod
    def of(
        cls, models: Sequence[torch.nn.Module], prompts: Sequence[Sequence[Sequence[int]]], *, softcapped_head: bool
    ) -> MixedDecoder | None:
        """The decoder for ``models`` (one per adapter, sharing one base model) and each one's prompts; ``None`` if
        some adapter's rows cannot share batches (it is not one of the three soft prompts, or its prefix is not a
        plain cache): then run each adapter alone."""
        bases = {id(model.get_base_model()) if isinstance(model, PeftModel) else id(model) for model in models}
        if len(bases) != 1 or not all(prompt_learning_config(model) is not None for model in models):
            return None
        if not all(CachedDecoder.supports(model) for model in models):
            return None
        decoders = [
            CachedDecoder(model, rows, softcapped_head=softcapped_head)
            for model, rows in zip(models, prompts, strict=True)
        ]
        prefixes = [decoder.row_prefix() for decoder in decoders]
        if any(prefix is None for prefix in prefixes):
            return None
        return cls(decoders, [prefix for prefix in prefixes if prefix is not None])

    def batches(
        self, rows: Sequence[tuple[int, Sequence[int]]], batch_size: int, new_tokens: Sequence[int]
    ) -> list[list[int]]:
        """Indices of ``rows`` (``(adapter, prompt ids)``; ``new_tokens[adapter]`` tokens fed after its prompts) in
        the batches that can run exactly: sorted by the length of what each row runs, adapters mixed, where the
        model takes per-row positions and (sliding window) the longest prefix, the prompt and the new tokens fit
        in the window; by adapter and equal length otherwise."""
        runner = self.runner
        rest = [len(ids) - len(self.decoders[adapter].shared_tokens) for adapter, ids in rows]
        longest_prefix = max(self.lengths)
        mixable = [
            i
            for i, (adapter, _) in enumerate(rows)
            if runner.mixed_lengths
            and (runner.window is None or longest_prefix + rest[i] + new_tokens[adapter] <= runner.window)
        ]
        chosen = set(mixable)
        by_key: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, (adapter, _) in enumerate(rows):
            if i not in chosen:
                by_key[(adapter, rest[i])].append(i)
        order = sorted(mixable, key=lambda i: rest[i])
        mixed = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
        alone = [
            indices[start : start + batch_size]
            for _, indices in sorted(by_key.items(), key=lambda item: (item[0][1], item[0][0]))
            for start in range(0, len(indices), batch_size)
        ]
        return mixed + alone

    def start(self, rows: Sequence[tuple[int, Sequence[int]]]) -> DecodingState:
        """Runs ``rows`` (``(adapter, prompt ids)``, one of :meth:`batches`) after each one's own prefix and returns
        the state holding their cache and each one's last position's outputs."""
        device = next(self.runner.model.parameters()).device
        prompts, lengths = [], []
        for adapter, ids in rows:
            shared = self.decoders[adapter].shared_tokens
            if list(ids[: len(shared)]) != shared:
                raise ValueError("A prompt does not start with the tokens its adapter's decoder shares.")
            prompts.append(list(ids[len(shared) :]))
            lengths.append(self.lengths[adapter])
        longest = max(lengths)
        layers = []
        for layer in range(len(self.prefixes[0])):
            keys, values = [], []
            for (adapter, _), length in zip(rows, lengths, strict=True):
                key, value = self.prefixes[adapter][layer]
                keys.append(torch.nn.functional.pad(key, (0, 0, longest - length, 0)))
                values.append(torch.nn.functional.pad(value, (0, 0, longest - length, 0)))
            layers.append((torch.cat(keys), torch.cat(values)))
        cache = cache_from_key_values(layers, self.runner.base.config, length=longest)
        offsets = torch.tensor(lengths, device=device)
        prefix_mask = (torch.arange(longest, device=device)[None, :] >= (longest - offsets)[:, None]).long()
        return self.runner.prefill(cache, prefix_mask, prompts, offsets)

    def batches_per_projection(self, batch_size: int) -> int:
        return self.runner.batches_per_projection(batch_size)

    def argmax(self, outputs: torch.Tensor) -> torch.Tensor:
        return self.runner.argmax(outputs)

    def token_logits(self, outputs: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.runner.token_logits(outputs, tokens)

    def log_probs(self, outputs: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.runner.log_probs(outputs, tokens)


def join_rows(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """``torch.cat`` along the rows, without a copy for a single part (a batch's logits can be large)."""
    return parts[0] if len(parts) == 1 else torch.cat(list(parts))


def common_prefix(prompts: Sequence[Sequence[int]]) -> list[int]:
    """The longest token prefix of all ``prompts``, leaving each prompt at least one token of its own."""
    if not prompts:
        return []
    first = prompts[0]
    length = min(len(ids) for ids in prompts) - 1
    for ids in prompts[1:]:
        length = next((i for i in range(length) if ids[i] != first[i]), length)
    return list(first[: max(length, 0)])


def prompt_learning_config(model: torch.nn.Module) -> Any:
    """The active peft config if ``model`` is a ``PeftModel`` with a prompt-learning adapter, else ``None``."""
    if not isinstance(model, PeftModel):
        return None
    config = model.active_peft_config
    return config if config.is_prompt_learning else None


def supports_logits_to_keep(model: torch.nn.Module) -> bool:
    """Whether the (base) model's forward takes ``logits_to_keep``, to compute logits only where needed
    instead of full-vocabulary logits for every position."""
    base: Any = model.get_base_model() if hasattr(model, "get_base_model") else model  # type: ignore[operator]
    return takes_logits_to_keep(base)
