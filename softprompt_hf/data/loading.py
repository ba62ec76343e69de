"""Loading and splitting text-classification data for soft-prompt fine-tuning.

The model learns to *generate* the label text of each example, so every labelled row gets a target column
(``text_label`` by default) holding its class name with ``_`` replaced by a space (``"no_complaint"`` ->
``"no complaint"``).

RAFT subsets carry an ``Unlabeled`` class: it is not a class of the task. Rows carrying it are never trained
on or scored; they are returned as a separate ``unlabeled`` split for prediction (RAFT's ``test`` split is
entirely unlabelled). Evaluation uses a stratified, seeded hold-out of the labelled rows
([`stratified_split`]) or stratified k folds ([`k_fold_splits`], [`ClassificationData.folds`]).

Text-to-text data (summaries, answers, data-to-text) has a reference text per row instead of a class:
[`load_text_data`] checks its source and target columns and holds out a seeded random validation split
([`TextData`]).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from numbers import Integral
from typing import Any

import datasets
import numpy as np
from transformers.utils import logging

from .reading import DataFiles, load_files
from .splits import k_fold_splits, requested_count, stratified_split, validation_count

logger = logging.get_logger(__name__)

__all__ = [
    "RAFT_CLASS_NAMES",
    "ClassificationData",
    "TextData",
    "label_text",
    "load_classification_data",
    "load_raft",
    "load_text_data",
]

RAFT_CLASS_NAMES: list[str] = ["Unlabeled", "complaint", "no_complaint"]
"""Class names of RAFT's ``twitter_complaints`` ``Label`` column, in ClassLabel order."""

_RAFT_PARQUET_URL = "hf://datasets/ought/raft@refs/convert/parquet/{subset}/{split}/0000.parquet"
_RAFT_TEXT_COLUMNS = {"twitter_complaints": "Tweet text"}

# Split names load_text_data reads as the validation split, in order of preference.
_VALIDATION_SPLIT_NAMES = ("validation", "valid", "val", "dev")
# How many offending rows / values an error message lists before summarising the rest.
_MAX_REPORTED = 5


def label_text(class_name: str) -> str:
    """Return the text the model must generate for a class name.

    Underscores become spaces, so the target reads like natural language.

    Args:
        class_name (`str`):
            A class name, e.g. ``"no_complaint"``.

    Returns:
        `str`: The label text, e.g. ``"no complaint"``.

    Example:

    ```python
    >>> label_text("no_complaint")
    'no complaint'

    ```
    """
    return class_name.replace("_", " ")


@dataclass
class ClassificationData:
    """A text-classification task split for soft-prompt fine-tuning.

    The label column is normalised to a [`datasets.ClassLabel`] whose ``names`` are all class names of the
    data, the unlabeled class included when the data has one. Only labelled rows (``train`` and
    ``validation``) carry the target column; ``unlabeled`` rows keep their original columns only, so they
    cannot be trained on or scored by mistake.

    Args:
        train (`datasets.Dataset`):
            Labelled rows used for training. Every class of the task has at least one row here.
        validation (`datasets.Dataset`, *optional*):
            Held-out labelled rows, stratified by class; `None` when no validation split was requested.
        unlabeled (`datasets.Dataset`, *optional*):
            Rows whose label is the unlabeled class, kept for prediction; `None` when there are none.
        classes (`list[str]`):
            The label texts of the task, in class order, the unlabeled class excluded, e.g.
            ``["complaint", "no complaint"]``.
        class_names (`list[str]`):
            The class names matching ``classes`` one to one, as written in the data, e.g.
            ``["complaint", "no_complaint"]``.
        text_column (`str`):
            Column holding the input text, e.g. ``"Tweet text"``.
        label_column (`str`):
            Column holding the original label (a `ClassLabel`), e.g. ``"Label"``.
        target_column (`str`, defaults to `"text_label"`):
            Column holding the label text the model must generate.
        id_column (`str`, *optional*):
            Column identifying rows (e.g. ``"ID"`` for RAFT submissions), if any.
        unlabeled_class (`str`, *optional*):
            Name of the class that marks unlabelled rows, if the data has one.
        test (`datasets.Dataset`, *optional*):
            Labelled rows held out for a final score only: never trained on, nor used to choose a checkpoint.
            `None` unless the loader was asked for one (``load_bbc_news(test_size=...)``); [`folds`] leaves it out.
    """

    train: datasets.Dataset
    validation: datasets.Dataset | None
    unlabeled: datasets.Dataset | None
    classes: list[str]
    class_names: list[str]
    text_column: str
    label_column: str
    target_column: str = "text_label"
    id_column: str | None = None
    unlabeled_class: str | None = None
    test: datasets.Dataset | None = None

    def folds(self, k: int = 5, seed: int = 42) -> list[ClassificationData]:
        """Re-split all labelled rows (``train`` plus ``validation``) into k stratified folds.

        Args:
            k (`int`, defaults to 5):
                Number of folds; each labelled row is in the validation split of exactly one fold.
            seed (`int`, defaults to 42):
                Seed of the shuffle; the same seed gives the same folds.

        Returns:
            `list[ClassificationData]`: One object per fold, sharing ``unlabeled``, ``test`` and the class lists.
        """
        labelled = self.train
        if self.validation is not None and len(self.validation) > 0:
            labelled = _concatenate([self.train, self.validation], what="train and validation")
        return [
            replace(self, train=train, validation=validation)
            for train, validation in k_fold_splits(labelled, self.label_column, k=k, seed=seed)
        ]


