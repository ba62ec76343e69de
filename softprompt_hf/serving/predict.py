"""Label texts with a saved soft-prompt adapter (a Hub id or a local folder), by generation or ranking.

The adapter folder's ``softprompt_hf.json`` (written at training time) gives the label set, the prompt
template, the text column and where the prompt ends and the label begins (``label_tokenization``); arguments
override it. The tokenizer comes from the base model (its own) or from the folder (where it differs).
Generation mode decodes through the model's own
``model.generate()`` (greedy, batched with left padding), with :func:`~softprompt_hf.enable_soft_prompt_generate`
switched on for soft prompts: with peft 0.21.2 and transformers 5.24, ``PeftModel.generate`` alone gives wrong
tokens for every soft prompt. The modes run the package's decoding functions, as ``GenerationMetrics`` does:
:func:`~softprompt_hf.generate_labels` (``use_generate=True``), :func:`~softprompt_hf.rank_labels` and
:func:`~softprompt_hf.constrained_labels` (greedy over the tokens that continue some label).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError
from peft import PeftConfig, PeftModel
from safetensors import SafetensorError
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase
from transformers.utils import logging

from ..adapter.saving import CHAT_KEY, INFERENCE_CONFIG_NAME, TOKENIZER_FROM_BASE, TOKENIZER_KEY
from ..constants import MODES
from ..core.locations import is_local_path
from ..core.upstream import prompt_learning_shapes, route_prefix_cache_argument
from ..data.chat import ChatTemplate
from ..data.prompt import DEFAULT_TEMPLATE, SAVED_WITHOUT_LABEL_TOKENIZATION, PromptFormat, PromptInput, PromptTemplate
from ..data.reading import utf8_problem
from ..evaluation.compute_metrics import Prediction, TextPrediction
from ..evaluation.metrics import check_label_set, match_label
from ..inference.generate import enable_soft_prompt_generate, fixes_generate
from ..inference.labels import generate_label_ids, label_outputs
from ..inference.loops import decode_outputs

__all__ = ["AdapterLoadError", "LoadedAdapter", "load_adapter", "predict", "read_rows", "read_texts"]

#: What a free-text adapter generates at most when neither the call nor its softprompt_hf.json says.
DEFAULT_MAX_NEW_TOKENS = 64

logger = logging.get_logger(__name__)

_READERS = (".csv", ".jsonl", ".json", ".parquet")


class AdapterLoadError(OSError):
    """The adapter or its base model could not be loaded; the message says what to download or pass."""


@dataclass
class LoadedAdapter:
    """A soft-prompt model ready for inference, with its tokenizer and ``softprompt_hf.json`` settings.

    For prompt tuning, P-tuning and prefix tuning, ``model.generate()`` is right (see :func:`load_adapter`).
    """

    model: PeftModel
    tokenizer: PreTrainedTokenizerBase
    settings: dict[str, Any]
    source: str


def load_adapter(
    adapter: str | os.PathLike[str],
    *,
    base_model: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    token: str | None = None,
) -> LoadedAdapter:
    """Loads a saved adapter (Hub id or local folder) on its base model, in inference mode.

    For a prompt tuning, P-tuning or prefix tuning adapter, the returned model's ``generate()`` is made right with
    :func:`~softprompt_hf.enable_soft_prompt_generate` (peft 0.21.2's ``generate()`` gives wrong tokens for soft
    prompts on transformers 5.24): ``loaded.model.generate(**tokenizer(prompts, padding=True,
    return_tensors="pt"), max_new_tokens=...)`` decodes as the model's own repeated forward passes do, with left
    or right padding. ``disable_soft_prompt_generate(loaded.model)`` gives it peft's back.

    Args:
        adapter: The adapter's Hub id (``me/bloomz-complaints``) or local folder.
        base_model: A local path (or Hub id) to load the base model from instead of the one the adapter names,
            e.g. a downloaded copy on an offline machine.
        device: Where to run the model (default: CUDA if available, else CPU).
        token: A Hub token for private repositories.

    Raises:
        AdapterLoadError: If the adapter or its base model cannot be found, the adapter folder has no weights or
            damaged ones, or the base model's shapes are not those the adapter was trained for; the message says
            what to download or which local path to pass.
        ValueError: If ``device`` is unknown, or CUDA is asked for and there is none.
    """
    source, peft_config = read_adapter_config(adapter, device, token)
    base = base_model_source(source, peft_config, base_model)
    return attach_adapter(source, peft_config, load_base_model(source, base, token), base, device, token)


def read_adapter_config(
    adapter: str | os.PathLike[str], device: str | torch.device | None, token: str | None
) -> tuple[str, PeftConfig]:
    """The adapter's source (as a string) and its peft config, after checking ``device`` and a local folder."""
    source = str(adapter)
    _check_device(device)
    local = Path(source).expanduser()
    if local.is_dir():
        _check_adapter_folder(local)
    elif is_local_path(source):
        raise AdapterLoadError(
            f"No adapter folder at {source!r}. Pass the folder a training run saved (a recipe's <output_dir>/adapter, "
            "holding adapter_config.json) or a Hub id (namespace/name)."
        )
    with _load_error(
        lambda error: (
            f"Could not load the adapter {source!r}: {error}. Pass the folder holding adapter_config.json or a Hub id; "
            "offline, download it first with `hf download <repo_id>`."
        )
    ):
        peft_config = PeftConfig.from_pretrained(source, token=token)
    return source, peft_config


