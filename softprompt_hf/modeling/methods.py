"""One builder for the three soft-prompt methods: prompt tuning, P-tuning and prefix tuning."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from peft import (
    PeftConfig,
    PeftModel,
    PeftType,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptEncoderReparameterizationType,
    PromptTuningConfig,
    PromptTuningInit,
    TaskType,
    get_peft_model,
)
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainingArguments
from transformers.utils import logging

from ..core.upstream import (
    activation_checkpointing_enabled,
    activation_checkpointing_requested,
    route_prefix_cache_argument,
)
from .initialization import (
    PREFIX_TUNING_INITS,
    PROMPT_TUNING_INITS,
    SoftPromptInit,
    initialize_soft_prompt,
    text_token_ids,
)

__all__ = [
    "METHODS",
    "METHOD_OPTIONS",
    "SEED_PROMPT_TUNING_INIT_TEXT",
    "SoftPromptArguments",
    "build_peft_config",
    "build_soft_prompt_model",
    "check_training_arguments",
    "eval_mode",
    "method_name",
]

logger = logging.get_logger(__name__)

METHODS = ("prompt_tuning", "p_tuning", "prefix_tuning")

#: The seed guide's initialisation text for prompt tuning (8 tokens with bloomz-560m's tokenizer).
SEED_PROMPT_TUNING_INIT_TEXT = "Classify if the tweet is a complaint or no complaint.\n"

_METHOD_BY_PEFT_TYPE = {
    PeftType.PROMPT_TUNING: "prompt_tuning",
    PeftType.P_TUNING: "p_tuning",
    PeftType.PREFIX_TUNING: "prefix_tuning",
}

_DEFAULT_NUM_VIRTUAL_TOKENS = 20
_SEED_ENCODER_HIDDEN_SIZE = 128
_TEXT_INIT_NEEDS_TOKENIZER = (
    "{init} init needs the tokenizer (pass tokenizer=...), to count the init text's tokens; or set "
    "num_virtual_tokens, or choose another initialisation."
)
# What peft's config records for each prompt-tuning init: peft builds TEXT, SAMPLE_VOCAB and RANDOM itself; the
# other two start from RANDOM in peft's eyes, and their values are set once the model is built.
_PEFT_PROMPT_INIT = {
    "TEXT": PromptTuningInit.TEXT,
    "TEXT_WITHOUT_SPECIAL_TOKENS": PromptTuningInit.RANDOM,
    "CLASS_LABELS": PromptTuningInit.RANDOM,
    "SAMPLE_VOCAB": PromptTuningInit.SAMPLE_VOCAB,
    "RANDOM": PromptTuningInit.RANDOM,
}

#: The methods that take each option of ``SoftPromptArguments`` (``num_virtual_tokens``: all three).
METHOD_OPTIONS: dict[str, tuple[str, ...]] = {
    "prompt_tuning_init": ("prompt_tuning",),
    "prompt_tuning_init_text": ("prompt_tuning",),
    "prefix_tuning_init": ("prefix_tuning",),
    "prefix_tuning_init_text": ("prefix_tuning",),
    "encoder_reparameterization_type": ("p_tuning",),
    "encoder_hidden_size": ("p_tuning", "prefix_tuning"),
    "encoder_num_layers": ("p_tuning",),
    "encoder_dropout": ("p_tuning",),
    "prefix_projection": ("prefix_tuning",),
}
_ENCODER_TYPES = tuple(kind.value for kind in PromptEncoderReparameterizationType)


@dataclass
class SoftPromptArguments:
    """Which soft-prompt method to train and how; the defaults are the seed guide's.

    Parsable with ``transformers.HfArgumentParser``. An option of another method than the chosen one must keep
    its default: ``SoftPromptArguments(method="p_tuning", prefix_projection=True)`` is refused, with the
    methods that take it (``METHOD_OPTIONS``).
    """

    method: str = field(
        default="prompt_tuning",
        metadata={"help": f"Soft-prompt method, one of {', '.join(METHODS)}.", "choices": list(METHODS)},
    )
    num_virtual_tokens: int | None = field(
        default=None,
        metadata={
            "help": "Number of virtual tokens. Default: the init text's token count (as its TEXT init tokenizes "
            f"it) for prompt tuning or prefix tuning initialised from text, {_DEFAULT_NUM_VIRTUAL_TOKENS} otherwise."
        },
    )
    prompt_tuning_init: str = field(
        default="TEXT",
        metadata={
            "help": "Prompt tuning initialisation: TEXT (peft's: input embeddings of the init text's tokens as "
            "the tokenizer encodes any input, a BOS first if it adds one), TEXT_WITHOUT_SPECIAL_TOKENS (the text's "
            "own tokens only), CLASS_LABELS (one virtual token per class label, the mean embedding of its tokens; "
            "the rest sampled from the vocabulary), SAMPLE_VOCAB (embeddings of random vocabulary tokens) or "
            "RANDOM (peft's default).",
            "choices": list(PROMPT_TUNING_INITS),
        },
    )
    prompt_tuning_init_text: str = field(
        default=SEED_PROMPT_TUNING_INIT_TEXT,
        metadata={
            "help": "Text whose token embeddings initialise the prompt (prompt tuning, TEXT and "
            "TEXT_WITHOUT_SPECIAL_TOKENS init)."
        },
    )
    prefix_tuning_init: str = field(
        default="RANDOM",
        metadata={
            "help": "Prefix tuning initialisation: RANDOM (peft's) or TEXT (the key/values the frozen model "
            "computes for the init text's tokens, in every layer; without prefix_projection only).",
            "choices": list(PREFIX_TUNING_INITS),
        },
    )
    prefix_tuning_init_text: str = field(
        default=SEED_PROMPT_TUNING_INIT_TEXT,
        metadata={"help": "Text whose key/values initialise the prefix (prefix tuning, TEXT init)."},
    )
    encoder_reparameterization_type: str = field(
        default="MLP",
        metadata={"help": "P-tuning prompt encoder: MLP or LSTM.", "choices": list(_ENCODER_TYPES)},
    )
    encoder_hidden_size: int | None = field(
        default=_SEED_ENCODER_HIDDEN_SIZE,
        metadata={
            "help": "Hidden size of the P-tuning prompt encoder (the seed's 128), and of the prefix projection "
            "when prefix tuning uses prefix_projection."
        },
    )
    encoder_num_layers: int = field(default=2, metadata={"help": "Layers of the P-tuning prompt encoder."})
    encoder_dropout: float = field(default=0.0, metadata={"help": "Dropout of the P-tuning prompt encoder."})
    prefix_projection: bool = field(
        default=False,
        metadata={"help": "Prefix tuning: reparameterise the prefix through a two-layer MLP."},
    )

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"Unknown soft-prompt method {self.method!r}; choose one of {list(METHODS)}.")
        self.prompt_tuning_init = str(getattr(self.prompt_tuning_init, "value", self.prompt_tuning_init)).upper()
        if self.prompt_tuning_init not in PROMPT_TUNING_INITS:
            raise ValueError(
                f"Unknown prompt_tuning_init {self.prompt_tuning_init!r}; choose one of {list(PROMPT_TUNING_INITS)}."
            )
        self.prefix_tuning_init = str(self.prefix_tuning_init).upper()
        if self.prefix_tuning_init not in PREFIX_TUNING_INITS:
            raise ValueError(
                f"Unknown prefix_tuning_init {self.prefix_tuning_init!r}; choose one of {list(PREFIX_TUNING_INITS)}."
            )
        kind = getattr(self.encoder_reparameterization_type, "value", self.encoder_reparameterization_type)
        self.encoder_reparameterization_type = str(kind).upper()
        if self.encoder_reparameterization_type not in _ENCODER_TYPES:
            raise ValueError(
                f"Unknown encoder_reparameterization_type {self.encoder_reparameterization_type!r}; "
                f"choose one of {list(_ENCODER_TYPES)}."
            )
        self._check_options_apply()
        if self.num_virtual_tokens is not None and self.num_virtual_tokens < 1:
            raise ValueError(f"num_virtual_tokens must be at least 1, got {self.num_virtual_tokens}.")
        if self.encoder_hidden_size is not None and self.encoder_hidden_size < 1:
            raise ValueError(f"encoder_hidden_size must be at least 1, got {self.encoder_hidden_size}.")
        if self.encoder_num_layers < 1:
            raise ValueError(f"encoder_num_layers must be at least 1, got {self.encoder_num_layers}.")
        if not 0.0 <= self.encoder_dropout < 1.0:
            raise ValueError(f"encoder_dropout must be in [0, 1), got {self.encoder_dropout}.")
        if self.uses_init_text and not self.init_text.strip():
            option, init = self._init_options()
            raise ValueError(f"{option}={init} needs a non-empty {option}_text.")
        if self.method == "prefix_tuning" and self.prefix_tuning_init == "TEXT" and self.prefix_projection:
            raise ValueError(
                "prefix_tuning_init=TEXT sets the prefix's key/values themselves, which prefix_projection computes "
                "with an MLP instead. Set prefix_projection=False, or prefix_tuning_init=RANDOM."
            )

    def _check_options_apply(self) -> None:
        for spec in fields(self):
            takers = METHOD_OPTIONS.get(spec.name)
            value = getattr(self, spec.name)
            if takers is None or self.method in takers or value == spec.default:
                continue
            raise ValueError(
                f"{spec.name}={value!r} does not apply to {self.method}: only {' and '.join(takers)} "
                f"take{'s' if len(takers) == 1 else ''} it. Leave it at its default ({spec.default!r}), or train "
                f"{takers[0]} instead."
            )
        hidden_size = self.encoder_hidden_size
        if self.method == "prefix_tuning" and not self.prefix_projection and hidden_size != _SEED_ENCODER_HIDDEN_SIZE:
            raise ValueError(
                f"encoder_hidden_size={self.encoder_hidden_size!r} does not apply to prefix_tuning without "
                "prefix_projection: it is the hidden size of the prefix projection (and of P-tuning's prompt "
                "encoder). Set prefix_projection=True, or leave encoder_hidden_size at its default "
                f"({_SEED_ENCODER_HIDDEN_SIZE})."
            )

    def num_virtual_tokens_for(self, tokenizer: PreTrainedTokenizerBase | None = None) -> int:
        """The number of virtual tokens: ``num_virtual_tokens`` if set, else the init text's token count as its
        initialisation tokenizes it (prompt tuning's TEXT counts a BOS that the tokenizer adds,
        TEXT_WITHOUT_SPECIAL_TOKENS does not; prefix tuning's TEXT as prompt tuning's TEXT), which needs
        ``tokenizer``, else 20."""
        if self.num_virtual_tokens is not None:
            return self.num_virtual_tokens
        if not self.uses_init_text:
            return _DEFAULT_NUM_VIRTUAL_TOKENS
        if tokenizer is None:
            option, init = self._init_options()
            raise ValueError(_TEXT_INIT_NEEDS_TOKENIZER.format(init=f"{option}={init}"))
        special_tokens = not (
            self.method == "prompt_tuning" and self.prompt_tuning_init == "TEXT_WITHOUT_SPECIAL_TOKENS"
        )
        return len(text_token_ids(tokenizer, self.init_text, special_tokens=special_tokens))

    @property
    def uses_init_text(self) -> bool:
        """Whether the chosen method starts from ``init_text`` (prompt tuning's two TEXT inits, prefix tuning's)."""
        if self.method == "prompt_tuning":
            return self.prompt_tuning_init in ("TEXT", "TEXT_WITHOUT_SPECIAL_TOKENS")
        return self.method == "prefix_tuning" and self.prefix_tuning_init == "TEXT"

    @property
    def init_text(self) -> str:
        """The chosen method's init text (``prompt_tuning_init_text`` or ``prefix_tuning_init_text``)."""
        return self.prefix_tuning_init_text if self.method == "prefix_tuning" else self.prompt_tuning_init_text

    def initialization(self, class_labels: Sequence[str] | None = None) -> SoftPromptInit:
        """Where the chosen method's soft prompt starts, for ``build_soft_prompt_model(..., init=...)``.

        Args:
            class_labels: The label texts, e.g. ``data.classes``; needed by ``prompt_tuning_init=CLASS_LABELS``.

        Raises:
            ValueError: For CLASS_LABELS without ``class_labels``.

        Example:

        ```python
        >>> SoftPromptArguments(prompt_tuning_init="CLASS_LABELS").initialization(["complaint", "no complaint"])
        SoftPromptInit(kind='CLASS_LABELS', text=None, class_labels=('complaint', 'no complaint'))

        ```
        """
        if self.method == "p_tuning":
            return SoftPromptInit()
        _, kind = self._init_options()
        if kind == "CLASS_LABELS" and not class_labels:
            raise ValueError(
                "prompt_tuning_init=CLASS_LABELS starts the prompt from the class labels, and none were given: "
                "pass class_labels=... (the label texts, e.g. ClassificationData.classes), or choose another "
                "prompt_tuning_init."
            )
        return SoftPromptInit(
            kind=kind,
            text=self.init_text if self.uses_init_text else None,
            class_labels=tuple(class_labels) if kind == "CLASS_LABELS" and class_labels else None,
        )

    def _init_options(self) -> tuple[str, str]:
        if self.method == "prefix_tuning":
            return "prefix_tuning_init", self.prefix_tuning_init
        return "prompt_tuning_init", self.prompt_tuning_init

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_peft_config(
    args: SoftPromptArguments | None = None,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    tokenizer_name_or_path: str | None = None,
    **overrides: Any,
) -> PeftConfig:
    """Returns the PEFT config for a soft-prompt method.

    Args:
        args: The method and its options; keyword ``overrides`` replace single fields, e.g.
            ``build_peft_config(method="p_tuning", num_virtual_tokens=20)``.
        tokenizer: Needed for an initialisation from text, to count the init text's tokens when
            ``num_virtual_tokens`` is not set.
        tokenizer_name_or_path: Recorded in the config of TEXT-initialised prompt tuning (prefer the
            base model's Hub id over a local path). Defaults to ``tokenizer.name_or_path``.

    Returns:
        A ``PromptTuningConfig``, ``PromptEncoderConfig`` or ``PrefixTuningConfig`` for a causal LM. A prompt-tuning
        config records peft's own name for the initialisation where peft has one (TEXT, with its text, SAMPLE_VOCAB,
        RANDOM), and RANDOM for TEXT_WITHOUT_SPECIAL_TOKENS and CLASS_LABELS, which ``build_soft_prompt_model`` sets
        after peft built the prompt (``args.initialization()``).
    """
    args = _merge(args, overrides)
    common: dict[str, Any] = {"task_type": TaskType.CAUSAL_LM}
    num_tokens = args.num_virtual_tokens_for(tokenizer)
    if args.method == "prompt_tuning":
        peft_init = _PEFT_PROMPT_INIT[args.prompt_tuning_init]
        if peft_init != PromptTuningInit.TEXT:
            return PromptTuningConfig(**common, num_virtual_tokens=num_tokens, prompt_tuning_init=peft_init)
        if tokenizer is None:  # the init is done in memory with it (build_soft_prompt_model)
            raise ValueError(_TEXT_INIT_NEEDS_TOKENIZER.format(init="prompt_tuning_init=TEXT"))
        return PromptTuningConfig(
            **common,
            num_virtual_tokens=num_tokens,
            prompt_tuning_init=PromptTuningInit.TEXT,
            prompt_tuning_init_text=args.prompt_tuning_init_text,
            tokenizer_name_or_path=tokenizer_name_or_path or tokenizer.name_or_path or "unknown",
        )
    if args.method == "p_tuning":
        return PromptEncoderConfig(
            **common,
            num_virtual_tokens=num_tokens,
            encoder_reparameterization_type=PromptEncoderReparameterizationType(args.encoder_reparameterization_type),
            encoder_hidden_size=args.encoder_hidden_size,  # type: ignore[arg-type]  # None: peft's default
            encoder_num_layers=args.encoder_num_layers,
            encoder_dropout=args.encoder_dropout,
        )
    return PrefixTuningConfig(
        **common,
        num_virtual_tokens=num_tokens,
        prefix_projection=args.prefix_projection,
        encoder_hidden_size=args.encoder_hidden_size if args.prefix_projection else None,  # type: ignore[arg-type]
    )