@dataclass
class TextData:
    """A text-to-text task (summaries, answers, data-to-text) split for soft-prompt fine-tuning.

    Every row keeps all its columns: a prompt template may read any of them. In ``train`` and ``validation``
    every source value is a non-empty string and every target is a non-empty string.

    Args:
        train (`datasets.Dataset`):
            Rows used for training.
        validation (`datasets.Dataset`, *optional*):
            Rows used for evaluation during training: the data's own validation split, or a seeded random
            hold-out of the train rows; `None` when there is neither (``validation_size=0``).
        source_columns (`list[str]`):
            Columns holding the input texts a prompt template reads, e.g. ``["title", "abstract"]``.
        target_column (`str`):
            Column holding the reference text the model must generate, e.g. ``"summary"``.
        id_column (`str`, *optional*):
            Column identifying rows, if any.
        test (`datasets.Dataset`, *optional*):
            The data's ``test`` split, kept as it is (its targets may be missing: rows to predict); `None` when the
            data has none.
    """

    train: datasets.Dataset
    validation: datasets.Dataset | None
    source_columns: list[str]
    target_column: str
    id_column: str | None = None
    test: datasets.Dataset | None = None


def load_raft(
    subset: str = "twitter_complaints",
    data_files: DataFiles | None = None,
    *,
    text_column: str | None = None,
    label_column: str = "Label",
    id_column: str | None = "ID",
    class_names: list[str] | None = None,
    unlabeled_class: str | None = "Unlabeled",
    validation_size: float | int = 0.2,
    seed: int = 42,
    cache_dir: str | None = None,
) -> ClassificationData:
    """Load a RAFT subset, from the Hub or from local copies of its files.

    Without ``data_files`` the ``train`` and ``test`` parquet files of the subset are read from the Hub's
    parquet conversion of ``ought/raft`` (this needs network access). With ``data_files``, local CSV, JSON,
    JSON Lines or parquet files with the same schema are read instead.

    Labelled rows of all splits are pooled, then split into ``train`` and a stratified ``validation``; rows
    labelled with ``unlabeled_class`` (all of RAFT's ``test`` split) become ``unlabeled``.

    Args:
        subset (`str`, defaults to `"twitter_complaints"`):
            RAFT subset name.
        data_files (`str`, `list[str]` or `dict[str, str | list[str]]`, *optional*):
            Local files to read instead of the Hub, e.g.
            ``{"train": "train.csv", "test": "test.csv"}``. A single path or list is read as one split.
        text_column (`str`, *optional*):
            Input text column. Defaults to ``"Tweet text"`` for ``twitter_complaints``; required for other
            subsets.
        label_column (`str`, defaults to `"Label"`):
            Label column.
        id_column (`str`, *optional*, defaults to `"ID"`):
            Row id column (needed for RAFT's ``ID,Label`` submission format); `None` if absent.
        class_names (`list[str]`, *optional*):
            Class names in label-id order. Defaults to [`RAFT_CLASS_NAMES`] for ``twitter_complaints``;
            otherwise read from the `ClassLabel` feature of the files.
        unlabeled_class (`str`, *optional*, defaults to `"Unlabeled"`):
            Class marking unlabelled rows.
        validation_size (`float` or `int`, defaults to 0.2):
            Fraction (``0 <= x < 1``) or number of labelled rows held out for validation; 0 for none.
        seed (`int`, defaults to 42):
            Seed of the stratified split.
        cache_dir (`str`, *optional*):
            Cache directory passed to [`datasets.load_dataset`].

    Returns:
        [`ClassificationData`]

    Example:

    ```python
    >>> from softprompt_hf.embedded import EMBEDDED_DATA_FILES
    >>> data = load_raft(data_files=EMBEDDED_DATA_FILES)  # or {"train": "train.csv", "test": "test.csv"}
    >>> data.classes
    ['complaint', 'no complaint']
    >>> len(data.train), len(data.validation), len(data.unlabeled)
    (640, 160, 400)

    ```
    """
    if text_column is None:
        if subset not in _RAFT_TEXT_COLUMNS:
            raise ValueError(
                f"No default text column is known for RAFT subset {subset!r}: pass text_column= with the "
                "name of the column that holds the input text."
            )
        text_column = _RAFT_TEXT_COLUMNS[subset]
    if class_names is None and subset == "twitter_complaints":
        class_names = list(RAFT_CLASS_NAMES)
    if data_files is None:
        data_files = {split: _RAFT_PARQUET_URL.format(subset=subset, split=split) for split in ("train", "test")}
    return load_classification_data(
        data_files,
        text_column=text_column,
        label_column=label_column,
        id_column=id_column,
        class_names=class_names,
        unlabeled_class=unlabeled_class,
        validation_size=validation_size,
        seed=seed,
        cache_dir=cache_dir,
    )


