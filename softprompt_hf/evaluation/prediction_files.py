"""Predictions written to disk: one row per example (CSV or JSON lines), and RAFT's submission file."""

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
from .metrics import INVALID, check_label_set, label_lookup, normalize_label, summarize_values

__all__ = ["write_csv_rows", "write_predictions", "write_raft_submission"]

logger = logging.get_logger(__name__)

_WRITERS_BY_EXTENSION = (".csv", ".jsonl")
# Plain "\n", as pandas' to_csv writes, rather than the csv module's "\r\n".
_CSV_LINE_END = "\n"


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
    lookup = label_lookup([label_text(name) for name in class_names])
    name_of_text = dict(zip(lookup.values(), class_names, strict=True))
    if fallback is not None and fallback not in class_names:
        raise ValueError(f"fallback={fallback!r} is not a class name; use one of {class_names}.")
    if len(ids) != len(predicted):
        raise ValueError(f"Got {len(ids)} ids but {len(predicted)} predictions; pass exactly one prediction per id.")
    if not ids:
        raise ValueError("Nothing to submit: ids and predicted are empty.")
    duplicates = sorted(str(id_) for id_, count in Counter(ids).items() if count > 1)
    if duplicates:
        raise ValueError(
            f"Duplicate IDs in the submission: {summarize_values(duplicates)}; each test row must appear once."
        )

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
            f"{summarize_values(invalid_ids)}); pass fallback=<class name> to write that class for them."
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
