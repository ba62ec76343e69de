"""A recipe's inputs: the data (with its validation split), the prompt each row becomes, and the tokenizer.

``load_run_data`` dispatches on ``--task`` and ``--dataset`` (the embedded tweets, RAFT, your own files, BBC News,
ACLSum); ``load_run_tokenizer`` loads the base model's tokenizer and refuses one a run cannot train with.
``run_prompt``, ``text_column_of`` and ``label_tokenization_of`` are what the collator, the metrics and the card
read from the same flags, so that training, evaluation and the saved adapter format a row alike.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase

from ..core.locations import is_local_path
from ..data.chat import ChatTemplate, prompt_format
from ..data.loading import ClassificationData, TextData, load_classification_data, load_raft, load_text_data
from ..data.prompt import PromptFormat, PromptTemplate
from ..data.splits import stratified_split
from ..embedded import EMBEDDED_DATA_FILES
from ..real import load_aclsum, load_bbc_news
from ..training.arguments import DataArguments, ModelArguments

__all__ = ["label_tokenization_of", "load_run_data", "load_run_tokenizer", "run_prompt", "text_column_of"]


def load_run_data(data_args: DataArguments, seed: int) -> ClassificationData | TextData:
    """Load the data a recipe trains on, with its stratified, seeded validation split, and its train rows cut to
    a stratified subset of ``--max_train_samples`` if set (``--task text``: a seeded validation split and subset).

    Every field of the run's template must be a column of the training rows: checked here, before the tokenizer
    and the model load.

    Raises:
        ValueError: For data that cannot be loaded or does not fit the flags, with what to change.
    """
    data = _load_text(data_args, seed) if data_args.task == "text" else _load_classification(data_args, seed)
    run_prompt(data, data_args).check_columns(data.train.column_names, where="the training data")
    return data


def _load_classification(data_args: DataArguments, seed: int) -> ClassificationData:
    data = _load_splits(data_args, seed)
    wanted = data_args.max_train_samples
    if wanted is not None and wanted < len(data.train):
        if wanted < len(data.classes):
            raise ValueError(
                f"--max_train_samples {wanted} is fewer rows than the {len(data.classes)} classes: every class needs "
                "a training row. Give at least that many."
            )
        # The subset is what a stratified split would hold out: each class in proportion, seeded.
        _, subset = stratified_split(data.train, data.label_column, wanted, seed)
        data = replace(data, train=subset)
    return data


def _load_text(data_args: DataArguments, seed: int) -> TextData:
    """``--task text``: the text-to-text files, the template's columns as sources; the id column kept when the data
    has it; ``--max_train_samples`` a seeded random subset of the train rows, in their order."""
    prompt = PromptTemplate(data_args.template, data_args.text_column or "text")
    if data_args.dataset == "aclsum":
        sources = [name.strip() for name in data_args.aclsum_source.split(",") if name.strip()]
        data = load_aclsum(data_args.aclsum_aspect, sources)  # its own splits: train, val (validation), test
        return _train_subset(data, data_args.max_train_samples, seed)
    files = _data_files(data_args)
    if "train" not in files:
        raise ValueError("--task text needs --train_file: the rows with the source column(s) and --target_column.")
    if "text" in prompt.fields and data_args.text_column is None:
        raise ValueError(
            f"The template {data_args.template!r} reads {{text}}: give --text_column (the column it reads), or "
            "write the template with your columns' names in braces, e.g. 'Abstract : {abstract} Summary : '."
        )
    assert data_args.target_column is not None  # DataArguments requires it with --task text
    size = _validation_size(data_args)
    try:
        data = load_text_data(
            files,
            source_columns=list(prompt.columns),
            target_column=data_args.target_column,
            validation_size=size,
            seed=seed,
        )
    except ValueError as err:
        raise ValueError(
            f"{err} (In a recipe the source columns are the fields of --template, the reference is --target_column.)"
        ) from err
    if data_args.id_column is not None and data_args.id_column in data.train.column_names:
        data = replace(data, id_column=data_args.id_column)
    return _train_subset(data, data_args.max_train_samples, seed)


def _train_subset(data: TextData, wanted: int | None, seed: int) -> TextData:
    """``--max_train_samples``: a seeded random subset of the train rows, in their order."""
    if wanted is not None and wanted < len(data.train):
        keep = sorted(np.random.default_rng(seed).choice(len(data.train), size=wanted, replace=False).tolist())
        data = replace(data, train=data.train.select(keep))
    return data


def _load_splits(data_args: DataArguments, seed: int) -> ClassificationData:
    size = _validation_size(data_args)
    class_names = [name.strip() for name in data_args.class_names.split(",")] if data_args.class_names else None
    files = _data_files(data_args)
    common: dict[str, Any] = {
        "label_column": data_args.label_column,
        "id_column": data_args.id_column,
        "class_names": class_names,
        "unlabeled_class": data_args.unlabeled_class,
        "validation_size": size,
        "seed": seed,
    }
    if data_args.dataset == "embedded":
        return load_raft(data_files=EMBEDDED_DATA_FILES, text_column=data_args.text_column, **common)
    if data_args.dataset == "raft":
        return load_raft(data_args.raft_subset, files or None, text_column=data_args.text_column, **common)
    if data_args.dataset == "bbc_news":
        # Its columns and topics are fixed; the recipes score the validation split, so no test rows are held out.
        return load_bbc_news(text=data_args.bbc_news_text, validation_size=size, test_size=0, seed=seed)
    if not files or data_args.text_column is None:
        raise ValueError("dataset=files needs --train_file (and optionally --test_file) and --text_column.")
    return load_classification_data(files, text_column=data_args.text_column, **common)


def _validation_size(data_args: DataArguments) -> float | int:
    """``--validation_size`` as the loaders take it: a row count from 1 up, a fraction below."""
    return int(data_args.validation_size) if data_args.validation_size >= 1 else data_args.validation_size


def _data_files(data_args: DataArguments) -> dict[str, str]:
    """``--train_file`` and ``--test_file``, by split, where given."""
    return {split: path for split, path in (("train", data_args.train_file), ("test", data_args.test_file)) if path}


def run_prompt(data: ClassificationData | TextData, data_args: DataArguments) -> PromptFormat:
    """The run's prompt (``--template``, or with ``--chat_template`` a ``ChatTemplate``), reading ``{text}`` from
    the data's text column."""
    text_column = text_column_of(data, data_args)
    return prompt_format(data_args.prompt(text_column), text_column, label_tokenization_of(data_args))