def load_classification_data(
    data: DataFiles | datasets.DatasetDict | datasets.Dataset,
    *,
    text_column: str,
    label_column: str,
    id_column: str | None = None,
    class_names: list[str] | None = None,
    unlabeled_class: str | None = "Unlabeled",
    target_column: str = "text_label",
    validation_size: float | int = 0.2,
    seed: int = 42,
    cache_dir: str | None = None,
) -> ClassificationData:
    """Load classification data, check it, and split it for training and evaluation.

    Labels may be `ClassLabel` ids, plain integers indexing ``class_names``, or strings equal to a class
    name (or to its label text, e.g. ``"no complaint"`` for ``"no_complaint"``). The label column of the
    result is always a `ClassLabel` over all class names.

    Labelled rows of all splits are pooled before the stratified validation split; rows labelled with
    ``unlabeled_class`` form the ``unlabeled`` split and get no target column.

    Args:
        data (`str`, `list[str]`, `dict[str, str | list[str]]`, `datasets.DatasetDict` or `datasets.Dataset`):
            Files to read (format from the extension: ``.csv``, ``.json``, ``.jsonl``, ``.parquet``,
            optionally compressed, or ``hf://`` paths), or datasets already in memory. A single path, list
            or `Dataset` is read as one split named ``train``.
        text_column (`str`):
            Column holding the input text. Every value must be a non-empty string.
        label_column (`str`):
            Column holding the label.
        id_column (`str`, *optional*):
            Column identifying rows; only checked for presence and used in error messages.
        class_names (`list[str]`, *optional*):
            All class names in label-id order, the unlabeled class included if the data uses it. Required
            for plain integer labels. If omitted, read from a `ClassLabel` feature, or, for string labels,
            the sorted distinct labels (the unlabeled class first when present).
        unlabeled_class (`str`, *optional*, defaults to `"Unlabeled"`):
            Class marking unlabelled rows; it is excluded from the task's classes. `None` if the data has no
            such class.
        target_column (`str`, defaults to `"text_label"`):
            Name of the column added to labelled rows, holding the label text to generate.
        validation_size (`float` or `int`, defaults to 0.2):
            Fraction (``0 <= x < 1``) or number of labelled rows held out for validation; 0 for none.
        seed (`int`, defaults to 42):
            Seed of the stratified split; the same seed gives the same split.
        cache_dir (`str`, *optional*):
            Cache directory passed to [`datasets.load_dataset`] when reading files.

    Returns:
        [`ClassificationData`]

    Raises:
        `ValueError`: if a column is missing, a label is not a known class, a text is empty or not a
            string, a class has no labelled row, or ``validation_size`` is not feasible.
        `FileNotFoundError`: if a local file does not exist.

    Example:

    ```python
    >>> from datasets import Dataset
    >>> ds = Dataset.from_dict({"text": ["good", "bad", "fine", "awful"], "y": ["pos", "neg", "pos", "neg"]})
    >>> data = load_classification_data(ds, text_column="text", label_column="y", validation_size=0)
    >>> data.classes, list(data.train["text_label"])
    (['neg', 'pos'], ['pos', 'neg', 'pos', 'neg'])

    ```
    """
    splits = _as_splits(data, cache_dir=cache_dir)
    _check_columns(splits, text_column, label_column, id_column, target_column)
    all_names = _resolve_class_names(splits, label_column, class_names, unlabeled_class)
    unlabeled_id = all_names.index(unlabeled_class) if unlabeled_class in all_names else None
    task_ids = [i for i in range(len(all_names)) if i != unlabeled_id]

    labelled_parts: list[datasets.Dataset] = []
    unlabeled_parts: list[datasets.Dataset] = []
    for split, dataset in splits.items():
        _check_texts(dataset, split, text_column, id_column)
        dataset, label_ids = _encode_labels(dataset, split, label_column, all_names, id_column)
        unlabeled_rows = [row for row, label in enumerate(label_ids) if label == unlabeled_id]
        labelled_rows = [row for row, label in enumerate(label_ids) if label != unlabeled_id]
        if labelled_rows:
            labelled_parts.append(dataset.select(labelled_rows))
        if unlabeled_rows:
            unlabeled_parts.append(dataset.select(unlabeled_rows))

    if not labelled_parts:
        raise ValueError(
            f"No labelled rows found in splits {list(splits)}: every row is labelled {unlabeled_class!r}. "
            "Training needs rows labelled with one of the task's classes "
            f"{[all_names[i] for i in task_ids]}."
        )
    labelled = _concatenate(labelled_parts, what="the labelled rows of all splits")
    unlabeled = _concatenate(unlabeled_parts, what="the unlabeled rows of all splits") if unlabeled_parts else None

    counts = np.bincount(np.asarray(list(labelled[label_column]), dtype=np.int64), minlength=len(all_names))
    missing = [all_names[i] for i in task_ids if counts[i] == 0]
    if missing:
        raise ValueError(
            f"Classes {missing} have no labelled row, so the model could never learn them. Add labelled "
            f"examples of them, or remove them from class_names (got {all_names})."
        )
    if len(task_ids) < 2:
        raise ValueError(
            f"A classification task needs at least 2 classes besides the unlabeled class; got "
            f"{[all_names[i] for i in task_ids]}. Check label_column={label_column!r} and class_names."
        )

    targets = [label_text(all_names[label]) for label in labelled[label_column]]
    labelled = labelled.add_column(target_column, targets)

    if validation_count(validation_size, len(labelled), len(task_ids)) == 0:
        train, validation = labelled, None
    else:
        train, validation = stratified_split(labelled, label_column, validation_size, seed)

    logger.info(
        "Loaded %d labelled rows (%d train, %d validation) over classes %s, and %d unlabeled rows.",
        len(labelled),
        len(train),
        0 if validation is None else len(validation),
        [label_text(all_names[i]) for i in task_ids],
        0 if unlabeled is None else len(unlabeled),
    )
    return ClassificationData(
        train=train,
        validation=validation,
        unlabeled=unlabeled,
        classes=[label_text(all_names[i]) for i in task_ids],
        class_names=[all_names[i] for i in task_ids],
        text_column=text_column,
        label_column=label_column,
        target_column=target_column,
        id_column=id_column,
        unlabeled_class=unlabeled_class if unlabeled_id is not None else None,
    )


