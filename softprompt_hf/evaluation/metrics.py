"""Scoring generated labels: matching outputs to labels, accuracy, RAFT's macro-F1, invalid outputs."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from transformers.utils import logging

__all__ = [
    "INVALID",
    "INVALID_COLUMN",
    "ClassificationReport",
    "check_label_set",
    "classification_report",
    "match_label",
    "label_lookup",
    "normalize_label",
    "summarize_values",
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
    return label_lookup(labels).get(normalize_label(text), INVALID)


def label_lookup(labels: Sequence[str]) -> dict[str, str]:
    """Each label by its normalised text (``normalize_label``), after ``check_label_set``."""
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
    lookup = label_lookup(labels)
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
            f"{len(unknown_gold)} gold label(s) match no label of {labels}: "
            f"{summarize_values(sorted(set(unknown_gold)))}. "
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


def summarize_values(values: Sequence[str]) -> str:
    """The first few ``values`` for an error message, and how many more there are."""
    shown = ", ".join(repr(value) for value in values[:_MAX_REPORTED])
    hidden = len(values) - _MAX_REPORTED
    return f"{shown} and {hidden} more" if hidden > 0 else shown