def base_model_source(source: str, peft_config: PeftConfig, base_model: str | os.PathLike[str] | None) -> str:
    """The base model to load: ``base_model`` where given, else the one the adapter names (checked to exist)."""
    base = str(base_model) if base_model is not None else peft_config.base_model_name_or_path
    if not base:
        raise AdapterLoadError(
            f"{source!r} does not name its base model (base_model_name_or_path is empty); pass base_model=... "
            "(--base-model) with the model's Hub id or local path."
        )
    if is_local_path(base) and not Path(base).expanduser().is_dir():
        named = "--base-model" if base_model is not None else "its adapter_config.json (base_model_name_or_path)"
        raise AdapterLoadError(
            f"The adapter {source!r} needs the base model {base!r} (named by {named}), and there is no such folder. "
            "Pass the folder of the model it was trained on (CLI: --base-model /path/to/model) or its Hub id."
        )
    return base


def load_base_model(source: str, base: str, token: str | None) -> Any:
    with _load_error(
        lambda error: (
            f"The adapter {source!r} needs the base model {base!r}, which could not be loaded ({error}). "
            f"Download it while online (`hf download {base}`; it is then found offline in the Hugging Face cache), "
            "or pass the local path of a copy: base_model='/path/to/model' (CLI: --base-model /path/to/model)."
        )
    ):
        return AutoModelForCausalLM.from_pretrained(base, token=token)


def attach_adapter(
    source: str,
    peft_config: PeftConfig,
    base_lm: Any,
    base: str,
    device: str | torch.device | None,
    token: str | None,
) -> LoadedAdapter:
    """The adapter at ``source`` on the loaded base model ``base_lm``, ready for inference (see
    :func:`load_adapter`). A soft prompt changes nothing in the base model, so several adapters can be attached
    to the same one (``softprompt_hf.serving.multi.load_adapters``): each gets its own ``PeftModel`` around it."""
    _check_base_model(source, peft_config, base_lm, base)
    settings = _read_settings(source, token)
    tokenizer = _load_tokenizer(source, base, settings, token)
    # is_trainable=False: inference mode, so P-tuning and prefix projection use the saved final prompt.
    with _load_error(
        lambda error: (
            f"The adapter weights of {source!r} are damaged ({error}): the file was truncated or changed after it was "
            "saved. Copy or download the folder again, or save the adapter again from the run's checkpoint."
        ),
        SafetensorError,
    ):
        model = PeftModel.from_pretrained(base_lm, source, is_trainable=False, token=token)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        raise AdapterLoadError(
            f"The tokenizer of {source!r} has {len(tokenizer)} tokens, more than the base model's embeddings: they "
            "do not belong together. Pass the base model the adapter was trained on."
        )
    route_prefix_cache_argument(model)  # prefix tuning's eval-loss forward, as in training
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    model.eval()
    if fixes_generate(model):
        enable_soft_prompt_generate(model)
    return LoadedAdapter(model=model, tokenizer=tokenizer, settings=settings, source=source)