def load_text_data(
    data: DataFiles | datasets.DatasetDict | datasets.Dataset,
    *,
    source_columns: str | Sequence[str],
    target_column: str,
    id_column: str | None = None,
    validation_size: float | int = 0.1,
    seed: int = 42,
    cache_dir: str | None = None,
) -> TextData:
    """Load text-to-text data (summaries, answers, data-to-text), check it, and split it for training.

    The data may have a ``train`` split (required), a validation split and a ``test`` split, and no other. The
    validation split is the one named ``validation``, ``valid``, ``val`` or ``dev`` (at most one of them), used as
    it is; without one, a seeded random hold-out of the train rows becomes the validation split. Rows keep their
    order in every split, and all their columns.

    Source values must be non-empty strings in every split. Targets must be non-empty strings in ``train`` and
    validation; the ``test`` split may lack the target column or leave targets missing (rows to predict), but a
    target it has must be a string.

    Args:
        data (`str`, `list[str]`, `dict[str, str | list[str]]`, `datasets.DatasetDict` or `datasets.Dataset`):
            Files to read (format from the extension: ``.csv``, ``.json``, ``.jsonl``, ``.parquet``,
            optionally compressed, or ``hf://`` paths), or datasets already in memory. A single path, list
            or `Dataset` is read as one split named ``train``.
        source_columns (`str` or `list[str]`):
            Column(s) holding the input texts a prompt template reads, e.g. ``["title", "abstract"]``.
        target_column (`str`):
            Column holding the reference text the model must generate.
        id_column (`str`, *optional*):
            Column identifying rows; only checked for presence and used in error messages.
        validation_size (`float` or `int`, defaults to 0.1):
            Fraction (``0 <= x < 1``, rounded half up, at least one row if positive) or number of train rows held
            out for validation when the data has no validation split; 0 for none. Ignored when the data has a
            validation split.
        seed (`int`, defaults to 42):
            Seed of the hold-out; the same seed gives the same split.
        cache_dir (`str`, *optional*):
            Cache directory passed to [`datasets.load_dataset`] when reading files.

    Returns:
        [`TextData`]

    Raises:
        `ValueError`: if a file is not UTF-8 or has no rows, a split is unknown or empty, a column is missing, a
            source is empty or not a string, a train or validation target is missing, empty or not a string, or
            ``validation_size`` would leave no train row.
        `FileNotFoundError`: if a local file does not exist.

    Example:

    ```python
    >>> from datasets import Dataset
    >>> ds = Dataset.from_dict(
    ...     {
    ...         "title": ["Cats", "Dogs", "Birds", "Fish"],
    ...         "abstract": ["Cats purr.", "Dogs bark.", "Birds sing.", "Fish swim."],
    ...         "summary": ["purring", "barking", "singing", "swimming"],
    ...     }
    ... )
    >>> data = load_text_data(ds, source_columns=["title", "abstract"], target_column="summary", validation_size=1)
    >>> len(data.train), len(data.validation), data.source_columns, data.train.column_names
    (3, 1, ['title', 'abstract'], ['title', 'abstract', 'summary'])

    ```
    """
    sources = _source_column_list(source_columns, target_column)
    splits = _as_splits(data, cache_dir=cache_dir)
    train, validation, test, validation_name = _text_splits(splits)
    named = {"train": train, validation_name: validation, "test": test}
    id_required = [id_column] if id_column is not None else []
    for split, dataset in named.items():
        if dataset is None:
            continue
        if len(dataset) == 0:
            raise ValueError(f"Split {split!r} has no rows: add examples to it, or leave the split out.")
        required = sources + ([] if split == "test" else [target_column]) + id_required
        _require_columns(dataset, split, required, "source_columns=, target_column= or id_column=")
        for column in sources:
            _check_texts(
                dataset, split, column, id_column, role="source column", argument="{column!r} in source_columns"
            )
        if target_column in dataset.column_names:
            _check_targets(dataset, split, target_column, id_column, required=split != "test")

    n_validation = requested_count(validation_size, len(train))  # checked even when a validation split is given
    if validation is None:
        if n_validation >= len(train):
            problem = (
                f"is larger than the data: the train split has {len(train)} rows"
                if n_validation > len(train)
                else f"takes all {len(train)} train rows and leaves none to train on"
            )
            raise ValueError(
                f"validation_size={validation_size!r} asks for {n_validation} validation rows, which {problem}. Use a "
                "smaller validation_size (0 for no validation split), or give a validation split in the data."
            )
        if n_validation > 0:
            held_out = np.random.default_rng(seed).permutation(len(train))[:n_validation]
            chosen = set(held_out.tolist())
            validation = train.select(sorted(chosen))
            train = train.select([row for row in range(len(train)) if row not in chosen])
    elif validation_size:
        logger.info(
            "Using the data's %r split for validation; validation_size=%r is ignored.", validation_name, validation_size
        )

    logger.info(
        "Loaded text-to-text data: %d train, %d validation and %d test rows; sources %s, target %r.",
        len(train),
        0 if validation is None else len(validation),
        0 if test is None else len(test),
        sources,
        target_column,
    )
    return TextData(
        train=train,
        validation=validation,
        source_columns=sources,
        target_column=target_column,
        id_column=id_column,
        test=test,
    )


