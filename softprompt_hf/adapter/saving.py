"""Save a trained soft prompt so that an interruption never leaves a half-written adapter behind.

``save_adapter`` writes the adapter, the model card, ``softprompt_hf.json`` and, when it is not the base model's own,
the tokenizer into a temporary sibling folder and moves it into place only once every file is on disk: the target
folder is either the previous complete adapter or the new complete one, never a mixture.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from transformers.utils import logging

from ..constants import LABEL_TOKENIZATIONS
from ..core.files import check_replaceable_folder, replace_folder, sha256_of_file
from ..core.sharding import fsdp_root
from ..data.chat import ChatTemplate
from ..modeling import methods
from .card import ModelCardInputs, model_card_inputs, render_model_card, with_base_model

if TYPE_CHECKING:
    from huggingface_hub import ModelCard

logger = logging.get_logger(__name__)

__all__ = [
    "CARD_KEY",
    "CHAT_KEY",
    "INFERENCE_CONFIG_NAME",
    "TOKENIZER_FROM_ADAPTER",
    "TOKENIZER_FROM_BASE",
    "TOKENIZER_KEY",
    "save_adapter",
]

# What inference needs beyond the adapter (JSON): see ``save_adapter``.
INFERENCE_CONFIG_NAME = "softprompt_hf.json"
#: The key of ``softprompt_hf.json`` that holds the card's data (``ModelCardInputs``).
CARD_KEY = "card"
#: The key of ``softprompt_hf.json`` that holds the chat template's messages, ``{"user": <pattern>, "system": <text
#: or null>}``, when the model was trained on prompts in its chat template (``ChatTemplate``); absent otherwise.
CHAT_KEY = "chat"
#: The key of ``softprompt_hf.json`` that says where inference loads the tokenizer from: ``TOKENIZER_FROM_BASE``
#: or ``TOKENIZER_FROM_ADAPTER``. Absent in folders of softprompt_hf 0.1, which hold the tokenizer.
TOKENIZER_KEY = "tokenizer"
#: The base model's own tokenizer, unchanged (``AutoTokenizer.from_pretrained(base_model)``): the folder holds none.
TOKENIZER_FROM_BASE = "base_model"
#: The folder's own tokenizer (``AutoTokenizer.from_pretrained(folder)``): it differs from the base model's.
TOKENIZER_FROM_ADAPTER = "adapter"


# What a folder written by ``save_adapter`` may hold; anything else means the caller pointed it at a folder
# with other content (a Trainer output_dir with checkpoints, say), which a swap would move away.
_ADAPTER_FOLDER_FILES = {
    "adapter_config.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
    "README.md",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "added_tokens.json",
    "training_args.json",
    "softprompt_hf.json",
}


# How a tokenizer was loaded, which transformers 5.24 writes into tokenizer_config.json (softprompt_hf.core.upstream,
# entry 26): no part of the tokenizer.
_TOKENIZER_LOADER_KEYS = ("local_files_only",)


def _comparable_sha256(path: Path) -> str:
    if path.name != "tokenizer_config.json":
        return sha256_of_file(path)
    config = json.loads(path.read_text(encoding="utf-8"))
    for key in _TOKENIZER_LOADER_KEYS:
        config.pop(key, None)
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def _saved_tokenizer_files(tokenizer: Any) -> dict[str, tuple[str, str]]:
    """The files ``tokenizer.save_pretrained`` writes: relative path -> (SHA-256, SHA-256 of what is compared)."""
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        root = Path(folder)
        return {
            path.relative_to(root).as_posix(): (sha256_of_file(path), _comparable_sha256(path))
            for path in sorted(root.rglob("*"))
            if path.is_file()
        }


def base_tokenizer_files(tokenizer: Any, base_model: str | None) -> dict[str, str] | None:
    """The files ``tokenizer`` saves (relative path -> SHA-256) when they are those of ``base_model``'s own tokenizer,
    else ``None``. (``tokenizer_config.json`` is compared without the keys that say how a tokenizer was loaded.)

    The base model's own tokenizer is what ``AutoTokenizer.from_pretrained(base_model)`` loads, here from the local
    folder or the Hugging Face cache only (saving never goes to the network). Both are saved with
    ``save_pretrained`` and compared byte for byte: equal files load into the same tokenizer (vocabulary, merges,
    added and special tokens, pad token, normalizer, chat template, the settings it was loaded with such as
    ``padding_side=...``), while a pad token set to EOS, an added token or a new chat template makes them differ;
    what ``save_pretrained`` does not write (an attribute set after loading, such as ``padding_side``) a saved copy
    would not carry either. ``None`` too when ``base_model`` is not known or
    its tokenizer cannot be loaded here (a Hub id that is not in the cache, a folder without tokenizer files): the
    caller then keeps the tokenizer, as it cannot know.
    """
    if tokenizer is None or not base_model:
        return None
    from transformers import AutoTokenizer  # imported here: importing it takes a second, and it is rarely needed

    try:
        base = AutoTokenizer.from_pretrained(base_model, local_files_only=True)
    except Exception as err:  # any failure (OSError, ValueError for a folder without one, ...) means "cannot tell"
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        logger.info(f"Could not load the base model's tokenizer ({base_model}) to compare with ({reason}).")
        return None
    files, base_files = _saved_tokenizer_files(tokenizer), _saved_tokenizer_files(base)
    if {name: compared for name, (_, compared) in files.items()} != {
        name: compared for name, (_, compared) in base_files.items()
    }:
        return None
    return {name: digest for name, (digest, _) in files.items()}


def _keeps_tokenizer(tokenizer: Any, base_model: str | None) -> bool:
    """``save_tokenizer="auto"``: whether ``tokenizer`` must be saved with the adapter (it is not the base model's)."""
    if base_tokenizer_files(tokenizer, base_model) is not None:
        logger.info(f"The tokenizer is the base model's ({base_model}): the adapter folder loads that one, not a copy.")
        return False
    logger.info("Saving the tokenizer with the adapter: it differs from the base model's, or that could not be read.")
    return True


def _check_adapter_folder(target: Path) -> None:
    check_replaceable_folder(
        target,
        _ADAPTER_FOLDER_FILES,
        noun="adapter",
        part_of="a saved adapter",
        verb="saving",
        advice="Save the adapter",
        example=target / "adapter",
    )


def save_adapter(
    model: Any,
    output_dir: str | os.PathLike[str],
    *,
    tokenizer: Any | None = None,
    base_model_id: str | None = None,
    card: ModelCardInputs | ModelCard | None = None,
    repo_id: str | None = None,
    labels: Sequence[str] | None = None,
    template: str | ChatTemplate | None = None,
    text_column: str | None = None,
    class_names: Sequence[str] | None = None,
    eval_mode: str | None = None,
    label_tokenization: str | None = None,
    save_tokenizer: bool | Literal["auto"] = "auto",
) -> Path:
    """Writes a complete adapter folder atomically: the adapter, its model card, ``softprompt_hf.json`` and, when it
    is not the base model's own, its tokenizer. Every adapter folder softprompt_hf writes (recipes,
    ``HubPushCallback``, ``push_adapter``, the quick start) comes from here, and loads with
    ``AutoPeftModelForCausalLM`` and ``softprompt-hf predict`` alike.

    The tokenizer: a soft prompt trained with the base model's tokenizer as it is needs no copy of it (Gemma 3's
    262k-token ``tokenizer.json`` is 33 MB, its adapter a few KB), so by default (``save_tokenizer="auto"``) the
    folder holds one only when ``tokenizer`` differs from ``AutoTokenizer.from_pretrained(<base model>)``: a pad
    token set to EOS on a model without one, an added token, another chat template. Where the base
    model's tokenizer cannot be loaded to compare (a Hub id that is not in the local cache), it is saved too, and
    so it is with a ``card`` of the caller's own (a ``ModelCard``), whose snippets may load it from the folder.
    ``softprompt_hf.json`` says which (key ``"tokenizer"``: ``"base_model"`` or ``"adapter"``), and
    ``softprompt-hf predict`` and the card's usage snippets load it from there.

    ``softprompt_hf.json`` (``INFERENCE_CONFIG_NAME``) holds what inference needs beyond the adapter, keys left
    out when unknown: ``method`` (``prompt_tuning``, ``p_tuning``, ``prefix_tuning``), ``base_model`` (its Hub id,
    or the local path it was loaded from), ``labels`` (the label texts the model generates), ``template`` (the
    prompt template; a chat template's user message), ``chat`` (``CHAT_KEY``: ``{"user": ..., "system": ...}``, the
    ``ChatTemplate`` the model was trained with; ``predict`` rebuilds it), ``text_column`` (the column the model was
    trained on, which fills ``{text_column}``),
    ``label_tokenization`` (where the prompt ends and the label begins, ``joint`` or ``separate``: see
    ``PromptTemplate``; always written, and a folder without it was trained with ``separate``),
    ``task`` (``classification`` or ``text``: labels, or free text generated up to ``max_new_tokens``),
    ``class_names`` (the dataset's class names, when its label column holds integers), ``eval_mode``
    (``generate``, ``rank`` or ``constrained``), ``tokenizer`` (``TOKENIZER_KEY``: ``"base_model"``, the base model's
    own tokenizer, not in the folder; ``"adapter"``, the folder's) and ``card`` (``CARD_KEY``: the ``ModelCardInputs``
    the card was rendered from, so that a push renders it again for its repository; absent for a card of the caller's
    own).

    Args:
        model: The ``PeftModel`` (trained in memory: prompt tuning's embeddings, P-tuning's encoder output
            and the prefix projection's output are computed by peft's ``save_pretrained``, with the model in
            eval mode so that no dropout is applied; every module's mode is given back afterwards).
        output_dir: The adapter's own folder. It is replaced as a whole, so it may only hold a previous
            adapter (a Trainer ``output_dir`` with checkpoints is refused).
        tokenizer: The tokenizer the model was trained with; saved beside the adapter as ``save_tokenizer`` says.
            ``None``: none is saved, and inference uses the base model's.
        base_model_id: Written as ``base_model_name_or_path`` in ``adapter_config.json`` instead of the path
            the base model was loaded from, so that others can find it (a Hub id such as
            ``bigscience/bloomz-560m``); a local ``tokenizer_name_or_path`` (TEXT-initialised prompt tuning) is
            replaced by it too, and the card names it. The live model's config is left as it was.
        card: The card's data (``ModelCardInputs``, e.g. ``ModelCardCallback.card_data(model)``), rendered into
            ``README.md`` and kept in ``softprompt_hf.json``; or a ``huggingface_hub.ModelCard`` of your own,
            written as it is. Default: the data of ``model`` itself (method, PEFT config, parameter counts) with
            ``labels``, ``template`` and ``text_column``.
        repo_id: The Hub repository the folder is for (the card's title and usage snippet name it).
        labels: The label texts (default: the card data's).
        template: The prompt template (default: the card data's, else the seed guide's); or the ``ChatTemplate``
            the model was trained with, recorded as ``chat`` (its user message is recorded as ``template``).
        text_column: The text column the model was trained on (default: the card data's).
        class_names: The class names of integer labels, for ``softprompt_hf.json``.
        eval_mode: How the run scored the model (``generate``, ``rank`` or ``constrained``), for ``softprompt_hf.json``.
        label_tokenization: How the model was trained to continue the prompt with its label (the collator's
            ``label_tokenization``; default: the card data's, else ``"joint"``, the collator's default).
        save_tokenizer: ``"auto"``: save ``tokenizer`` unless it is the base model's own (see above); ``True``: always
            (a folder that needs nothing of the base model's but its weights); ``False``: never, and record that
            the base model's tokenizer is the one to use (take care: right only if it is).

    Returns:
        The path of the saved adapter folder.

    Only the main process should call this in a distributed run; under FSDP2, inside
    ``softprompt_hf.core.sharding.gathered_root(model)`` entered by every process.
    """
    target = Path(output_dir)
    _check_adapter_folder(target)
    configs = getattr(model, "peft_config", None)
    if not configs:
        raise TypeError(f"save_adapter expects a peft PeftModel, got {type(model).__name__}.")
    if not (isinstance(save_tokenizer, bool) or save_tokenizer == "auto"):
        raise ValueError(f"save_tokenizer must be 'auto', True or False, got {save_tokenizer!r}.")
    named = {
        "labels": list(labels) if labels is not None else None,
        "template": template.user if isinstance(template, ChatTemplate) else template,
        CHAT_KEY: {"user": template.user, "system": template.system} if isinstance(template, ChatTemplate) else None,
        "text_column": text_column,
        "label_tokenization": label_tokenization,
    }
    loaded_from = next(iter(configs.values())).base_model_name_or_path
    base_model = base_model_id or loaded_from
    own_card = card is not None and not isinstance(card, ModelCardInputs)
    if tokenizer is None:
        keep_tokenizer = False
    elif isinstance(save_tokenizer, bool):
        keep_tokenizer = save_tokenizer
    elif own_card:
        # A card of the caller's own (build_model_card's, say) may tell readers to load the folder's tokenizer.
        keep_tokenizer = True
    else:
        keep_tokenizer = _keeps_tokenizer(tokenizer, loaded_from or base_model)
    tokenizer_from = TOKENIZER_FROM_ADAPTER if keep_tokenizer else TOKENIZER_FROM_BASE
    readme: Any = card
    settings: dict[str, Any] = {
        "method": methods.method_name(model),
        "base_model": base_model,
        **named,
        TOKENIZER_KEY: tokenizer_from,
    }
    if card is None or isinstance(card, ModelCardInputs):
        data = card or model_card_inputs(model, base_model=base_model, allow_local_base=base_model_id is None)
        if base_model_id is not None and data.base_model != base_model_id:
            data = with_base_model(data, base_model_id)
        data = data.replace(repo_id=repo_id, tokenizer=tokenizer_from, **named)
        readme = render_model_card(data, repo_id=data.repo_id)
        settings.update(
            labels=data.labels,
            template=data.template,
            text_column=data.text_column,
            label_tokenization=data.label_tokenization,
            chat=data.chat,
            task=data.task,
            max_new_tokens=data.max_new_tokens,
            **{CARD_KEY: data.to_dict()},
        )
    # Predict must continue the prompt as training did: a folder always says how (one without the key is older).
    if settings.get("label_tokenization") is None:
        settings["label_tokenization"] = "joint"
    if settings["label_tokenization"] not in LABEL_TOKENIZATIONS:
        raise ValueError(
            f"label_tokenization={settings['label_tokenization']!r}: choose one of {list(LABEL_TOKENIZATIONS)}, the "
            "value the model was trained with (the collator's label_tokenization)."
        )
    settings.update(class_names=list(class_names) if class_names is not None else None, eval_mode=eval_mode)
    settings = {key: value for key, value in settings.items() if value is not None}

    def write(folder: Path) -> None:
        previous = {
            name: (config.base_model_name_or_path, getattr(config, "tokenizer_name_or_path", None))
            for name, config in configs.items()
        }
        try:
            if base_model_id is not None:  # peft 0.21 records the local path (listed in softprompt_hf.core.upstream)
                for config in configs.values():
                    config.base_model_name_or_path = base_model_id
                    # TEXT-initialised prompt tuning records where its tokenizer came from: a local folder too.
                    tokenizer_path = getattr(config, "tokenizer_name_or_path", None)
                    if tokenizer_path and os.path.isdir(tokenizer_path):
                        config.tokenizer_name_or_path = base_model_id
            # peft computes the saved prompt by running the trained modules (P-tuning's encoder, the prefix
            # projection): in eval mode, or their dropout would be baked into the adapter.
            # save_embedding_layers=False: soft prompts never train the embedding matrix, and "auto" would look
            # the base model up (on the Hub) to decide.
            # Under FSDP2 (inside sharding.gathered_root) peft must not call model.state_dict() itself: FSDP's
            # state-dict hook registers the sharded parameters again, and peft then runs the prompt encoder on
            # shards. Its adapter file holds the prompt computed from the live modules either way.
            extra: dict[str, Any] = {}
            if fsdp_root(model) is not None:
                extra["state_dict"] = {
                    name: param.detach() for name, param in model.named_parameters() if param.requires_grad
                }
            with methods.eval_mode(model):
                model.save_pretrained(str(folder), save_embedding_layers=False, **extra)
        finally:
            for name, (base_path, tokenizer_path) in previous.items():
                configs[name].base_model_name_or_path = base_path
                if tokenizer_path is not None:
                    configs[name].tokenizer_name_or_path = tokenizer_path
        if keep_tokenizer and tokenizer is not None:
            tokenizer.save_pretrained(str(folder))
        readme.save(str(folder / "README.md"))  # replaces peft's generic card
        (folder / INFERENCE_CONFIG_NAME).write_text(
            json.dumps(settings, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8"
        )

    replace_folder(target, write)
    logger.info(f"Saved the adapter to {target}")
    return target