def predict(
    adapter: str | os.PathLike[str] | LoadedAdapter | Mapping[str, LoadedAdapter] | PeftModel,
    texts: Sequence[PromptInput],
    *,
    mode: str = "generate",
    adapter_names: Sequence[str] | None = None,
    labels: Sequence[str] | None = None,
    template: str | ChatTemplate | None = None,
    text_column: str | None = None,
    label_tokenization: str | None = None,
    max_prompt_tokens: int | None = None,
    ids: Sequence[Any] | None = None,
    batch_size: int = 32,
    show_progress: bool = False,
    tokenizer: PreTrainedTokenizerBase | None = None,
    base_model: str | None = None,
    device: str | None = None,
    task: str | None = None,
    max_new_tokens: int | None = None,
) -> list[Prediction] | list[TextPrediction] | list[Prediction | TextPrediction]:
    """Labels ``texts`` with a soft-prompt adapter, or, for a free-text adapter, generates text after each.

    Args:
        adapter: A Hub id or local folder (loaded with :func:`load_adapter`), a ``LoadedAdapter``, an
            in-memory ``PeftModel`` (then pass ``tokenizer``), or several adapters on one base model
            (:func:`~softprompt_hf.load_adapters`; then pass ``adapter_names``).
        texts: The texts to label; or rows (mappings of column names to values) holding the template's columns, for
            a template with fields other than ``{text}``.
        mode: ``"generate"`` (greedy decoding of the label with the model's ``generate()``, made right for soft
            prompts by :func:`~softprompt_hf.enable_soft_prompt_generate` for the call, prompts padded on the left:
            :func:`~softprompt_hf.generate_labels` with ``use_generate=True``; the output is matched to the label
            set as ``GenerationMetrics`` matches it, and ``predicted`` is ``None`` for an output that matches no
            label), ``"rank"`` (:func:`~softprompt_hf.rank_labels`: the label with the highest log-likelihood;
            per-label ``scores``) or ``"constrained"`` (:func:`~softprompt_hf.constrained_labels`: greedy
            decoding over the tokens that continue some label, with the package's decoder; always a label).
        adapter_names: With several loaded adapters (``LoadedAdapters``), the adapter of each row, one name per
            text: each row gets exactly what its adapter alone gives it (its labels, template, label tokenization
            and task from its ``softprompt_hf.json``; see :func:`~softprompt_hf.serving.multi.predict_adapters`).
        labels: The label texts; default: the adapter's ``softprompt_hf.json``.
        template: The prompt template, or a ``ChatTemplate`` (an instruct model's chat format); default: the
            adapter's (its ``softprompt_hf.json``'s ``chat``, rebuilt as a ``ChatTemplate``, else its ``template``),
            else the seed guide's.
        text_column: Fills ``{text_column}`` in the template; default: the adapter's (a ``ChatTemplate`` passed
            here keeps its own).
        label_tokenization: ``"joint"`` or ``"separate"`` (see :class:`~softprompt_hf.data.prompt.PromptTemplate`);
            default: the adapter's, the one it was trained with; ``"separate"`` for a folder saved before the
            choice existed (its ``softprompt_hf.json`` has no ``label_tokenization``), ``"joint"`` for an
            in-memory model.
        max_prompt_tokens: Truncate texts (never the template) so that prompts fit.
        ids: Row ids carried into the predictions.
        batch_size: Prompts per batch: per ``generate()`` call, or per forward pass in rank and constrained
            mode (labels do not depend on it; scores only to float rounding).
        show_progress: Show progress bars.
        tokenizer: Needed with an in-memory model.
        base_model: Local path or Hub id of the base model, overriding the adapter's (see :func:`load_adapter`).
        device: Device for a model loaded here.
        task: ``"classification"`` or ``"text"``; default: the adapter's ``softprompt_hf.json`` (``task``), else
            classification. A free-text adapter generates text with the model's ``generate()`` (greedy, made right
            for soft prompts; :func:`~softprompt_hf.generate_texts` with ``use_generate=True``), ``mode`` must be
            ``"generate"``, and ``labels`` are not used.
        max_new_tokens: Free text: the most tokens generated per row, EOS included; default: the adapter's
            (the run's evaluation budget), else 64.

    Returns:
        One ``Prediction`` per text (``gold`` is ``None``); for a free-text adapter one ``TextPrediction`` (the
        text, its output and how many tokens it took; ``reference`` is ``None``). With several adapters, each row's
        by its own adapter's task, in the rows' order.

    Example:

    ```python
    >>> predictions = predict("me/bloomz-complaints", ["@Acme my parcel never arrived"], mode="rank")
    >>> predictions[0].predicted
    'complaint'

    ```
    """
    if isinstance(adapter, Mapping):  # several adapters on one base (softprompt_hf.serving.multi.LoadedAdapters)
        overrides = {
            "labels": labels,
            "template": template,
            "text_column": text_column,
            "label_tokenization": label_tokenization,
            "tokenizer": tokenizer,
            "base_model": base_model,
            "device": device,
            "task": task,
        }
        given = [name for name, value in overrides.items() if value is not None]
        if given:
            raise ValueError(
                f"predict with several adapters takes each row's settings from its own adapter's "
                f"{INFERENCE_CONFIG_NAME}; {', '.join(given)} cannot be passed with them."
            )
        several = getattr(adapter, "predict", None)  # LoadedAdapters.predict: predict_adapters on them
        if several is None:
            raise TypeError(
                "Several adapters are predicted with what load_adapters({name: adapter, ...}) returns, not a "
                f"{type(adapter).__name__}."
            )
        return several(
            texts,
            adapter_names,
            mode=mode,
            max_prompt_tokens=max_prompt_tokens,
            max_new_tokens=max_new_tokens,
            ids=ids,
            batch_size=batch_size,
            show_progress=show_progress,
        )
    if adapter_names is not None:
        raise ValueError(
            "adapter_names= is for several adapters loaded together with load_adapters({name: adapter, ...}); this "
            "is a single adapter."
        )
    check_inputs(texts, mode=mode, batch_size=batch_size, ids=ids)
    if isinstance(adapter, str | os.PathLike):
        adapter = load_adapter(adapter, base_model=base_model, device=device)
    if isinstance(adapter, LoadedAdapter):
        model, tokenizer, settings = adapter.model, tokenizer or adapter.tokenizer, adapter.settings
    else:
        model, settings = adapter, {}
        if tokenizer is None:
            raise ValueError("predict with an in-memory model needs its tokenizer: pass tokenizer=...")
    plan = prediction_plan(
        tokenizer,
        settings,
        saved=isinstance(adapter, LoadedAdapter),
        mode=mode,
        labels=labels,
        template=template,
        text_column=text_column,
        label_tokenization=label_tokenization,
        task=task,
        max_new_tokens=max_new_tokens,
    )
    if plan.task == "text":
        generated = generate_label_ids(
            model,
            tokenizer,
            list(texts),
            template=plan.prompt,
            max_new_tokens=plan.max_new_tokens,
            max_prompt_tokens=max_prompt_tokens,
            batch_size=batch_size,
            show_progress=show_progress,
            use_generate=True,
            description="Generating texts",
        )
        return text_predictions(plan, tokenizer, list(texts), generated, ids)
    if any(isinstance(text, Mapping) for text in texts):
        raise ValueError("A classification adapter labels texts (strings); pass the text of each row.")
    strings = [str(text) for text in texts]  # checked above: no rows here
    outputs, scores = label_outputs(
        mode,
        model,
        tokenizer,
        strings,
        plan.labels,
        use_generate=True,
        template=plan.prompt,
        max_prompt_tokens=max_prompt_tokens,
        batch_size=batch_size,
        show_progress=show_progress,
    )
    return label_predictions(plan, strings, outputs, scores, ids)