def build_soft_prompt_model(
    model: PreTrainedModel,
    args: SoftPromptArguments | PeftConfig | None = None,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    training_args: TrainingArguments | None = None,
    tokenizer_name_or_path: str | None = None,
    class_labels: Sequence[str] | None = None,
    init: SoftPromptInit | None = None,
    **overrides: Any,
) -> PeftModel:
    """Wraps a causal LM with a soft prompt; the base model's weights are frozen.

    Args:
        model: The base causal LM.
        args: A :class:`SoftPromptArguments`, a ready PEFT config, or ``None`` for the defaults (prompt
            tuning initialised from the seed's text); ``overrides`` replace single fields.
        tokenizer: The model's tokenizer (required by the initialisations from text or class labels). The prompt
            is initialised from it in memory, so in-session tokenizers work offline.
        training_args: If given, checked for combinations that cannot work (see
            :func:`check_training_arguments`) before anything is built.
        tokenizer_name_or_path: Name recorded in a TEXT-initialised config (see :func:`build_peft_config`).
        class_labels: The label texts, for ``prompt_tuning_init="CLASS_LABELS"``.
        init: Where the soft prompt starts (``softprompt_hf.modeling.initialization``). Default: the one ``args``
        chooses
            (``args.initialization(class_labels)``); for a ready PEFT config, its own (a TEXT init is done here,
            with ``tokenizer``, when one is given: as peft does it, without loading a tokenizer by name).

    Raises:
        ValueError: For settings that cannot work, e.g. CLASS_LABELS without ``class_labels``, an initialisation
            from text without ``tokenizer``, or prefix tuning with gradient checkpointing.

    Example:

    ```python
    >>> model = build_soft_prompt_model(base_model, method="p_tuning", num_virtual_tokens=20)
    >>> model.print_trainable_parameters()  # the embedded model's counts
    trainable params: 52,096 || all params: 1,107,840 || trainable%: 4.7025

    ```
    """
    if isinstance(args, PeftConfig):
        if overrides:
            raise ValueError(f"Options {sorted(overrides)} cannot be combined with a ready PEFT config.")
        peft_config = args
        if init is None:
            init = _init_of_peft_config(peft_config, tokenizer)
    else:
        prompt_args = _merge(args, overrides)
        peft_config = build_peft_config(prompt_args, tokenizer=tokenizer, tokenizer_name_or_path=tokenizer_name_or_path)
        if init is None:
            init = prompt_args.initialization(class_labels)
    if not peft_config.is_prompt_learning:
        raise ValueError(
            f"{type(peft_config).__name__} is not a soft-prompt method; softprompt_hf supports {list(METHODS)}."
        )
    if training_args is not None:
        check_training_arguments(peft_config, training_args)
    if peft_config.peft_type == PeftType.PREFIX_TUNING and activation_checkpointing_enabled(model):
        raise ValueError(_PREFIX_CHECKPOINTING_MESSAGE)

    if init is not None and not init.is_peft_default and isinstance(peft_config, PromptTuningConfig):
        # peft would reload the tokenizer from tokenizer_name_or_path (a download, or a path that may not
        # exist), and knows only some of the inits: build with a random prompt and set its values ourselves.
        recorded = peft_config.prompt_tuning_init
        peft_config.prompt_tuning_init = PromptTuningInit.RANDOM
        try:
            peft_model = get_peft_model(model, peft_config)
        finally:
            # The caller's config (a ready PEFT config is theirs): as it was, also if peft raised.
            peft_config.prompt_tuning_init = recorded
    else:
        peft_model = get_peft_model(model, peft_config)
    if init is not None:
        initialize_soft_prompt(peft_model, init, tokenizer=tokenizer)
    # peft 0.21.2's prefix-tuning forward passes the prefix as `past_key_values`, which transformers 5.40 removes.
    route_prefix_cache_argument(peft_model)
    trainable, total = peft_model.get_nb_trainable_parameters()
    logger.info(
        "%s: %s trainable parameters of %s (%.4f%%)",
        getattr(peft_config.peft_type, "value", peft_config.peft_type),
        f"{trainable:,}",
        f"{total:,}",
        100 * trainable / total,
    )
    return peft_model


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Put ``model`` in eval mode (no dropout) for the block, then give every submodule back the mode it had.

    Each submodule's own mode is restored, also when the block raises, so a caller's mixture (a model in
    training with some modules kept in eval) survives.
    """
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def method_name(model: PeftModel) -> str:
    """The method of ``model``'s active adapter as ``METHODS`` names it (``"p_tuning"``...); peft's type name in
    lower case for adapters of other kinds."""
    peft_type = PeftType(model.peft_config[model.active_adapter].peft_type)
    return _METHOD_BY_PEFT_TYPE.get(peft_type, peft_type.value.lower())


def check_training_arguments(peft_config: PeftConfig, training_args: TrainingArguments) -> None:
    """Raises a ``ValueError`` for training settings that do not work with a soft-prompt method.

    Refused: label smoothing with any soft-prompt method (the Trainer pops ``labels`` to smooth the loss
    itself, so peft cannot extend them over the virtual tokens; with peft 0.21.2 and transformers 5.24
    training fails for all three methods), and prefix tuning with gradient checkpointing, which peft
    cannot combine: the run would die late with a shape error. (Both are listed in ``softprompt_hf.core.upstream``.)
    """
    if training_args.label_smoothing_factor > 0:
        raise ValueError(
            f"label_smoothing_factor={training_args.label_smoothing_factor} cannot be used with soft prompts: the "
            "Trainer takes the labels away from the model to smooth the loss itself, so peft cannot line them up "
            "with the virtual tokens and training fails. Set label_smoothing_factor=0."
        )
    if peft_config.peft_type == PeftType.PREFIX_TUNING and activation_checkpointing_requested(training_args):
        raise ValueError(_PREFIX_CHECKPOINTING_MESSAGE)


_PREFIX_CHECKPOINTING_MESSAGE = (
    "Prefix tuning cannot be combined with gradient checkpointing: peft's prefix key/values break the "
    "checkpointed forward pass (a shape error late in training). Set activation_checkpointing=False (and its "
    "deprecated alias gradient_checkpointing) and leave the model's checkpointing off, or use "
    "prompt tuning or P-tuning, whose virtual tokens work with checkpointing."
)


def _merge(args: SoftPromptArguments | None, overrides: dict[str, Any]) -> SoftPromptArguments:
    if args is None:
        return SoftPromptArguments(**overrides)
    if not overrides:
        return args
    return SoftPromptArguments(**{**args.to_dict(), **overrides})


def _init_of_peft_config(peft_config: PeftConfig, tokenizer: PreTrainedTokenizerBase | None) -> SoftPromptInit | None:
    """The initialisation a ready PEFT config asks for that we do ourselves: prompt tuning's TEXT when the tokenizer
    is given (peft would load one by name); None leaves everything to peft."""
    if (
        isinstance(peft_config, PromptTuningConfig)
        and peft_config.prompt_tuning_init == PromptTuningInit.TEXT
        and tokenizer is not None
    ):
        return SoftPromptInit("TEXT", text=peft_config.prompt_tuning_init_text or "")
    return None