def text_column_of(data: ClassificationData | TextData, data_args: DataArguments) -> str:
    """The column ``{text}`` reads: the classification data's text column, or ``--text_column`` (``--task text``)."""
    if isinstance(data, ClassificationData):
        return data.text_column
    return data_args.text_column or "text"


def label_tokenization_of(data_args: DataArguments) -> str:
    """The run's ``label_tokenization``: ``parse_recipe_args`` sets it to the base model's own when left unset (None); a
    ``DataArguments`` used without it gets the collator's default."""
    return data_args.label_tokenization or "joint"


def load_run_tokenizer(model_args: ModelArguments, *, chat_template: bool = False) -> PreTrainedTokenizerBase:
    """The base model's tokenizer; EOS doubles as the pad token if it has none (a new token would resize the
    vocabulary and put the whole embedding matrix into the adapter). With ``chat_template`` (``--chat_template``),
    its chat template must be able to build the run's prompts.

    Raises:
        ValueError: If ``model_name_or_path`` is a local path that is not a model folder, or cannot be loaded, or
            its tokenizer has no EOS token (the target of every row ends with it), or no usable chat template.
    """
    source = model_args.model_name_or_path
    _check_model_source(source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    # ValueError: a folder without tokenizer files (transformers 5.24; listed in softprompt_hf.core.upstream).
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if is_local_path(source):
            fix = "Save the model's tokenizer into that folder too (tokenizer.save_pretrained(folder))."
        else:
            fix = (
                "There is no local folder of that name; pass an existing model folder or a Hub id (offline, download "
                f"it first while online: `hf download {source}`)."
            )
        raise ValueError(f"--model_name_or_path {source}: could not load its tokenizer ({first}). {fix}") from err
    if tokenizer.eos_token is None:
        raise ValueError(_no_eos_message(source, tokenizer))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if chat_template:
        _check_chat_template(tokenizer, model_args)
    return tokenizer


def _check_model_source(source: str) -> None:
    if not is_local_path(source):
        return
    path = Path(source).expanduser()
    if not path.exists():
        raise ValueError(
            f"--model_name_or_path {source}: no such folder. Pass the folder that holds the model's config.json "
            "and weights, or a Hub id such as bigscience/bloomz-560m."
        )
    if not path.is_dir() or not (path / "config.json").is_file():
        raise ValueError(
            f"--model_name_or_path {source} is not a model folder (it has no config.json). Pass the folder that "
            "model.save_pretrained() (or `hf download`) wrote."
        )


def _no_eos_message(source: str, tokenizer: PreTrainedTokenizerBase) -> str:
    pad = f"its pad token is {tokenizer.pad_token!r}" if tokenizer.pad_token is not None else "it has no pad token"
    hint = ""
    try:
        eos_id = AutoConfig.from_pretrained(source).eos_token_id
    except (OSError, ValueError):
        eos_id = None
    if isinstance(eos_id, list):
        eos_id = eos_id[0] if eos_id else None
    if isinstance(eos_id, int) and 0 <= eos_id < len(tokenizer):
        token = tokenizer.convert_ids_to_tokens(eos_id)
        hint = f" The model's config.json names token {eos_id} ({token!r}) as its end of sequence:"
        hint += f' add "eos_token": {json.dumps(token)} to {source}/tokenizer_config.json.'
    else:
        hint = ' Add the model\'s end-of-sequence token as "eos_token" to its tokenizer_config.json.'
    return (
        f"The tokenizer of {source} has no EOS token ({pad}). Every training target ends with EOS, so that "
        f"generation knows where a label stops, and EOS is reused as the pad token.{hint}"
    )


def _check_chat_template(tokenizer: PreTrainedTokenizerBase, model_args: ModelArguments) -> None:
    """``--chat_template true`` on a tokenizer whose chat template cannot build the prompts: the message names the
    model and the flag to drop."""
    try:
        ChatTemplate().check_tokenizer(tokenizer)
    except ValueError as err:
        raise ValueError(
            f"--chat_template true with {model_args.model_name_or_path!r}: {err} In a recipe: leave out "
            "--chat_template (or set chat_template: false) and write the prompt in --template."
        ) from err