@dataclass(frozen=True)
class PredictionPlan:
    """How an adapter's rows are predicted (:func:`prediction_plan`): its task, the prompt its texts go into, and
    its labels (classification) or the most tokens it generates (free text)."""

    task: str
    prompt: PromptFormat
    labels: list[str] = dataclasses.field(default_factory=list)
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS


def prediction_plan(
    tokenizer: PreTrainedTokenizerBase,
    settings: Mapping[str, Any],
    *,
    saved: bool,
    mode: str,
    labels: Sequence[str] | None = None,
    template: str | ChatTemplate | None = None,
    text_column: str | None = None,
    label_tokenization: str | None = None,
    task: str | None = None,
    max_new_tokens: int | None = None,
) -> PredictionPlan:
    """What :func:`predict` runs for an adapter of ``settings`` (its ``softprompt_hf.json``; ``saved``: loaded from
    a folder, not in memory), the arguments overriding them; checks them (the errors ``predict`` raises)."""
    task = task or settings.get("task") or "classification"
    if task not in ("classification", "text"):
        raise ValueError(f"task={task!r}: choose 'classification' or 'text'.")
    if task == "text" and mode != "generate":
        raise ValueError(
            f"mode={mode!r} scores labels; this adapter writes free text (task 'text'): use mode='generate' "
            "(CLI: leave --mode out)."
        )
    if label_tokenization is None:
        label_tokenization = settings.get("label_tokenization", SAVED_WITHOUT_LABEL_TOKENIZATION if saved else "joint")
    default_column = "text" if task == "text" else "Tweet text"
    prompt = adapter_prompt(tokenizer, settings, template, text_column or settings.get("text_column") or default_column)
    if isinstance(prompt, PromptTemplate):
        prompt = dataclasses.replace(prompt, label_tokenization=label_tokenization)
    if task == "text":
        budget = max_new_tokens or settings.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS
        if budget < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {budget}.")
        return PredictionPlan(task=task, prompt=prompt, max_new_tokens=budget)
    labels = labels or settings.get("labels")
    if not labels:
        raise ValueError(
            "No label set: the adapter has no softprompt_hf.json with labels, and none were passed. Pass the label "
            "texts the adapter was trained to generate, e.g. labels=['complaint', 'no complaint'] (CLI: --labels "
            "'complaint,no complaint')."
        )
    return PredictionPlan(task=task, prompt=prompt, labels=check_label_set(labels))


