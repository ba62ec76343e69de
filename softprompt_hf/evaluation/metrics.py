"""Scoring generated labels (accuracy, RAFT's macro-F1, invalid outputs) and writing predictions to disk."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from transformers.utils import logging

from ..core.files import atomic_open
from ..data.loading import label_text

__all__ = [
    "INVALID",
    "INVALID_COLUMN",
    "ClassificationReport",
    "check_label_set",
    "classification_report",
    "match_label",
    "normalize_label",
    "write_csv_rows",
    "write_predictions",
    "write_raft_submission",
]

logger = logging.get_logger(__name__)

INVALID = None
"""What [`match_label`] returns for a text that matches no label."""

INVALID_COLUMN = "<invalid>"
"""Column of [`ClassificationReport.confusion`] counting predictions that matched no label. The brackets keep
it apart from a real label such as ``"invalid"``."""


def normalize_label(text: str) -> str:
    """Normalises generated or gold label text for comparison: case, inner whitespace, trailing punctuation."""
    return " ".join(text.lower().split()).rstrip(".!?,;:").strip()


# How many offending values an error message lists before summarising the rest.
_MAX_REPORTED = 5
_WRITERS_BY_EXTENSION = (".csv", ".jsonl")
# Plain "\n", as pandas' to_csv writes, rather than the csv module's "\r\n".
_CSV_LINE_END = "\n"


def check_label_set(labels: Sequence[str]) -> list[str]:
    """Validate a label set and return it as a list.

    Labels are compared after [`normalize_label`] (lowercase, collapsed whitespace, no trailing punctuation),
    so two labels that normalise to the same text could never be told apart in generated output.

    Args:
        labels (`Sequence[str]`):
            The label texts, e.g. ``["complaint", "no complaint"]``.

    Returns:
        `list[str]`: ``list(labels)``, spelling unchanged.

    Raises:
        `ValueError`: If the set is empty or a single string, if a label is not a string or is empty once
        normalised, or if two labels normalise to the same text.

    Example:

    ```python
    >>> check_label_set(("complaint", "no complaint"))
    ['complaint', 'no complaint']

    ```
    """
    if isinstance(labels, str):
        raise ValueError(
            f"labels must be a sequence of label texts, not the single string {labels!r}; wrap it in a list."
        )
    labels = list(labels)
    if not labels:
        raise ValueError(
            "The label set is empty; pass the label texts of the task, e.g. ['complaint', 'no complaint']."
        )
    seen: dict[str, str] = {}
    for index, label in enumerate(labels):
        if not isinstance(label, str):
            raise ValueError(f"Label {index} is {label!r} ({type(label).__name__}); labels must be strings.")
        normalized = normalize_label(label)
        if not normalized:
            raise ValueError(
                f"Label {index} ({label!r}) is empty once whitespace and trailing punctuation are removed; "
                "give every class a non-empty label text."
            )
        if normalized in seen:
            raise ValueError(
                f"Labels {seen[normalized]!r} and {label!r} are the same once normalised ({normalized!r}), so "
                "generated text could not tell them apart; rename one of them."
            )
        seen[normalized] = label
    return labels


def match_label(text: str | None, labels: Sequence[str]) -> str | None:
    """Return the label a generated text names, or [`INVALID`] (`None`) if it names none.

    The text and each label are compared after [`normalize_label`]; only an exact match counts, so a text that
    merely starts with a label (``"no complaint or"``) is invalid.

    Args:
        text (`str`, *optional*):
            Generated (or gold) text. `None` is returned unchanged as invalid.
        labels (`Sequence[str]`):
            The label set, checked with [`check_label_set`].

    Returns:
        `str` or `None`: The matching label as spelled in ``labels``, or `None`.

    Example:

    ```python
    >>> match_label("  No   Complaint. ", ["complaint", "no complaint"])
    'no complaint'
    >>> match_label("no complaint or", ["complaint", "no complaint"]) is None
    True

    ```
    """
    if text is None:
        return INVALID
    return _label_lookup(labels).get(normalize_label(text), INVALID)


def _label_lookup(labels: Sequence[str]) -> dict[str, str]:
    return {normalize_label(label): label for label in check_label_set(labels)}


@dataclasses.dataclass
class ClassificationReport:
    """Accuracy, macro-F1 and invalid-output rate of predicted labels against gold labels.

    Build it with [`classification_report`]. Predictions that match no label are *invalid*: they count as
    wrong for accuracy and as a false negative of their gold class for F1 (they are nobody's false positive).

    Per-class scores follow scikit-learn's ``zero_division=0`` convention: a precision or recall whose
    denominator is zero is 0, and F1 is 0 when precision and recall are both 0. Macro-F1 (RAFT's metric) is
    the unweighted mean of the per-class F1 over the whole label set, so a class that is never predicted, or
    has no gold example in the evaluated rows, contributes an F1 of 0.

    Args:
        accuracy (`float`):
            Fraction of predictions equal to their gold label.
        macro_f1 (`float`):
            Unweighted mean of the per-class F1 over ``labels``.
        invalid_rate (`float`):
            Fraction of predictions that matched no label.
        per_class (`dict[str, dict[str, float]]`):
            For each label: ``precision``, ``recall``, ``f1`` and ``support`` (number of gold examples).
        confusion (`dict[str, dict[str, int]]`):
            ``confusion[gold][predicted]`` counts, with every label as a row and as a column, plus an
            [`INVALID_COLUMN`] column for invalid predictions.
        num_examples (`int`):
            Number of scored examples.
        labels (`list[str]`):
            The label set, in the order given.

    Example:

    ```python
    >>> report = classification_report(
    ...     gold=["complaint", "no complaint", "no complaint", "complaint"],
    ...     predicted=["Complaint.", "no complaint", "maybe", "no complaint"],
    ...     labels=["complaint", "no complaint"],
    ... )
    >>> report.accuracy, report.invalid_rate
    (0.5, 0.25)
    >>> report.confusion["no complaint"]
    {'complaint': 0, 'no complaint': 1, '<invalid>': 1}
    >>> {key: round(value, 3) for key, value in report.as_metrics().items()}
    {'accuracy': 0.5, 'f1': 0.583, 'invalid_rate': 0.25, 'f1_complaint': 0.667, 'f1_no_complaint': 0.5}

    ```
    """

    accuracy: float
    macro_f1: float
    invalid_rate: float
    per_class: dict[str, dict[str, float]]
    confusion: dict[str, dict[str, int]]
    num_examples: int
    labels: list[str]

    def as_metrics(self, prefix: str = "") -> dict[str, float]:
        """Flatten the report into the float metrics ``Trainer`` logs.

        Keys are ``accuracy``, ``f1`` (macro), ``invalid_rate`` and ``f1_<label>`` for each label, with runs
        of whitespace in the label replaced by ``_``. Return this from ``compute_metrics`` so the values are
        logged and can serve as ``metric_for_best_model`` (e.g. ``"f1"``, which ``Trainer`` prefixes itself).

        Args:
            prefix (`str`, defaults to `""`):
                Prepended to every key followed by ``_``, like ``Trainer``'s ``metric_key_prefix``: ``"test"``
                gives ``test_accuracy``.

        Returns:
            `dict[str, float]`

        Raises:
            `ValueError`: If two labels give the same key (e.g. ``"no complaint"`` and ``"no_complaint"``).
        """
        if prefix and not prefix.endswith("_"):
            prefix += "_"
        metrics = {
            f"{prefix}accuracy": self.accuracy,
            f"{prefix}f1": self.macro_f1,
            f"{prefix}invalid_rate": self.invalid_rate,
        }
        for label in self.labels:
            key = f"{prefix}f1_{'_'.join(label.split())}"
            if key in metrics:
                raise ValueError(
                    f"Label {label!r} gives the metric key {key!r}, which another key already uses; rename the "
                    "label so that labels stay distinct once spaces become underscores."
                )
            metrics[key] = self.per_class[label]["f1"]
        return metrics


def classification_report(
    gold: Sequence[str],
    predicted: Sequence[str | None],
    labels: Sequence[str],
) -> ClassificationReport:
    """Score predicted labels against gold labels.

    Both gold and predicted values are matched to ``labels`` with [`match_label`], so raw generated texts can be
    passed as they are; a prediction that matches no label (or is `None`) is invalid. See
    [`ClassificationReport`] for how invalid predictions and empty classes are scored, and for an example.

    Args:
        gold (`Sequence[str]`):
            Gold label texts; each must match a label.
        predicted (`Sequence[str | None]`):
            Predicted (generated) label texts, `None` for no prediction, one per gold label.
        labels (`Sequence[str]`):
            The label set, checked with [`check_label_set`]. All its labels are scored, present or not.

    Returns:
        [`ClassificationReport`]

    Raises:
        `ValueError`: If the label set is invalid, the sequences are empty or differ in length, a gold value
        matches no label, or a value is neither a string nor (for predictions) `None`.
    """
    if isinstance(gold, str) or isinstance(predicted, str):
        raise ValueError("gold and predicted must be sequences of label texts, not single strings; wrap them in lists.")
    labels = check_label_set(labels)
    if len(gold) != len(predicted):
        raise ValueError(
            f"Got {len(gold)} gold labels but {len(predicted)} predictions; pass exactly one prediction per example."
        )
    if not gold:
        raise ValueError("Nothing to score: gold and predicted are empty.")
    lookup = _label_lookup(labels)
    confusion = {row: dict.fromkeys([*labels, INVALID_COLUMN], 0) for row in labels}
    unknown_gold: list[str] = []
    for index, (gold_text, predicted_text) in enumerate(zip(gold, predicted, strict=True)):
        if not isinstance(gold_text, str):
            raise ValueError(
                f"Gold label {index} is {gold_text!r} ({type(gold_text).__name__}); gold labels must be strings."
            )
        if predicted_text is not None and not isinstance(predicted_text, str):
            raise ValueError(
                f"Prediction {index} is {predicted_text!r} ({type(predicted_text).__name__}); predictions must be "
                "label texts or None."
            )
        gold_label = lookup.get(normalize_label(gold_text))
        if gold_label is None:
            unknown_gold.append(gold_text)
            continue
        predicted_label = INVALID if predicted_text is None else lookup.get(normalize_label(predicted_text), INVALID)
        confusion[gold_label][INVALID_COLUMN if predicted_label is None else predicted_label] += 1
    if unknown_gold:
        raise ValueError(
            f"{len(unknown_gold)} gold label(s) match no label of {labels}: {_summarize(sorted(set(unknown_gold)))}. "
            "Pass the label set the gold labels come from (label texts, e.g. 'no complaint', not class names like "
            "'no_complaint')."
        )

    num_examples = len(gold)
    per_class = {label: _class_scores(confusion, label) for label in labels}
    correct = sum(confusion[label][label] for label in labels)
    invalid = sum(row[INVALID_COLUMN] for row in confusion.values())
    return ClassificationReport(
        accuracy=correct / num_examples,
        macro_f1=sum(scores["f1"] for scores in per_class.values()) / len(labels),
        invalid_rate=invalid / num_examples,
        per_class=per_class,
        confusion=confusion,
        num_examples=num_examples,
        labels=labels,
    )


def _class_scores(confusion: dict[str, dict[str, int]], label: str) -> dict[str, float]:
    true_positives = confusion[label][label]
    support = sum(confusion[label].values())
    predicted_as_label = sum(row[label] for row in confusion.values())
    precision = _safe_divide(true_positives, predicted_as_label)
    recall = _safe_divide(true_positives, support)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def _safe_divide(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def write_predictions(path: str | os.PathLike, rows: Sequence[Mapping[str, Any] | Any]) -> Path:
    """Write one row per example (e.g. ``id``, ``text``, ``gold``, ``predicted``, ``scores``) to a file.

    The format follows the extension:

    - ``.jsonl``: one JSON object per line, values as given (nested ``scores`` stay a mapping);
    - ``.csv``: one column per key, in order of first appearance; a ``scores`` mapping (label -> score) is
      flattened into ``score_<label>`` columns, left empty where a row's ``scores`` is `None`; `None` becomes an
      empty cell and other nested values are written as JSON.

    The file is written to a temporary file in the same folder and then renamed over ``path``, so readers never
    see a partial file. Missing parent folders are created. Call this on the main process only.

    Args:
        path (`str` or `os.PathLike`):
            Output file, ending in ``.csv`` or ``.jsonl``.
        rows (`Sequence[Mapping[str, Any]]`):
            The rows to write: mappings, or dataclass instances such as [`~evaluation.Prediction`].

    Returns:
        `Path`: The written file.

    Raises:
        `ValueError`: If the extension is not ``.csv`` or ``.jsonl``, or a row is neither a mapping nor a
        dataclass instance.

    Example:

    ```python
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> rows = [{"id": 0, "gold": "complaint", "predicted": "complaint", "scores": {"complaint": -0.1}}]
    >>> write_predictions(f"{folder}/predictions.csv", rows).read_text().splitlines()
    ['id,gold,predicted,score_complaint', '0,complaint,complaint,-0.1']

    ```
    """
    path = Path(path)
    extension = path.suffix.lower()
    if extension not in _WRITERS_BY_EXTENSION:
        raise ValueError(
            f"Cannot tell the format of {str(path)!r} from its extension {path.suffix!r}; use one of "
            f"{list(_WRITERS_BY_EXTENSION)}."
        )
    records = [_as_record(index, row) for index, row in enumerate(rows)]
    with atomic_open(path) as file:
        if extension == ".jsonl":
            for record in records:
                file.write(json.dumps(record, ensure_ascii=False, default=_json_default) + "\n")
        else:
            write_csv_rows(file, records)
    return path


def _as_record(index: int, row: Any) -> dict[str, Any]:
    if isinstance(row, Mapping):
        return dict(row)
    if dataclasses.is_dataclass(row) and not isinstance(row, type):
        return dataclasses.asdict(row)
    raise ValueError(
        f"Row {index} is a {type(row).__name__}; each row must be a mapping of column to value or a dataclass instance."
    )


def write_csv_rows(file: IO[str], rows: Sequence[dict[str, Any]]) -> None:
    """Writes ``rows`` as CSV to an open text file, ``write_predictions``' layout (``scores`` as ``score_<label>``)."""
    flat_rows = [_flatten_scores(row) for row in rows]
    columns = list(dict.fromkeys(column for row in flat_rows for column in row))
    writer = csv.DictWriter(file, fieldnames=columns, restval="", lineterminator=_CSV_LINE_END)
    if columns:
        writer.writeheader()
    for row in flat_rows:
        writer.writerow({column: _csv_cell(value) for column, value in row.items()})


def _flatten_scores(row: Mapping[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for column, value in row.items():
        if column == "scores" and (value is None or isinstance(value, Mapping)):
            # A None still gets its columns from the other rows, via DictWriter's restval.
            flat.update({f"score_{label}": score for label, score in (value or {}).items()})
        else:
            flat[column] = value
    return flat


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(value, ensure_ascii=False, default=_json_default)
    return value


def _json_default(value: Any) -> Any:
    # numpy and torch scalars and arrays, as they come out of a model.
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def write_raft_submission(
    path: str | os.PathLike,
    ids: Sequence[int | str],
    predicted: Sequence[str | None],
    class_names: Sequence[str],
    *,
    fallback: str | None = None,
) -> Path:
    """Write predictions in RAFT's submission format: a CSV with header ``ID,Label``, one row per id.

    Each prediction (a generated label text such as ``"no complaint"``) is matched with [`match_label`] to the
    label texts of ``class_names`` (underscores read as spaces, see [`label_text`]) and written as the original
    class name (``"no_complaint"``). Pass the task's classes without the unlabeled one, e.g.
    ``data.class_names`` of a [`ClassificationData`].

    A prediction that matches no class is an error unless ``fallback`` names the class to write instead (for
    example the majority class of the training data); how many predictions fell back is logged as a warning.
    The file is written atomically, like [`write_predictions`]. Call this on the main process only.

    Args:
        path (`str` or `os.PathLike`):
            Output CSV file; missing parent folders are created.
        ids (`Sequence[int | str]`):
            The ``ID`` of each test row.
        predicted (`Sequence[str | None]`):
            Predicted label texts (or `None`), one per id.
        class_names (`Sequence[str]`):
            The class names as written in the data, e.g. ``["complaint", "no_complaint"]``.
        fallback (`str`, *optional*):
            A class name from ``class_names`` written for predictions that match no class. By default such
            predictions raise an error.

    Returns:
        `Path`: The written file.

    Raises:
        `ValueError`: If ``ids`` is empty, has duplicates or differs in length from ``predicted``, if the class
        names are invalid or ``fallback`` is not one of them, or if a prediction matches no class and there is no
        ``fallback``.

    Example:

    ```python
    >>> import tempfile
    >>> path = f"{tempfile.mkdtemp()}/twitter_complaints.csv"
    >>> write_raft_submission(path, [50, 51], ["no complaint", "Complaint"], ["complaint", "no_complaint"]).name
    'twitter_complaints.csv'
    >>> print(open(path).read().strip())
    ID,Label
    50,no_complaint
    51,complaint

    ```
    """
    if isinstance(predicted, str):
        raise ValueError("predicted must be a sequence of label texts, not a single string; wrap it in a list.")
    class_names = check_label_set(class_names)
    # "no_complaint" and "no complaint" are distinct names but the same label text.
    lookup = _label_lookup([label_text(name) for name in class_names])
    name_of_text = dict(zip(lookup.values(), class_names, strict=True))
    if fallback is not None and fallback not in class_names:
        raise ValueError(f"fallback={fallback!r} is not a class name; use one of {class_names}.")
    if len(ids) != len(predicted):
        raise ValueError(f"Got {len(ids)} ids but {len(predicted)} predictions; pass exactly one prediction per id.")
    if not ids:
        raise ValueError("Nothing to submit: ids and predicted are empty.")
    duplicates = sorted(str(id_) for id_, count in Counter(ids).items() if count > 1)
    if duplicates:
        raise ValueError(f"Duplicate IDs in the submission: {_summarize(duplicates)}; each test row must appear once.")

    labels: list[str] = []
    invalid_ids: list[str] = []
    for id_, text in zip(ids, predicted, strict=True):
        matched = lookup.get(normalize_label(text)) if isinstance(text, str) else INVALID
        if matched is None:
            invalid_ids.append(str(id_))
            if fallback is not None:
                labels.append(fallback)
        else:
            labels.append(name_of_text[matched])
    if invalid_ids and fallback is None:
        raise ValueError(
            f"{len(invalid_ids)} of {len(ids)} predictions match no class of {class_names} (IDs "
            f"{_summarize(invalid_ids)}); pass fallback=<class name> to write that class for them."
        )
    if invalid_ids:
        logger.warning(
            f"{len(invalid_ids)} of {len(ids)} predictions matched no class; wrote the fallback {fallback!r} for them."
        )

    path = Path(path)
    with atomic_open(path) as file:
        writer = csv.writer(file, lineterminator=_CSV_LINE_END)
        writer.writerow(["ID", "Label"])
        writer.writerows(zip(ids, labels, strict=True))
    return path


def _summarize(values: Sequence[str]) -> str:
    shown = ", ".join(repr(value) for value in values[:_MAX_REPORTED])
    hidden = len(values) - _MAX_REPORTED
    return f"{shown} and {hidden} more" if hidden > 0 else shown
