"""Where a soft prompt starts: the initial values of prompt tuning's virtual tokens and of prefix tuning's prefix.

peft builds the prompt encoder; :func:`initialize_soft_prompt` then sets its values in memory, with the model's
own tokenizer and input-embedding layer (no tokenizer is loaded from a name or path, so in-session tokenizers
work offline). The initialisations:

Prompt tuning (``PROMPT_TUNING_INITS``):

- ``TEXT``: peft's TEXT init exactly. The init text as the tokenizer encodes any input, its special tokens
  included (a tokenizer that starts every input with BOS puts a BOS first), cut to the number of virtual tokens
  or repeated until it fills them; each virtual token is that token's input embedding.
- ``TEXT_WITHOUT_SPECIAL_TOKENS``: the same with the text's own tokens only (no BOS), so the input holds a
  single BOS, after the virtual tokens.
- ``CLASS_LABELS`` (Lester et al., 2021): one virtual token per class label, the mean of the input embeddings
  of the label's tokens (the label text as the tokenizer encodes it without special tokens), in the order of
  the labels; the remaining virtual tokens are the input embeddings of vocabulary tokens drawn at random (as
  ``SAMPLE_VOCAB``). A prompt shorter than the label set is refused.
- ``SAMPLE_VOCAB``: peft's: the input embeddings of vocabulary tokens drawn uniformly at random (with
  replacement, special tokens included).
- ``RANDOM``: peft's default: ``torch.nn.Embedding``'s own initialisation, a standard normal.

"Input embedding" is what the model's input-embedding layer returns for a token, the values the model's real
tokens enter it with (Gemma's embedding layer scales its rows by the square root of the hidden size).

Prefix tuning (``PREFIX_TUNING_INITS``), after Li & Liang (2021), who initialise the prefix with the activations
of real words:

- ``TEXT``: the key/values that the frozen model computes for the init text's tokens (tokenized, cut or repeated
  as prompt tuning's ``TEXT`` does), in every layer: the model then reads its input as if the text came before
  it. Only without ``prefix_projection``, whose MLP produces the prefix from its own parameters.
- ``RANDOM``: peft's own initialisation.

P-tuning has no initialisation of ours: its MLP or LSTM encoder transforms its input embedding, so starting
that input from the embeddings of words would not make the encoder's output, the virtual tokens, the words'
embeddings. It keeps peft's random initialisation.

Random draws use torch's global generator, as peft's do, so ``transformers.set_seed`` (the recipes' ``--seed``)
makes every initialisation the same run after run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from peft import PeftModel, PeftType
from transformers import DynamicCache, PreTrainedTokenizerBase
from transformers.utils import logging

from ..core.upstream import cache_argument

__all__ = [
    "PREFIX_TUNING_INITS",
    "PROMPT_TUNING_INITS",
    "SoftPromptInit",
    "fit_to_length",
    "initialization_of",
    "initialize_soft_prompt",
    "text_token_ids",
]

logger = logging.get_logger(__name__)

#: Prompt tuning's initialisations (see the module docstring); TEXT, SAMPLE_VOCAB and RANDOM are peft's own.
PROMPT_TUNING_INITS = ("TEXT", "TEXT_WITHOUT_SPECIAL_TOKENS", "CLASS_LABELS", "SAMPLE_VOCAB", "RANDOM")
#: Prefix tuning's initialisations (see the module docstring).
PREFIX_TUNING_INITS = ("RANDOM", "TEXT")

_TEXT_INITS = ("TEXT", "TEXT_WITHOUT_SPECIAL_TOKENS")
_INITS_BY_PEFT_TYPE = {
    PeftType.PROMPT_TUNING: PROMPT_TUNING_INITS,
    PeftType.PREFIX_TUNING: PREFIX_TUNING_INITS,
    PeftType.P_TUNING: ("RANDOM",),
}


@dataclass(frozen=True)
class SoftPromptInit:
    """Where a soft prompt starts, for :func:`initialize_soft_prompt`.

    Args:
        kind: One of ``PROMPT_TUNING_INITS`` (prompt tuning) or ``PREFIX_TUNING_INITS`` (prefix tuning); P-tuning
            takes ``"RANDOM"`` only (peft's own initialisation).
        text: The init text of the ``TEXT`` initialisations.
        class_labels: The label texts of ``CLASS_LABELS``, e.g. ``("complaint", "no complaint")``.

    Raises:
        ValueError: For an unknown ``kind``, or one without the text or labels it needs.
    """

    kind: str = "RANDOM"
    text: str | None = None
    class_labels: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        known = dict.fromkeys(PROMPT_TUNING_INITS + PREFIX_TUNING_INITS)
        if self.kind not in known:
            raise ValueError(f"Unknown soft-prompt initialisation {self.kind!r}; choose one of {list(known)}.")
        if self.kind in _TEXT_INITS and not (self.text or "").strip():
            raise ValueError(f"The {self.kind} initialisation needs a non-empty init text.")
        if self.kind == "CLASS_LABELS":
            labels = tuple(self.class_labels or ())
            if not labels or any(not str(label).strip() for label in labels):
                raise ValueError(
                    "The CLASS_LABELS initialisation needs the class labels (non-empty label texts, e.g. "
                    "class_labels=['complaint', 'no complaint']); or choose another initialisation."
                )
            object.__setattr__(self, "class_labels", labels)

    @property
    def is_peft_default(self) -> bool:
        """Whether this leaves the values peft gave the prompt (``RANDOM``)."""
        return self.kind == "RANDOM"


def text_token_ids(tokenizer: PreTrainedTokenizerBase, text: str, *, special_tokens: bool = True) -> list[int]:
    """The token ids of ``text``: with the tokenizer's special tokens (a BOS first, for a tokenizer that adds one),
    as peft's TEXT init encodes it, or the text's own tokens only (``special_tokens=False``).

    Raises:
        ValueError: If ``text`` encodes to no token.
    """
    ids = list(tokenizer(text, add_special_tokens=special_tokens)["input_ids"])
    if not ids:
        raise ValueError(f"The init text {text!r} tokenizes to nothing; choose another text.")
    return ids


def fit_to_length(token_ids: Sequence[int], length: int) -> list[int]:
    """``token_ids`` cut to ``length``, or repeated whole and then cut until they fill it, as peft's TEXT init
    does: ``fit_to_length([1, 2, 3], 7) == [1, 2, 3, 1, 2, 3, 1]``."""
    if not token_ids:
        raise ValueError("No token ids to fit.")
    repeats = math.ceil(length / len(token_ids))
    return (list(token_ids) * repeats)[:length]


_RECORD = "_softprompt_hf_initializations"


def initialization_of(model: Any) -> SoftPromptInit | None:
    """The initialisation :func:`initialize_soft_prompt` gave ``model``'s active adapter in this session (what
    ``build_soft_prompt_model`` and the recipes use), or None when it was not set here (a loaded adapter, or a
    ``get_peft_model`` of your own)."""
    record = getattr(model, "__dict__", {}).get(_RECORD, {})
    return record.get(getattr(model, "active_adapter", None))


@torch.no_grad()
def initialize_soft_prompt(
    model: PeftModel, init: SoftPromptInit, *, tokenizer: PreTrainedTokenizerBase | None = None
) -> None:
    """Sets the active adapter's soft prompt of ``model`` to where ``init`` says it starts (module docstring).

    Args:
        model: A prompt-tuning, prefix-tuning or P-tuning ``PeftModel``, as ``peft.get_peft_model`` built it.
        init: The initialisation; ``RANDOM`` leaves the prompt as peft made it.
        tokenizer: The base model's tokenizer (needed by every initialisation but ``RANDOM`` and
            ``SAMPLE_VOCAB``).

    Raises:
        ValueError: If ``init`` does not apply to the model's method, needs a tokenizer that was not given, or
            (``CLASS_LABELS``) has more labels than the prompt has virtual tokens.
    """
    config = model.peft_config[model.active_adapter]
    peft_type = PeftType(config.peft_type)
    allowed = _INITS_BY_PEFT_TYPE.get(peft_type)
    if allowed is None or init.kind not in allowed:
        name = peft_type.value.lower()
        raise ValueError(
            f"The {init.kind} initialisation does not apply to {name}; it takes {list(allowed or ())}."
            + (" P-tuning keeps peft's random start (see softprompt_hf.modeling.initialization)." if allowed else "")
        )
    # Recorded for the adapter's card and softprompt_hf.json: peft's config names only its own inits (a prompt set
    # here from TEXT_WITHOUT_SPECIAL_TOKENS or CLASS_LABELS is built RANDOM, then overwritten).
    model.__dict__.setdefault(_RECORD, {})[model.active_adapter] = init
    if init.is_peft_default:
        return
    encoder: Any = model.prompt_encoder[model.active_adapter]
    base: Any = model.get_base_model()
    num_tokens = encoder.embedding.weight.shape[0]
    if init.kind == "SAMPLE_VOCAB":
        values = _sampled_vocabulary(base.get_input_embeddings(), num_tokens)
    elif tokenizer is None:
        raise ValueError(
            f"The {init.kind} initialisation needs the model's tokenizer (pass tokenizer=...), to turn its text into "
            "tokens; or choose RANDOM or SAMPLE_VOCAB."
        )
    elif peft_type == PeftType.PREFIX_TUNING:
        _init_prefix_from_text(model, init.text or "", tokenizer)
        return
    elif init.kind == "CLASS_LABELS":
        values = _class_label_embeddings(base.get_input_embeddings(), tokenizer, init.class_labels or (), num_tokens)
    else:
        ids = text_token_ids(tokenizer, init.text or "", special_tokens=init.kind == "TEXT")
        values = _input_embeddings(base.get_input_embeddings(), fit_to_length(ids, num_tokens))
    weight = encoder.embedding.weight
    weight.copy_(values.to(weight.dtype))
    logger.info("prompt tuning: %d virtual tokens initialised with %s", num_tokens, init.kind)


def _input_embeddings(word_embeddings: torch.nn.Module, token_ids: Sequence[int]) -> torch.Tensor:
    """The rows the input-embedding layer gives ``token_ids`` (its forward: Gemma scales them)."""
    device = next(word_embeddings.parameters()).device
    return word_embeddings(torch.tensor(list(token_ids), dtype=torch.long, device=device))


def _sampled_vocabulary(word_embeddings: Any, count: int) -> torch.Tensor:
    """The input embeddings of ``count`` tokens drawn uniformly from the whole vocabulary with torch's global
    generator: the same draw as peft's SAMPLE_VOCAB, so the same seed gives the same rows."""
    vocab_size = int(word_embeddings.num_embeddings)
    token_ids = torch.randint(0, vocab_size, (count,), dtype=torch.long)
    return _input_embeddings(word_embeddings, token_ids.tolist())