def label_predictions(
    plan: PredictionPlan,
    texts: Sequence[str],
    outputs: Sequence[str],
    scores: Sequence[dict[str, float] | None],
    ids: Sequence[Any] | None,
) -> list[Prediction]:
    """The ``Prediction`` of each text: its output matched to the plan's labels, its scores (rank mode), its id."""
    row_ids = list(ids) if ids is not None else [None] * len(texts)
    return [
        Prediction(text=t, gold=None, predicted=match_label(o, plan.labels), output=o, scores=s, id=i)
        for t, o, s, i in zip(texts, outputs, scores, row_ids, strict=True)
    ]


def text_predictions(
    plan: PredictionPlan,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[PromptInput],
    generated: Sequence[list[int]],
    ids: Sequence[Any] | None,
) -> list[TextPrediction]:
    """The ``TextPrediction`` of each input: its source text, the generated ids decoded, how many tokens they
    took (a final stop token not counted), its id."""
    stops = plan.prompt.stop_ids(tokenizer)
    outputs = decode_outputs(tokenizer, generated, stops)
    row_ids = list(ids) if ids is not None else [None] * len(texts)
    return [
        TextPrediction(
            text=plan.prompt.source_text(source),
            reference=None,
            output=output,
            tokens=len(row) - (bool(row) and row[-1] in stops),
            id=row_id,
        )
        for source, output, row, row_id in zip(texts, outputs, generated, row_ids, strict=True)
    ]