def _source_column_list(source_columns: str | Sequence[str], target_column: str) -> list[str]:
    sources = [source_columns] if isinstance(source_columns, str) else list(source_columns)
    if not sources or not all(isinstance(column, str) and column for column in sources):
        raise ValueError(
            f"source_columns must be a column name or a non-empty list of column names; got {source_columns!r}."
        )
    if len(set(sources)) != len(sources):
        raise ValueError(f"source_columns {sources} name a column twice; name each column once.")
    if not isinstance(target_column, str) or not target_column:
        raise ValueError(f"target_column must be a column name; got {target_column!r}.")
    if target_column in sources:
        raise ValueError(
            f"target_column {target_column!r} is also in source_columns {sources}: the model would read the text it "
            "must generate. Remove it from source_columns, or pass the right target_column=."
        )
    return sources


def _text_splits(
    splits: dict[str, datasets.Dataset],
) -> tuple[datasets.Dataset, datasets.Dataset | None, datasets.Dataset | None, str]:
    """The train, validation and test splits of text-to-text data, and the name the validation split has in it."""
    known = ("train", "test", *_VALIDATION_SPLIT_NAMES)
    unknown = [split for split in splits if split not in known]
    if unknown:
        raise ValueError(
            f"Unknown split(s) {unknown} (the data has {list(splits)}): text-to-text data has a 'train' split, "
            f"optionally a validation split (named one of {list(_VALIDATION_SPLIT_NAMES)}) and a 'test' split. "
            "Rename the splits, or pass only those to use."
        )
    if "train" not in splits:
        raise ValueError(
            f"The data has no 'train' split (it has {list(splits)}). Name the training rows' split 'train', or pass "
            "a single file or Dataset (read as 'train')."
        )
    given = [split for split in _VALIDATION_SPLIT_NAMES if split in splits]
    if len(given) > 1:
        raise ValueError(
            f"The data has several validation splits {given}; keep one of them (or merge them into one split)."
        )
    validation_name = given[0] if given else "validation"
    return splits["train"], splits.get(validation_name), splits.get("test"), validation_name