def _class_label_embeddings(
    word_embeddings: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    class_labels: Sequence[str],
    num_tokens: int,
) -> torch.Tensor:
    """One row per class label, the mean input embedding of its tokens, then sampled vocabulary rows."""
    if len(class_labels) > num_tokens:
        raise ValueError(
            f"CLASS_LABELS puts one virtual token per class label: {len(class_labels)} labels do not fit in "
            f"{num_tokens} virtual tokens. Set num_virtual_tokens to at least {len(class_labels)}, or choose "
            "another initialisation."
        )
    rows = []
    for label in class_labels:
        ids = list(tokenizer(label, add_special_tokens=False)["input_ids"])
        if not ids:
            raise ValueError(f"The class label {label!r} tokenizes to nothing; CLASS_LABELS cannot use it.")
        rows.append(_input_embeddings(word_embeddings, ids).mean(dim=0))
    label_rows = torch.stack(rows)
    rest = num_tokens - len(rows)
    if rest == 0:
        return label_rows
    return torch.cat([label_rows, _sampled_vocabulary(word_embeddings, rest).to(label_rows.dtype)])


def _init_prefix_from_text(model: PeftModel, text: str, tokenizer: PreTrainedTokenizerBase) -> None:
    """Sets a prefix (without projection) to the key/values the frozen base model computes for ``text``."""
    config: Any = model.peft_config[model.active_adapter]
    encoder: Any = model.prompt_encoder[model.active_adapter]
    if getattr(config, "prefix_projection", False):
        raise ValueError(
            "The TEXT initialisation of prefix tuning sets the prefix's key/values themselves, which "
            "prefix_projection computes with an MLP instead. Set prefix_projection=False, or prefix_tuning_init "
            "to RANDOM."
        )
    num_tokens = config.num_virtual_tokens
    token_ids = fit_to_length(text_token_ids(tokenizer, text), num_tokens)
    base: Any = model.get_base_model()
    device = next(base.parameters()).device
    cache = DynamicCache(config=base.config)
    was_training = base.training
    base.eval()
    try:
        base(
            input_ids=torch.tensor([token_ids], device=device),
            use_cache=True,
            **{cache_argument(base): cache},
        )
    finally:
        base.train(was_training)
    heads = config.num_attention_heads
    head_dim = config.token_dim // heads
    layers = []
    layer: Any
    for index, layer in enumerate(cache.layers):
        keys, values = layer.keys, layer.values
        expected = (1, heads, num_tokens, head_dim)
        if keys is None or tuple(keys.shape) != expected or tuple(values.shape) != expected:
            got = None if keys is None else tuple(keys.shape)
            raise ValueError(
                f"Layer {index} of {type(base).__name__} cached key/values of shape {got} for the init text, where "
                f"peft's prefix has {expected} (batch, heads, virtual tokens, head size): this model's prefix cannot "
                "be initialised from text (a sliding window shorter than the prefix drops the first tokens). Use "
                "prefix_tuning_init=RANDOM, or fewer virtual tokens."
            )
        layers.append(torch.stack([keys[0], values[0]]))  # (key/value, heads, tokens, head size)
    if len(layers) != config.num_layers:
        raise ValueError(
            f"{type(base).__name__} cached {len(layers)} layers of key/values, peft's prefix has {config.num_layers}: "
            "this model's prefix cannot be initialised from text. Use prefix_tuning_init=RANDOM."
        )
    # peft reads its prefix row by row as (virtual token, layer, key/value, head, head size).
    prefix = torch.stack(layers).permute(3, 0, 1, 2, 4).reshape(num_tokens, -1)
    weight = encoder.embedding.weight
    weight.copy_(prefix.to(device=weight.device, dtype=weight.dtype))
    logger.info("prefix tuning: %d virtual tokens initialised with the key/values of the init text", num_tokens)