def check_inputs(texts: Sequence[PromptInput], *, mode: str, batch_size: int, ids: Sequence[Any] | None) -> None:
    """Refuses an unknown ``mode``, a ``batch_size`` under 1, a single string for ``texts``, ``ids`` of another
    length, and empty texts (rows, mappings of columns, are checked by the template)."""
    if mode not in MODES:
        raise ValueError(f"Unknown mode {mode!r}; choose one of {list(MODES)}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    if isinstance(texts, str):
        raise ValueError("texts must be a sequence of strings, not a single string; wrap it in a list.")
    if ids is not None and len(ids) != len(texts):
        raise ValueError(f"Got {len(ids)} ids for {len(texts)} texts; pass one id per text.")
    for i, text in enumerate(texts):
        if isinstance(text, Mapping):
            continue  # a row: the template checks its columns
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"Text {i} is {text!r}; every text must be a non-empty string.")


def adapter_prompt(
    tokenizer: PreTrainedTokenizerBase,
    settings: Mapping[str, Any],
    template: str | ChatTemplate | None,
    text_column: str,
) -> PromptFormat:
    """The prompt to predict with: ``template`` where given (a ``ChatTemplate`` keeps its own text column), else the
    adapter's chat template (``softprompt_hf.json``'s ``chat``), else its plain template, else the seed guide's. A
    chat template is checked against ``tokenizer`` here."""
    chat: ChatTemplate | None = None
    if isinstance(template, str) and template:
        return PromptTemplate(template, text_column)
    if isinstance(template, ChatTemplate):
        chat = template
    elif settings.get(CHAT_KEY):
        saved = settings[CHAT_KEY]
        if not isinstance(saved, Mapping) or not isinstance(saved.get("user"), str):
            raise AdapterLoadError(
                f"{INFERENCE_CONFIG_NAME}'s {CHAT_KEY!r} is {saved!r}, not {{'user': <pattern>, 'system': <text or "
                "null>}}: the file was changed by hand. Save the adapter again, or pass template=ChatTemplate(...)."
            )
        chat = ChatTemplate(user=saved["user"], system=saved.get("system"), text_column=text_column)
    if chat is None:
        return PromptTemplate(settings.get("template") or DEFAULT_TEMPLATE, text_column)
    chat.check_tokenizer(tokenizer)
    return chat


def read_rows(
    path: str | os.PathLike[str], *, columns: Sequence[str], id_column: str | None = None
) -> tuple[list[dict[str, Any]], list[Any] | None]:
    """Reads rows holding ``columns`` (a template's) from a CSV, JSONL or parquet file, for a template with fields
    other than ``{text}``: each row a mapping of those columns to their values (strings in a CSV).

    Returns:
        The rows, and the ids (``None`` without ``id_column``).
    """
    frame = read_frame(path, text_column=None)
    found = [str(c) for c in frame.columns]
    missing = [name for name in (*columns, *([id_column] if id_column else [])) if name not in found]
    if missing:
        raise ValueError(
            f"{str(path)!r} has no column(s) {missing}, which the adapter's template reads; its columns are {found}."
        )
    rows = [
        {column: plain_value(value) for column, value in zip(columns, values, strict=True)}
        for values in frame[list(columns)].itertuples(index=False, name=None)
    ]
    ids = [plain_value(v) for v in frame[id_column].tolist()] if id_column else None
    return rows, ids