def _target_type_problem(value: Any) -> str | None:
    if _is_missing(value) or isinstance(value, str):
        return None
    return f"is not a string (got {type(value).__name__} {value!r})"


def _target_empty_problem(value: Any) -> str | None:
    if _is_missing(value):
        return "is missing"
    return None if value.strip() else "is empty or whitespace-only"


def _check_targets(
    dataset: datasets.Dataset, split: str, target_column: str, id_column: str | None, required: bool
) -> None:
    """Targets are strings; in the splits trained or scored on (``required``), non-empty ones."""
    details = _bad_rows(dataset, target_column, _target_type_problem, id_column)
    if details is not None:
        raise ValueError(
            f"Split {split!r}: target column {target_column!r} must hold the texts to generate, but {details}. "
            f"Convert the column to strings before loading (e.g. dataset.cast_column({target_column!r}, "
            f"datasets.Value('string'))), or check that target_column={target_column!r} is the right column."
        )
    if not required:
        return
    details = _bad_rows(dataset, target_column, _target_empty_problem, id_column)
    if details is not None:
        raise ValueError(
            f"Split {split!r}: every row trained or scored on needs a target, but in column {target_column!r} "
            f"{details}. Drop these rows before loading (e.g. dataset.filter(lambda row: "
            f"isinstance(row[{target_column!r}], str) and row[{target_column!r}].strip())), or fill them in."
        )


