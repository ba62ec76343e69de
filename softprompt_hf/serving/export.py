"""Export a soft prompt for serving engines that take prompt embeddings (vLLM's ``prompt_embeds``).

Prompt tuning and P-tuning put ``num_virtual_tokens`` vectors in front of the prompt's token embeddings, and
nothing else: the base model is unchanged. An engine that accepts a prompt as embeddings can therefore serve the
soft prompt without peft, given those vectors and the rule for the tokens that follow them.
:func:`export_soft_prompt` writes both into a folder of their own:

- ``soft_prompt.safetensors``: one tensor, ``prompt_embeds``, of shape ``(num_virtual_tokens, hidden_size)`` in the
  base model's dtype: what peft's forward puts in front of the token embeddings (``PeftModel.get_prompt``, computed
  in eval mode; for P-tuning, the prompt encoder's output, computed once).
- ``soft_prompt.json``: what to prepend and how, the prompt's template (or chat template) and tokenizer, the label
  texts and their token ids, the stop tokens, and the SHA-256 of the tensor file.

The embedding scale: some base models scale their token embeddings inside the input-embedding layer (Gemma
multiplies them by ``sqrt(hidden_size)``). The token part is that layer's output,
``model.get_input_embeddings()(ids)``, scale included; the exported soft prompt is used as it is, never scaled, as
peft's virtual tokens do not go through that layer (``soft_prompt_scaled: false``; tests/test_export.py checks both
halves on a Gemma 3 model). Prefix tuning cannot be exported this way: its soft prompt is a key/value pair in every
attention layer, not input embeddings.

    softprompt-hf export outputs/run/adapter outputs/run/served
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, PromptLearningConfig
from safetensors.torch import save_file
from transformers import PreTrainedTokenizerBase
from transformers.utils import logging

from ..adapter.saving import (
    CHAT_KEY,
    TOKENIZER_FROM_ADAPTER,
    TOKENIZER_FROM_BASE,
    TOKENIZER_KEY,
    base_tokenizer_files,
)
from ..constants import EXPORT_DTYPES, __version__
from ..core.files import atomic_write_json, check_replaceable_folder, replace_folder, sha256_of_file
from ..data.chat import ChatTemplate
from ..data.prompt import SAVED_WITHOUT_LABEL_TOKENIZATION, PromptFormat, PromptTemplate
from ..modeling import methods
from .predict import LoadedAdapter, adapter_prompt, load_adapter

__all__ = [
    "EXPORT_CONFIG_NAME",
    "EXPORT_FORMAT_VERSION",
    "EXPORT_TENSOR_NAME",
    "EXPORT_WEIGHTS_NAME",
    "export_soft_prompt",
    "soft_prompt_embeddings",
]

logger = logging.get_logger(__name__)

#: The tensor file of an export.
EXPORT_WEIGHTS_NAME = "soft_prompt.safetensors"
#: The JSON file of an export: what to prepend and how.
EXPORT_CONFIG_NAME = "soft_prompt.json"
#: The name of the one tensor in ``EXPORT_WEIGHTS_NAME``.
EXPORT_TENSOR_NAME = "prompt_embeds"
#: ``format_version`` of ``EXPORT_CONFIG_NAME``; raised when a field changes meaning.
EXPORT_FORMAT_VERSION = 1

# The methods whose soft prompt is input embeddings, and so can be served as prompt embeddings.
_EXPORTABLE = ("prompt_tuning", "p_tuning")
_EXPORT_FILES = {EXPORT_WEIGHTS_NAME, EXPORT_CONFIG_NAME}
# soft_prompt.json's "tokenizer" for an in-memory model whose tokenizer is not its base model's own.
_TOKENIZER_GIVEN = "given"

_POSITION = "before the prompt's token embeddings"
_TOKEN_EMBEDDINGS = (
    "the base model's input-embedding layer output (model.get_input_embeddings()(ids), which includes its own scale, "
    "e.g. Gemma's sqrt(hidden_size))"
)
_SCALING = (
    "prompt_embeds is used as it is: it is not multiplied by the base model's embedding scale "
    "(input_embedding_scale), which applies to the token embeddings only, inside the input-embedding layer; peft's "
    "virtual tokens never pass through that layer"
)
_INPUTS_EMBEDS = (
    "torch.cat([prompt_embeds, token_embeddings]) along the sequence, shape (num_virtual_tokens + prompt tokens, "
    "hidden_size): the virtual tokens take positions 0 to num_virtual_tokens - 1, the prompt's tokens the positions "
    "after them, and every position attends to the virtual tokens (an attention mask of ones over them)"
)
_TEMPLATE_IDS = (
    "softprompt_hf.PromptTemplate(template, text_column, label_tokenization).encode(tokenizer, text). Without "
    "softprompt_hf: fill the template (str.format: {text} is the text, {text_column} the text_column's name, any "
    "other field the column of that name), drop the whitespace it ends with when label_tokenization is 'joint' (it "
    "goes with the label), and tokenize with the tokenizer's special tokens, tokenizer(prompt)['input_ids']: a BOS "
    "the tokenizer adds comes after the soft prompt, never before it"
)
_CHAT_IDS = (
    "softprompt_hf.ChatTemplate(user, system, text_column).encode(tokenizer, text): the ids of "
    "tokenizer.apply_chat_template([system message if any, user message], add_generation_prompt=True), the user "
    "message being the user pattern filled as a template is, with one BOS at most; the soft prompt goes before all "
    "of them, the chat template's BOS and system text included"
)
_TOKENIZERS = {
    TOKENIZER_FROM_BASE: "the base model's own: AutoTokenizer.from_pretrained(base_model)",
    TOKENIZER_FROM_ADAPTER: "the adapter folder's own, which differs from the base model's "
    "(AutoTokenizer.from_pretrained(<adapter folder or Hub id>))",
    _TOKENIZER_GIVEN: "the tokenizer the in-memory model was exported with, which is not the base model's own (or "
    "that could not be loaded here to compare): save it (tokenizer.save_pretrained) for the engine",
}


def export_soft_prompt(
    adapter: str | os.PathLike[str] | LoadedAdapter | PeftModel,
    output_dir: str | os.PathLike[str],
    *,
    base_model: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    dtype: str | torch.dtype | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    labels: Sequence[str] | None = None,
    template: str | ChatTemplate | None = None,
    text_column: str | None = None,
    label_tokenization: str | None = None,
    token: str | None = None,
) -> Path:
    """Writes the soft prompt of a prompt-tuning or P-tuning adapter for a serving engine that takes prompt
    embeddings (vLLM's ``prompt_embeds``): ``soft_prompt.safetensors`` and ``soft_prompt.json`` in ``output_dir``.

    ``soft_prompt.safetensors`` holds one tensor, ``prompt_embeds``, ``(num_virtual_tokens, hidden_size)``, in the
    base model's dtype (the dtype of its input embeddings), contiguous: exactly what peft's forward puts in front
    of the prompt's token embeddings (``PeftModel.get_prompt`` in eval mode, without gradients; for P-tuning the
    prompt encoder's output). An engine builds each prompt as ``torch.cat([prompt_embeds,
    model.get_input_embeddings()(prompt_ids)])``: the token part is the base model's input-embedding layer output,
    which includes the model's own embedding scale (Gemma's ``sqrt(hidden_size)``); ``prompt_embeds`` is never
    scaled. Fed to the plain base model as ``inputs_embeds``, that sequence gives the adapter's logits, so its
    greedy outputs and label scores (tests/test_export.py).

    ``soft_prompt.json`` says so in words and in fields: ``format_version``, ``method``, ``base_model`` (as the
    adapter names it), ``num_virtual_tokens``, ``hidden_size``, ``dtype`` (and ``base_model_dtype``), ``file``,
    ``tensor``, ``sha256`` (of the tensor file), ``position``, ``token_embeddings``, ``soft_prompt_scaled``
    (``false``), ``input_embedding_scale`` (the factor the base model's embedding layer applies to token embeddings,
    ``null`` for none), ``inputs_embeds``, ``prompt`` (the template or chat template, text column, label
    tokenization, tokenizer, and how to compute the prompt's token ids), ``stop_token_ids``, ``task``, and for a
    classifier ``labels`` with their ``label_token_ids`` (what to score after the prompt, EOS or end-of-turn
    included, as :func:`~softprompt_hf.rank_labels` does), for free text ``max_new_tokens`` when known.

    The folder is written atomically (a temporary folder beside it, renamed into place once complete).

    Args:
        adapter: A saved adapter's local folder or Hub id (loaded on the CPU with
            :func:`~softprompt_hf.serving.predict.load_adapter`, which loads its base model too: the soft prompt's dtype
            and the embedding layer's scale are the base model's), a ``LoadedAdapter``, or an in-memory
            ``PeftModel`` (then pass ``tokenizer``; ``labels``, ``template``, ``text_column`` and
            ``label_tokenization`` as it was trained, else the defaults of
            :func:`~softprompt_hf.serving.predict.predict`).
        output_dir: The folder to write. It must not exist, unless ``overwrite``.
        base_model: A local path (or Hub id) to load a saved adapter's base model from instead of the one it names
            (``soft_prompt.json`` still names the adapter's).
        overwrite: Replace ``output_dir`` if it holds an earlier export (only ``soft_prompt.safetensors`` and
            ``soft_prompt.json``); a folder with other files, or a file, is never replaced.
        dtype: The tensor's dtype, ``"float32"``, ``"float16"`` or ``"bfloat16"`` (default: the base model's), for
            an engine that runs the model in another dtype than it was saved in.
        tokenizer: The tokenizer, for an in-memory model (default: the loaded adapter's).
        labels: The label texts (default: the adapter's ``softprompt_hf.json``).
        template: The prompt template or ``ChatTemplate`` (default: the adapter's; see
            :func:`~softprompt_hf.serving.predict.predict`).
        text_column: The column ``{text}`` reads and ``{text_column}`` names (default: the adapter's).
        label_tokenization: ``"joint"`` or ``"separate"`` (default: the adapter's).
        token: A Hub token for a private adapter or base model.

    Returns:
        The export folder.

    Raises:
        ValueError: If the adapter is prefix tuning (its soft prompt is key/values in every attention layer, which
            prompt embeddings cannot carry) or another kind of adapter, ``overwrite`` would replace a file or a
            folder that is not an export, ``dtype`` is not one of the three, or an in-memory model comes without its
            tokenizer.
        FileExistsError: If ``output_dir`` exists and ``overwrite`` is not set.
        AdapterLoadError: If the adapter or its base model cannot be loaded (see
            :func:`~softprompt_hf.serving.predict.load_adapter`).
    """
    target = Path(output_dir)
    _check_output(target, overwrite)
    wanted = _dtype(dtype)
    if isinstance(adapter, torch.nn.Module):
        _check_method(_method_of(adapter))
        if base_model is not None:
            raise ValueError(
                "base_model= says where to load a saved adapter's base model from; an in-memory PeftModel has its "
                "own. Leave base_model out."
            )
        if tokenizer is None:
            raise ValueError("export_soft_prompt with an in-memory model needs its tokenizer: pass tokenizer=...")
        model, settings, saved = adapter, {}, False
    else:  # a folder, a Hub id or a LoadedAdapter
        _check_method_of_saved(adapter)
        if not isinstance(adapter, LoadedAdapter):
            adapter = load_adapter(adapter, base_model=base_model, device="cpu", token=token)
        model, settings, saved = adapter.model, adapter.settings, True
        tokenizer = tokenizer or adapter.tokenizer
    prompt_embeds = soft_prompt_embeddings(model)
    base_dtype = prompt_embeds.dtype
    if wanted is not None:
        prompt_embeds = prompt_embeds.to(wanted)
    prompt_embeds = prompt_embeds.detach().cpu().contiguous()
    payload = _description(
        model,
        prompt_embeds,
        base_dtype,
        settings,
        tokenizer,
        saved=saved,
        labels=labels,
        template=template,
        text_column=text_column,
        label_tokenization=label_tokenization,
    )

    def write(folder: Path) -> None:
        weights = folder / EXPORT_WEIGHTS_NAME
        # One metadata key: safetensors writes several in no fixed order, and the same soft prompt should give the
        # same file (and SHA-256). soft_prompt.json holds the rest.
        save_file({EXPORT_TENSOR_NAME: prompt_embeds}, str(weights), metadata={"format": "pt"})
        atomic_write_json(folder / EXPORT_CONFIG_NAME, {**payload, "sha256": sha256_of_file(weights)})

    replace_folder(target, write)
    logger.info(
        f"Exported the soft prompt ({payload['num_virtual_tokens']} x {payload['hidden_size']}, {payload['dtype']}) "
        f"to {target}"
    )
    return target


@torch.no_grad()
def soft_prompt_embeddings(model: PeftModel) -> torch.Tensor:
    """The virtual tokens' input embeddings of a prompt-tuning or P-tuning ``model``, ``(num_virtual_tokens,
    hidden_size)`` in the dtype of the base model's input embeddings: what peft's forward puts in front of the
    prompt's token embeddings (``model.get_prompt(batch_size=1)``, run in eval mode, so P-tuning's encoder applies
    no dropout; every module gets its mode back).

    Raises:
        ValueError: For prefix tuning (whose soft prompt is key/values, not input embeddings) or another adapter.
    """
    method = _method_of(model)
    _check_method(method)
    config = model.peft_config[model.active_adapter]
    assert isinstance(config, PromptLearningConfig)  # prompt tuning's and P-tuning's configs are
    embeddings = model.get_input_embeddings()
    with methods.eval_mode(model):
        prompt = model.get_prompt(batch_size=1)
    expected = (1, config.num_virtual_tokens, embeddings.weight.shape[1])
    if tuple(prompt.shape) != expected:
        raise ValueError(
            f"The {method} adapter's virtual tokens have the shape {tuple(prompt.shape)}, not {expected} (one batch "
            "row, num_virtual_tokens, the base model's hidden size): only a causal LM's soft prompt can be exported."
        )
    return prompt[0].to(embeddings.weight.dtype)


def _method_of(model: Any) -> str:
    if not isinstance(model, PeftModel) or not getattr(model, "peft_config", None):
        raise ValueError(
            f"export_soft_prompt takes a soft-prompt PeftModel (prompt tuning or P-tuning), got {type(model).__name__}."
        )
    return methods.method_name(model)


def _check_method(method: str) -> None:
    if method == "prefix_tuning":
        raise ValueError(
            "Prefix tuning cannot be exported as prompt embeddings: its soft prompt is a key/value pair in every "
            "attention layer, not vectors in front of the input, and engines' prompt_embeds (vLLM's) replace the "
            "input embeddings only. Serve it with peft (softprompt-hf predict, load_adapter), or train prompt tuning "
            "or P-tuning for an engine."
        )
    if method not in _EXPORTABLE:
        raise ValueError(
            f"A {method} adapter cannot be exported as prompt embeddings: export takes prompt tuning or P-tuning, "
            "whose soft prompt is input embeddings."
        )


def _check_method_of_saved(adapter: str | os.PathLike[str] | LoadedAdapter) -> None:
    """Refuses a saved prefix-tuning adapter before its base model is loaded (which may take minutes)."""
    if isinstance(adapter, LoadedAdapter):
        return
    config = Path(adapter).expanduser() / "adapter_config.json"
    if not config.is_file():
        return  # a Hub id, or not an adapter folder: load_adapter says what is wrong
    try:
        peft_type = json.loads(config.read_text(encoding="utf-8")).get("peft_type")
    except (ValueError, AttributeError):
        return  # load_adapter explains a damaged config
    if peft_type == "PREFIX_TUNING":
        _check_method("prefix_tuning")


def _check_output(target: Path, overwrite: bool) -> None:
    if not target.exists():
        return
    if not overwrite:
        raise FileExistsError(
            f"{target} already exists: pass overwrite=True (CLI: --overwrite) to replace an earlier export, or "
            "choose another output folder."
        )
    check_replaceable_folder(
        target,
        _EXPORT_FILES,
        noun="export",
        part_of="an export",
        verb="overwriting",
        advice="Export",
        example=target / "served",
    )


def _dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    if dtype is None:
        return None
    name = str(dtype).removeprefix("torch.")
    if name not in EXPORT_DTYPES:
        raise ValueError(f"dtype={dtype!r}: choose one of {list(EXPORT_DTYPES)}, or leave it out for the base model's.")
    return getattr(torch, name)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _description(
    model: PeftModel,
    prompt_embeds: torch.Tensor,
    base_dtype: torch.dtype,
    settings: Mapping[str, Any],
    tokenizer: PreTrainedTokenizerBase,
    *,
    saved: bool,
    labels: Sequence[str] | None,
    template: str | ChatTemplate | None,
    text_column: str | None,
    label_tokenization: str | None,
) -> dict[str, Any]:
    """``soft_prompt.json`` without its ``sha256``."""
    config = model.peft_config[model.active_adapter]
    task = settings.get("task") or "classification"
    default_column = "text" if task == "text" else "Tweet text"  # predict's defaults
    prompt = adapter_prompt(tokenizer, settings, template, text_column or settings.get("text_column") or default_column)
    if isinstance(prompt, PromptTemplate):
        if label_tokenization is None:
            label_tokenization = settings.get(
                "label_tokenization", SAVED_WITHOUT_LABEL_TOKENIZATION if saved else "joint"
            )
        prompt = dataclasses.replace(prompt, label_tokenization=label_tokenization)
    scale = getattr(model.get_input_embeddings(), "embed_scale", None)
    payload: dict[str, Any] = {
        "format": "softprompt_hf soft prompt",
        "format_version": EXPORT_FORMAT_VERSION,
        "softprompt_hf_version": __version__,
        "method": methods.method_name(model),
        "base_model": settings.get("base_model") or config.base_model_name_or_path,
        "file": EXPORT_WEIGHTS_NAME,
        "tensor": EXPORT_TENSOR_NAME,
        "num_virtual_tokens": int(prompt_embeds.shape[0]),
        "hidden_size": int(prompt_embeds.shape[1]),
        "dtype": _dtype_name(prompt_embeds.dtype),
        "base_model_dtype": _dtype_name(base_dtype),
        "position": _POSITION,
        "token_embeddings": _TOKEN_EMBEDDINGS,
        "soft_prompt_scaled": False,
        "input_embedding_scale": None if scale is None else float(scale),
        "scaling": _SCALING,
        "inputs_embeds": _INPUTS_EMBEDS,
        "prompt": _prompt_description(prompt, _tokenizer_source(model, settings, tokenizer, saved)),
        "stop_token_ids": list(prompt.stop_ids(tokenizer)),
        "task": task,
    }
    if task == "text":
        if settings.get("max_new_tokens") is not None:
            payload["max_new_tokens"] = settings["max_new_tokens"]
        return payload
    labels = list(labels) if labels is not None else settings.get("labels")
    if labels:
        payload["labels"] = list(labels)
        payload["label_token_ids"] = {label: prompt.encode_target(tokenizer, label) for label in labels}
    return payload


def _tokenizer_source(
    model: PeftModel, settings: Mapping[str, Any], tokenizer: PreTrainedTokenizerBase, saved: bool
) -> str:
    """Where the engine's tokenizer comes from: a saved adapter's ``softprompt_hf.json`` says (one without the key,
    from softprompt_hf 0.1, holds its tokenizer); an in-memory model's is compared with its base model's."""
    if saved:
        return str(settings.get(TOKENIZER_KEY, TOKENIZER_FROM_ADAPTER))
    base = model.peft_config[model.active_adapter].base_model_name_or_path
    return TOKENIZER_FROM_BASE if base_tokenizer_files(tokenizer, base) is not None else _TOKENIZER_GIVEN


def _prompt_description(prompt: PromptFormat, tokenizer_from: str) -> dict[str, Any]:
    described: dict[str, Any] = {
        "tokenizer": tokenizer_from,
        "tokenizer_is": _TOKENIZERS.get(tokenizer_from, tokenizer_from),
        "text_column": prompt.text_column,
    }
    if isinstance(prompt, ChatTemplate):
        described.update({"kind": "chat", CHAT_KEY: {"user": prompt.user, "system": prompt.system}})
        described["token_ids"] = _CHAT_IDS
    else:
        assert isinstance(prompt, PromptTemplate)
        described.update(
            {"kind": "template", "template": prompt.template, "label_tokenization": prompt.label_tokenization}
        )
        described["token_ids"] = _TEMPLATE_IDS
    return described