def read_texts(
    source: str | os.PathLike[str] | IO[str],
    *,
    text_column: str | None = None,
    id_column: str | None = None,
) -> tuple[list[str], list[Any] | None]:
    """Reads the texts to label from a CSV, JSONL or parquet file, or one text per line from a text stream.

    Args:
        source: A file path (format from the extension) or an open text stream such as ``sys.stdin``.
        text_column: The column holding the text (files); required when a file has several columns.
        id_column: An optional column of row ids.

    Returns:
        The texts, and the ids (``None`` without ``id_column``).
    """
    if not isinstance(source, str | os.PathLike):
        texts = [line.rstrip("\r\n") for line in source]
        return [t for t in texts if t.strip()], None
    frame = read_frame(source, text_column)
    path = Path(source)
    columns = [str(c) for c in frame.columns]
    if text_column is None:
        if len(columns) != 1:
            raise ValueError(f"{str(path)!r} has columns {columns}: choose the text column (--text-column).")
        text_column = columns[0]
    for name in (text_column, id_column):
        if name is not None and name not in columns:
            raise ValueError(f"{str(path)!r} has no column {name!r}; its columns are {columns}.")
    texts = frame[text_column].tolist()
    for i, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"Row {i} of {str(path)!r} has {text!r} in {text_column!r}; texts must be non-empty.")
    ids = [plain_value(v) for v in frame[id_column].tolist()] if id_column else None
    return texts, ids


def read_frame(source: str | os.PathLike[str], text_column: str | None) -> Any:
    """A CSV, JSONL or parquet file as a pandas frame with at least one row (CSV cells as strings: an empty cell is
    "", not NaN; with ``text_column``, only that column is read as strings)."""
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"No such input file: {str(path)!r}.")
    extension = path.suffix.lower()
    import pandas as pd

    if extension not in _READERS:
        raise ValueError(f"Cannot read {str(path)!r}: use a {', '.join(_READERS)} file, or pipe text lines to stdin.")
    if path.stat().st_size == 0:
        raise ValueError(
            f"{str(path)!r} is empty: it needs the column names (CSV header or JSON keys) and one row per text."
        )
    problem = utf8_problem(path)[0] if extension != ".parquet" else None
    if problem is not None:
        raise ValueError(
            f"{str(path)!r} is not UTF-8 text: {problem} (probably saved as Latin-1 or Windows-1252). Save it as "
            "UTF-8, e.g. `iconv -f latin1 -t utf-8 old.csv > new.csv`."
        )
    try:
        if extension == ".csv":
            # Texts stay strings (an empty cell is "", not NaN); ids keep their inferred type.
            frame = pd.read_csv(path, dtype={text_column: str} if text_column else str, keep_default_na=False)
        elif extension in (".jsonl", ".json"):
            frame = pd.read_json(path, lines=extension == ".jsonl", dtype=False)
        else:
            frame = pd.read_parquet(path)
    except (ValueError, OSError, pd.errors.ParserError) as err:
        # pandas' messages ("No columns to parse from file", "Expected object or value") do not name the file.
        raise ValueError(f"Cannot read {str(path)!r} as a {extension[1:]} file: {_first_line(err)}.") from err
    if frame.empty:
        raise ValueError(f"{str(path)!r} has no rows: add one row per text to label.")
    return frame