def _as_splits(
    data: DataFiles | datasets.DatasetDict | datasets.Dataset, cache_dir: str | None
) -> dict[str, datasets.Dataset]:
    if isinstance(data, datasets.Dataset):
        return {"train": data}
    if isinstance(data, datasets.DatasetDict):
        if not data:
            raise ValueError("The DatasetDict is empty: it has no split to load.")
        return dict(data)
    if isinstance(data, (datasets.IterableDataset, datasets.IterableDatasetDict)):
        raise ValueError(
            "Streaming (iterable) datasets cannot be checked and split. Load them without streaming=True, or "
            "pass the data files."
        )
    return load_files(data, cache_dir)


def _check_columns(
    splits: Mapping[str, datasets.Dataset],
    text_column: str,
    label_column: str,
    id_column: str | None,
    target_column: str,
) -> None:
    if text_column == label_column:
        raise ValueError(f"text_column and label_column are both {text_column!r}; they must differ.")
    required = [text_column, label_column] + ([id_column] if id_column is not None else [])
    for split, dataset in splits.items():
        _require_columns(dataset, split, required, "text_column=, label_column= or id_column=")
        if target_column in dataset.column_names:
            raise ValueError(
                f"Split {split!r} already has a column {target_column!r}, which would be overwritten by the "
                "label text. Rename or remove it, or pass another target_column=."
            )


def _require_columns(dataset: datasets.Dataset, split: str, required: Sequence[str], arguments: str) -> None:
    """Refuse a split that lacks a required column, listing the columns it has; ``arguments`` names the arguments
    that choose the columns (``"text_column= or id_column="``)."""
    missing = [column for column in required if column not in dataset.column_names]
    if missing:
        raise ValueError(
            f"Split {split!r} has no column(s) {missing}; available columns: {dataset.column_names}. Pass the right "
            f"names as {arguments} (id_column=None if the data has no id column)."
        )


def _describe_row(dataset: datasets.Dataset, row: int, id_column: str | None) -> str:
    if id_column is None:
        return f"row {row}"
    return f"row {row} ({id_column} {dataset[row][id_column]!r})"


