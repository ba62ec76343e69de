"""Honest splits of labelled rows: a stratified validation split, and stratified k folds, each class keeping at
least one training row."""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

import datasets
import numpy as np
from transformers.utils import logging

__all__ = ["k_fold_splits", "requested_count", "stratified_split", "validation_count"]

logger = logging.get_logger(__name__)


def stratified_split(
    dataset: datasets.Dataset, label_column: str, validation_size: float | int, seed: int = 42
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Split a dataset into train and validation, keeping class proportions.

    Each class contributes to validation in proportion to its size (largest-remainder rounding, so every
    class's share is within one row of exact), while keeping at least one row of every class in train.
    Rows keep their original order within each split.

    Args:
        dataset (`datasets.Dataset`):
            Labelled rows.
        label_column (`str`):
            Column to stratify on; any hashable values.
        validation_size (`float` or `int`):
            Fraction of rows (``0 <= x < 1``, rounded half up, at least one row if positive) or number of
            rows to hold out.
        seed (`int`, defaults to 42):
            Seed of the shuffle within each class; the same seed gives the same split.

    Returns:
        `tuple[datasets.Dataset, datasets.Dataset]`: ``(train, validation)``.

    Raises:
        `ValueError`: if the label column is missing or the requested size would leave a class out of train.
    """
    groups = _group_rows(dataset, label_column)
    n_rows = len(dataset)
    n_validation = validation_count(validation_size, n_rows, len(groups))

    quotas = [n_validation * len(rows) / n_rows for rows in groups.values()]
    capacities = [len(rows) - 1 for rows in groups.values()]
    allocation = [min(math.floor(quota), cap) for quota, cap in zip(quotas, capacities, strict=True)]
    # Largest remainder first; classes already at capacity (one row left for train) are skipped.
    priority = sorted(range(len(quotas)), key=lambda i: (-(quotas[i] - math.floor(quotas[i])), i))
    remaining = n_validation - sum(allocation)
    while remaining > 0:
        for i in priority:
            if remaining > 0 and allocation[i] < capacities[i]:
                allocation[i] += 1
                remaining -= 1

    rng = np.random.default_rng(seed)
    validation_rows: list[int] = []
    for rows, n_take in zip(groups.values(), allocation, strict=True):
        validation_rows.extend(rng.permutation(rows)[:n_take].tolist())
    chosen = set(validation_rows)
    train_rows = [row for row in range(n_rows) if row not in chosen]

    present = sum(1 for n_take in allocation if n_take > 0)
    if n_validation > 0 and present < len(groups):
        logger.warning(
            "The validation split (%d rows) holds only %d of the %d classes; scores per class will be "
            "missing. Use a larger validation_size, or k_fold_splits for small data.",
            n_validation,
            present,
            len(groups),
        )
    return dataset.select(train_rows), dataset.select(sorted(validation_rows))


def k_fold_splits(
    dataset: datasets.Dataset, label_column: str, k: int = 5, seed: int = 42
) -> list[tuple[datasets.Dataset, datasets.Dataset]]:
    """Split a dataset into k stratified folds for cross-validation.

    Every row is in the validation split of exactly one fold and in the train split of all others. Rows of
    each class are shuffled and dealt to the folds in turn, so class proportions and fold sizes differ by at
    most one row between folds.

    Args:
        dataset (`datasets.Dataset`):
            Labelled rows.
        label_column (`str`):
            Column to stratify on; any hashable values.
        k (`int`, defaults to 5):
            Number of folds, at least 2 and at most the number of rows.
        seed (`int`, defaults to 42):
            Seed of the shuffle; the same seed gives the same folds.

    Returns:
        `list[tuple[datasets.Dataset, datasets.Dataset]]`: ``k`` pairs ``(train, validation)``.

    Raises:
        `ValueError`: if ``k`` is out of range or a class has fewer than 2 rows (it would be missing from
        the train split of the fold that validates it).
    """
    if isinstance(k, bool) or not isinstance(k, Integral) or k < 2:
        raise ValueError(f"k must be an integer >= 2 (number of folds); got {k!r}.")
    groups = _group_rows(dataset, label_column)
    if k > len(dataset):
        raise ValueError(f"k={k} folds need at least {k} rows, but the dataset has {len(dataset)}. Use a smaller k.")
    singletons = [label for label, rows in groups.items() if len(rows) < 2]
    if singletons:
        raise ValueError(
            f"Classes {singletons} of column {label_column!r} have a single row: in the fold that validates "
            "it, the class would be missing from train. Add labelled rows for these classes or drop them."
        )

    rng = np.random.default_rng(seed)
    dealt = np.concatenate([rng.permutation(rows) for rows in groups.values()])
    fold_of = np.empty(len(dataset), dtype=np.int64)
    fold_of[dealt] = np.arange(len(dealt)) % k
    splits = []
    for fold in range(k):
        splits.append(
            (
                dataset.select(np.flatnonzero(fold_of != fold).tolist()),
                dataset.select(np.flatnonzero(fold_of == fold).tolist()),
            )
        )
    return splits


def _group_rows(dataset: datasets.Dataset, label_column: str) -> dict[Any, list[int]]:
    """Row indices per label value, classes in order of first appearance (deterministic)."""
    if label_column not in dataset.column_names:
        raise ValueError(f"Label column {label_column!r} not found; available columns: {dataset.column_names}.")
    if len(dataset) == 0:
        raise ValueError("Cannot split an empty dataset: it has no labelled rows.")
    groups: dict[Any, list[int]] = {}
    for row, label in enumerate(dataset[label_column]):
        groups.setdefault(label, []).append(row)
    return groups


def validation_count(validation_size: float | int, n_rows: int, n_classes: int) -> int:
    """Number of validation rows for ``validation_size``; raises if infeasible."""
    count = requested_count(validation_size, n_rows)
    max_count = n_rows - n_classes
    if count > max_count:
        raise ValueError(
            f"validation_size={validation_size!r} asks for {count} of {n_rows} labelled rows, but each of "
            f"the {n_classes} classes must keep at least one row in train, so at most {max(max_count, 0)} "
            "rows can be held out. Use a smaller validation_size, or add labelled data."
        )
    return count


def requested_count(validation_size: float | int, n_rows: int) -> int:
    """Number of rows ``validation_size`` asks for out of ``n_rows``: a fraction rounded half up (at least one row
    if positive), or a count; raises if it is neither."""
    if isinstance(validation_size, bool) or not isinstance(validation_size, Real):
        raise ValueError(
            f"validation_size must be a fraction (0 <= x < 1) or a number of rows; got {validation_size!r}."
        )
    if isinstance(validation_size, Integral):
        count = int(validation_size)
        if count < 0:
            raise ValueError(f"validation_size must not be negative; got {count}.")
    else:
        fraction = float(validation_size)
        if not 0.0 <= fraction < 1.0:
            raise ValueError(
                f"A fractional validation_size must be in [0, 1); got {fraction}. Pass an int to give a number of rows."
            )
        count = math.floor(fraction * n_rows + 0.5)
        if fraction > 0 and count == 0:
            count = 1
    return count