def _load_tokenizer(source: str, base: str, settings: dict[str, Any], token: str | None) -> PreTrainedTokenizerBase:
    """The adapter's tokenizer: the base model's own where ``softprompt_hf.json`` says so (``save_adapter`` saves
    none then), else the folder's, else (a folder without one) the base model's."""
    if settings.get(TOKENIZER_KEY) != TOKENIZER_FROM_BASE:
        try:
            return AutoTokenizer.from_pretrained(source, token=token)
        except Exception:  # any failure to find or read one: the folder has none usable
            logger.info(f"{source} has no tokenizer; using the base model's ({base})")
    with _load_error(
        lambda error: (
            f"The adapter {source!r} uses the tokenizer of its base model {base!r}, which could not be loaded "
            f"({error}). Download the base model while online (`hf download {base}`), or pass the local path of a "
            "copy that holds its tokenizer: base_model='/path/to/model' (CLI: --base-model /path/to/model)."
        )
    ):
        return AutoTokenizer.from_pretrained(base, token=token)


def plain_value(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _read_settings(source: str, token: str | None) -> dict[str, Any]:
    local = Path(source)
    if local.is_dir():
        path: Path | None = local / INFERENCE_CONFIG_NAME
        if path is not None and not path.is_file():
            path = None
    else:
        try:
            path = Path(hf_hub_download(source, INFERENCE_CONFIG_NAME, token=token))
        except EntryNotFoundError:
            path = None
    if path is None:
        return {}
    settings = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(settings, dict):
        raise AdapterLoadError(f"{INFERENCE_CONFIG_NAME} of {source!r} is not a JSON object.")
    return settings


_ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def _check_adapter_folder(folder: Path) -> None:
    if not (folder / "adapter_config.json").is_file():
        raise AdapterLoadError(
            f"{str(folder)!r} is not an adapter folder: it has no adapter_config.json. Pass the folder a training run "
            "saved (a recipe's <output_dir>/adapter)."
        )
    if not any((folder / name).is_file() for name in _ADAPTER_WEIGHTS):
        raise AdapterLoadError(
            f"{str(folder)!r} has adapter_config.json but no adapter weights ({_ADAPTER_WEIGHTS[0]}): the folder was "
            "copied or downloaded incompletely. Copy the whole folder again (or push/download it with the Hub)."
        )


def _check_device(device: str | torch.device | None) -> None:
    if device is None:
        return
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"Unknown device {device!r} ({_first_line(err)}); use cpu, cuda or cuda:N.") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"Device {device!r} was asked for, but torch sees no CUDA GPU here: use --device cpu.")


def _check_base_model(source: str, peft_config: PeftConfig, base_lm: Any, base: str) -> None:
    """Refuse a base model whose shapes differ from those the adapter was trained for (it would fail later, in a
    forward pass, with a bare shape error)."""
    # What peft gives this method on this base model (for prefix tuning on grouped-query attention: the key/value
    # heads and their width), against what the adapter was saved with.
    expected = prompt_learning_shapes(peft_config, base_lm.config)
    names = {"token_dim": "hidden size", "num_layers": "layers", "num_attention_heads": "attention heads"}
    actual = {names[key]: value for key, value in expected.items()}
    trained = {names[key]: getattr(peft_config, key, None) for key in expected}
    differ = [name for name in actual if None not in (actual[name], trained[name]) and actual[name] != trained[name]]
    if differ:
        shapes = ", ".join(f"{name} {trained[name]} vs {actual[name]}" for name in differ)
        raise AdapterLoadError(
            f"The adapter {source!r} was trained for base model {peft_config.base_model_name_or_path!r}, and {base!r} "
            f"has other shapes ({shapes}). Pass that base model (CLI: --base-model with its folder or Hub id)."
        )


@contextlib.contextmanager
def _load_error(message: Callable[[str], str], kind: type[Exception] = Exception) -> Iterator[None]:
    """Raises a ``kind`` error of the block as an ``AdapterLoadError`` whose message is ``message`` of the error's
    first line."""
    try:
        yield
    except kind as err:
        raise AdapterLoadError(message(_first_line(err))) from err


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]