def _is_missing(value: Any) -> bool:
    """None, or the NaN that pandas puts in an empty cell."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _text_problem(value: Any) -> str | None:
    """What is wrong with a value that must be a non-empty string, or None."""
    if isinstance(value, str):
        return None if value.strip() else "is empty or whitespace-only"
    return f"is not a string (got {type(value).__name__} {value!r})"


def _bad_rows(
    dataset: datasets.Dataset, column: str, problem_of: Callable[[Any], str | None], id_column: str | None
) -> str | None:
    """The rows of ``column`` whose value has a problem, described for an error message (the first few, then a
    count), or None when there are none."""
    bad: list[tuple[int, str]] = []
    n_bad = 0
    for row, value in enumerate(dataset[column]):
        problem = problem_of(value)
        if problem is None:
            continue
        n_bad += 1
        if len(bad) < _MAX_REPORTED:
            bad.append((row, problem))
    if not n_bad:
        return None
    details = "; ".join(f"{_describe_row(dataset, row, id_column)} {problem}" for row, problem in bad)
    more = f" (and {n_bad - len(bad)} more rows)" if n_bad > len(bad) else ""
    return details + more


def _check_texts(
    dataset: datasets.Dataset,
    split: str,
    text_column: str,
    id_column: str | None,
    role: str = "text column",
    argument: str = "text_column={column!r}",
) -> None:
    """Refuse values of ``text_column`` that are not non-empty strings, naming the rows; ``role`` and ``argument``
    say how the column was chosen (``"source column"``, ``"source_columns=[...]"``)."""
    details = _bad_rows(dataset, text_column, _text_problem, id_column)
    if details is not None:
        raise ValueError(
            f"Split {split!r}: {role} {text_column!r} must hold non-empty strings, but {details}. "
            "Fill in or drop these rows before loading (e.g. dataset.filter(lambda row: "
            f"isinstance(row[{text_column!r}], str) and row[{text_column!r}].strip())), or check that "
            f"{argument.format(column=text_column)} is the right column."
        )


def _resolve_class_names(
    splits: Mapping[str, datasets.Dataset],
    label_column: str,
    class_names: list[str] | None,
    unlabeled_class: str | None,
) -> list[str]:
    """All class names in label-id order (the unlabeled class included when the data has one)."""
    feature_names = [
        dataset.features[label_column].names
        for dataset in splits.values()
        if isinstance(dataset.features[label_column], datasets.ClassLabel)
    ]
    if class_names is not None:
        names = list(class_names)
        if not names or not all(isinstance(name, str) and name for name in names):
            raise ValueError(f"class_names must be a non-empty list of non-empty strings; got {class_names!r}.")
        texts = [label_text(name) for name in names]
        if len(set(texts)) != len(texts):
            raise ValueError(
                f"class_names {names} contain duplicates (after replacing '_' by ' ': {texts}); each class "
                "needs a distinct label text."
            )
        for feature in feature_names:
            if [label_text(name) for name in feature] != texts:
                raise ValueError(
                    f"class_names {names} do not match the ClassLabel names {feature} of column "
                    f"{label_column!r}. Pass class_names=None to use the dataset's names, or fix the list."
                )
        return names
    if feature_names:
        for feature in feature_names[1:]:
            if feature != feature_names[0]:
                raise ValueError(
                    f"Splits disagree on the ClassLabel names of column {label_column!r}: {feature_names[0]} "
                    f"vs {feature}. Pass class_names= explicitly."
                )
        return list(feature_names[0])

    values = {value for dataset in splits.values() for value in dataset[label_column] if value is not None}
    strings = {value for value in values if isinstance(value, str)}
    if not strings:
        raise ValueError(
            f"Column {label_column!r} holds integer ids (e.g. {sorted(values, key=repr)[:_MAX_REPORTED]}) "
            "but no class names are known. Pass class_names= with the class name of each id, in id order."
        )
    task_names = sorted(strings - {unlabeled_class})
    return ([unlabeled_class] if unlabeled_class in strings else []) + task_names


def _encode_labels(
    dataset: datasets.Dataset, split: str, label_column: str, names: list[str], id_column: str | None
) -> tuple[datasets.Dataset, list[int]]:
    """Replace the label column with a ClassLabel over ``names``; return the dataset and the label ids."""
    feature = dataset.features[label_column]
    if isinstance(feature, datasets.ClassLabel) and feature.names == names:
        ids = list(dataset[label_column])
        # ClassLabel columns use -1 for a missing label: such rows go through the checks below.
        if all(0 <= label_id < len(names) for label_id in ids):
            return dataset, ids

    lookup = {label_text(name): i for i, name in enumerate(names)}
    lookup.update({name: i for i, name in enumerate(names)})
    ids = []
    bad_values: dict[str, list[int]] = {}
    for row, value in enumerate(dataset[label_column]):
        label_id: int | None = None
        if isinstance(value, str):
            label_id = lookup.get(value)
        elif isinstance(value, Integral) and not isinstance(value, bool):
            label_id = int(value) if 0 <= int(value) < len(names) else None
        elif isinstance(value, float) and value.is_integer():
            # A missing cell makes pandas read an integer CSV column as float.
            label_id = int(value) if 0 <= value < len(names) else None
        if label_id is None:
            bad_values.setdefault(repr(value), []).append(row)
            label_id = -1
        ids.append(label_id)
    if bad_values:
        shown = list(bad_values.items())[:_MAX_REPORTED]
        details = "; ".join(
            f"{value} in {len(rows)} row(s), first {_describe_row(dataset, rows[0], id_column)}"
            for value, rows in shown
        )
        more = f" (and {len(bad_values) - len(shown)} more values)" if len(bad_values) > len(shown) else ""
        raise ValueError(
            f"Split {split!r}: column {label_column!r} has labels outside the class list {names}: "
            f"{details}{more}. Labels must be a class name or an integer id 0..{len(names) - 1}; fix the "
            "data or pass the full class list as class_names=."
        )

    order = dataset.column_names
    encoded = dataset.remove_columns(label_column).add_column(
        label_column, ids, feature=datasets.ClassLabel(names=names)
    )
    return encoded.select_columns(order), ids


def _concatenate(parts: list[datasets.Dataset], what: str) -> datasets.Dataset:
    if len(parts) == 1:
        return parts[0]
    features = parts[0].features
    try:
        aligned = [part if part.features == features else part.cast(features) for part in parts]
        return datasets.concatenate_datasets(aligned)
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"Cannot pool {what}: their columns differ ({[part.features for part in parts]}). Give every "
            f"split the same columns and types. ({err})"
        ) from err
