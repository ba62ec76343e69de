"""Many soft prompts on one base model: load the base model once with any number of adapters trained on it, and
label (or write) each row with its own adapter in one call.

:func:`load_adapters` loads the base model once and wraps it in one ``PeftModel`` per adapter (prompt tuning,
P-tuning and prefix tuning mixed: a soft prompt changes nothing in the base model, so the wrappers share its weights;
peft itself cannot hold adapters of different methods in one ``PeftModel``). :func:`predict_adapters` (also
``predict(loaded, texts, adapter_names=...)``) takes one adapter name per row: each row gets its adapter's labels,
template, label tokenization and task from that adapter's ``softprompt_hf.json``, and exactly the result that
adapter alone gives it.

How rows are run (``batching="mixed"``, the default): rows of different adapters share batches. Each adapter's
soft prompt is computed once (its virtual tokens' key/values, or prefix tuning's own key/values, and its prompts'
shared opening); a batch's key/value cache holds each row's own, padded on the left to the batch's longest with
masked slots, and each row's tokens take the positions after its own prefix, as alone. Each row's stop tokens,
label set (its label trie in constrained mode) and budget are its adapter's. Where the model cannot be given
per-row positions, or under a sliding window for rows whose padded batch would not fit in it, rows are batched by
adapter and equal length instead (exact without padding). ``batching="per_adapter"`` decodes each adapter's rows
by themselves, one adapter after the other, on the same engine. Adapters that cannot share batches (a prefix cache
of another kind) run through ``predict``, one after the other.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers.utils import logging

from ..data.prompt import PromptInput
from ..evaluation.compute_metrics import Prediction, TextPrediction
from ..inference.loops import decode_outputs
from ..inference.mixed import AdapterRows, mixed_outputs
from .predict import (
    LoadedAdapter,
    PredictionPlan,
    attach_adapter,
    base_model_source,
    check_inputs,
    label_predictions,
    load_base_model,
    predict,
    prediction_plan,
    read_adapter_config,
    text_predictions,
)

__all__ = ["LoadedAdapters", "load_adapters", "predict_adapters"]

logger = logging.get_logger(__name__)

#: How predict_adapters batches rows: adapters mixed in the same batches, or each adapter's rows by themselves.
BATCHINGS = ("mixed", "per_adapter")


@dataclass(eq=False)
class LoadedAdapters(Mapping[str, LoadedAdapter]):
    """Soft-prompt adapters loaded on one base model, by name (a read-only mapping of names to ``LoadedAdapter``).

    Each adapter is a ``LoadedAdapter`` of its own (its ``PeftModel``, tokenizer and ``softprompt_hf.json``
    settings); their ``PeftModel`` s share the one base model, ``base``.
    """

    adapters: dict[str, LoadedAdapter]
    base_model: str
    base: Any

    def __repr__(self) -> str:
        return f"LoadedAdapters(base_model={self.base_model!r}, adapters={list(self.adapters)})"

    def __getitem__(self, name: str) -> LoadedAdapter:
        if name not in self.adapters:
            raise KeyError(f"No adapter {name!r} was loaded; loaded: {', '.join(self.adapters)}.")
        return self.adapters[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.adapters)

    def __len__(self) -> int:
        return len(self.adapters)

    def predict(
        self, texts: Sequence[PromptInput], adapter_names: Sequence[str], **options: Any
    ) -> list[Prediction | TextPrediction]:
        """:func:`predict_adapters` on these adapters."""
        return predict_adapters(self, texts, adapter_names, **options)


def load_adapters(
    adapters: Mapping[str, str | os.PathLike[str]],
    *,
    base_model: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    token: str | None = None,
) -> LoadedAdapters:
    """Loads one base model once and every adapter of ``adapters`` on it, in inference mode.

    The adapters may be of the three methods, mixed: prompt tuning, P-tuning, prefix tuning. Each is checked and
    loaded as :func:`~softprompt_hf.serving.predict.load_adapter` loads it (its ``softprompt_hf.json`` settings, its
    tokenizer, ``generate()`` made right), but on the one base model.

    Args:
        adapters: Each adapter's name (what rows name, e.g. ``"complaints"``) and its Hub id or local folder.
        base_model: A local path (or Hub id) to load the base model from instead of the one the adapters name.
        device: Where to run the model (default: CUDA if available, else CPU).
        token: A Hub token for private repositories.

    Returns:
        The loaded adapters, by name, in the order given.

    Raises:
        ValueError: No adapters, a name that is empty or holds ``=`` or ``,``, or adapters trained on different
            base models (the message names both adapters and both base models).
        AdapterLoadError: As :func:`~softprompt_hf.serving.predict.load_adapter` raises it.
    """
    if isinstance(adapters, str | os.PathLike) or not isinstance(adapters, Mapping):
        raise ValueError(
            "load_adapters takes a mapping of names to adapters, e.g. {'complaints': 'me/complaints', 'topics': "
            "'outputs/topics/adapter'}; for a single adapter, load_adapter(...)."
        )
    if not adapters:
        raise ValueError("load_adapters got no adapters: pass {name: Hub id or folder, ...}.")
    for name in adapters:
        if not isinstance(name, str) or not name.strip() or "=" in name or "," in name:
            raise ValueError(f"Adapter name {name!r}: use a non-empty name without '=' or ','.")
    configs = {name: read_adapter_config(source, device, token) for name, source in adapters.items()}
    first = next(iter(configs))
    first_base = configs[first][1].base_model_name_or_path
    for name, (source, config) in configs.items():
        recorded = config.base_model_name_or_path
        if not _same_model(recorded, first_base):
            raise ValueError(
                f"Adapters {first!r} ({configs[first][0]}) and {name!r} ({source}) were trained on different base "
                f"models, {first_base!r} and {recorded!r}; load_adapters loads adapters of one base model. Load "
                "each base model's adapters in a call of their own."
            )
    source, config = configs[first]
    base = base_model_source(source, config, base_model)
    base_lm = load_base_model(source, base, token)
    loaded = {
        name: attach_adapter(source, config, base_lm, base, device, token) for name, (source, config) in configs.items()
    }
    return LoadedAdapters(adapters=loaded, base_model=base, base=base_lm)


def predict_adapters(
    adapters: LoadedAdapters,
    texts: Sequence[PromptInput],
    adapter_names: Sequence[str] | None,
    *,
    mode: str = "generate",
    max_prompt_tokens: int | None = None,
    max_new_tokens: int | None = None,
    ids: Sequence[Any] | None = None,
    batch_size: int = 32,
    show_progress: bool = False,
    batching: str = "mixed",
) -> list[Prediction | TextPrediction]:
    """Labels (or, for a free-text adapter, writes after) each text with the adapter its row names.

    Each row's result is exactly what ``predict(<its adapter>, [text], mode=mode)`` gives (rank scores to float
    rounding): a ``Prediction`` for a classification adapter, a ``TextPrediction`` for a free-text one. Rows of
    different adapters share batches (see the module docstring); results come back in the rows' order.

    Args:
        adapters: From :func:`load_adapters`.
        texts: The texts (or, for a template of named columns, rows) to predict.
        adapter_names: One adapter name per text (with a single loaded adapter, ``None`` means it for every row).
        mode: ``"generate"``, ``"rank"`` or ``"constrained"`` (see :func:`~softprompt_hf.predict`); a free-text
            adapter's rows take ``"generate"`` only.
        max_prompt_tokens: Truncate texts (never the template) so that prompts fit.
        max_new_tokens: Free-text adapters: the most tokens generated per row (default: each adapter's).
        ids: Row ids carried into the predictions.
        batch_size: Prompts per forward pass.
        show_progress: Show progress bars.
        batching: ``"mixed"``: rows of different adapters in the same batches; ``"per_adapter"``: each adapter's
            rows by themselves (the same results).

    Raises:
        ValueError: ``adapter_names`` of another length than ``texts``, a row naming an adapter that was not
            loaded (the message lists the loaded ones), a mode a free-text adapter does not take, or the errors of
            :func:`~softprompt_hf.predict` (prefixed with the adapter's name).
    """
    if not isinstance(adapters, LoadedAdapters):
        raise TypeError(f"predict_adapters takes what load_adapters returns, not a {type(adapters).__name__}.")
    check_inputs(texts, mode=mode, batch_size=batch_size, ids=ids)
    if batching not in BATCHINGS:
        raise ValueError(f"batching={batching!r}: choose one of {list(BATCHINGS)}.")
    names = _row_adapters(adapters, texts, adapter_names)
    if mode != "generate":
        for name in dict.fromkeys(names):
            if adapters[name].settings.get("task") == "text":
                raise ValueError(
                    f"Adapter {name!r} writes free text (task 'text'), which mode={mode!r} cannot score: use "
                    "mode='generate', or predict its rows in a call of their own."
                )
    rows: dict[str, list[int]] = {}
    for index, name in enumerate(names):
        rows.setdefault(name, []).append(index)
    # Mixed: all rows in one decoding; per adapter: each adapter's rows in a decoding of their own, the same engine.
    parts = [rows] if batching == "mixed" else [{name: indices} for name, indices in rows.items()]
    decoded: dict[int, Prediction | TextPrediction] = {}
    for part in parts:
        got = _predict_mixed(
            adapters, texts, part, mode=mode, max_prompt_tokens=max_prompt_tokens, max_new_tokens=max_new_tokens,
            ids=ids, batch_size=batch_size, show_progress=show_progress,
        )  # fmt: skip
        if got is None:
            logger.info("These adapters cannot be decoded together (%s): each runs through predict.", list(rows))
            break
        decoded.update(got)
    else:
        return [decoded[index] for index in range(len(texts))]
    results: list[Prediction | TextPrediction | None] = [None] * len(texts)
    for name, indices in rows.items():
        try:
            predicted = predict(
                adapters[name],
                [texts[i] for i in indices],
                mode=mode,
                max_prompt_tokens=max_prompt_tokens,
                max_new_tokens=max_new_tokens,
                ids=[ids[i] for i in indices] if ids is not None else None,
                batch_size=batch_size,
                show_progress=show_progress,
            )
        except ValueError as err:
            raise ValueError(f"Adapter {name!r}: {err}") from err
        for index, prediction in zip(indices, predicted, strict=True):
            results[index] = prediction
    return [result for result in results if result is not None]


def _predict_mixed(
    adapters: LoadedAdapters,
    texts: Sequence[PromptInput],
    rows: dict[str, list[int]],
    *,
    mode: str,
    max_prompt_tokens: int | None,
    max_new_tokens: int | None,
    ids: Sequence[Any] | None,
    batch_size: int,
    show_progress: bool,
) -> dict[int, Prediction | TextPrediction] | None:
    """The predictions of the ``rows`` (each adapter's row indices), decoded together (``mixed_outputs``: rows of
    different adapters in the same batches), by row index; ``None`` where the adapters cannot share batches."""
    plans: dict[str, PredictionPlan] = {}
    groups = []
    for name, indices in rows.items():
        adapter = adapters[name]
        tokenizer = adapter.tokenizer
        try:
            plan = prediction_plan(tokenizer, adapter.settings, saved=True, mode=mode, max_new_tokens=max_new_tokens)
            if plan.task != "text" and any(isinstance(texts[i], Mapping) for i in indices):
                raise ValueError("A classification adapter labels texts (strings); pass the text of each row.")
            prompts = [plan.prompt.encode(tokenizer, texts[i], max_prompt_tokens) for i in indices]
        except ValueError as err:
            raise ValueError(f"Adapter {name!r}: {err}") from err
        plans[name] = plan
        label_ids = [plan.prompt.encode_target(tokenizer, label) for label in plan.labels]
        # A label is generated up to one token past the longest label's ids (EOS included), as generate_labels does.
        budget = plan.max_new_tokens if plan.task == "text" else max(len(ids) for ids in label_ids)
        groups.append(
            AdapterRows(
                model=adapter.model,
                prompts=prompts,
                stops=tuple(plan.prompt.stop_ids(tokenizer)),
                max_new_tokens=budget,
                labels=plan.labels,
                label_ids=label_ids,
            )
        )
    outputs = mixed_outputs(groups, mode, batch_size=batch_size, show_progress=show_progress)
    if outputs is None:
        return None
    results: dict[int, Prediction | TextPrediction] = {}
    for (name, indices), output in zip(rows.items(), outputs, strict=True):
        plan, tokenizer = plans[name], adapters[name].tokenizer
        row_ids = [ids[i] for i in indices] if ids is not None else None
        predicted: list[Prediction | TextPrediction]
        if plan.task == "text":
            predicted = list(text_predictions(plan, tokenizer, [texts[i] for i in indices], output, row_ids))
        else:
            strings = [str(texts[i]) for i in indices]
            scores: list[dict[str, float] | None] = [None] * len(strings)
            if mode == "generate":
                labels = decode_outputs(tokenizer, output, plan.prompt.stop_ids(tokenizer))
            elif mode == "rank":
                ranked = [dict(zip(plan.labels, row, strict=True)) for row in output]
                labels, scores = [max(row, key=row.__getitem__) for row in ranked], list(ranked)
            else:
                labels = list(output)
            predicted = list(label_predictions(plan, strings, labels, scores, row_ids))
        results.update(zip(indices, predicted, strict=True))
    return results


def _row_adapters(
    adapters: LoadedAdapters, texts: Sequence[PromptInput], adapter_names: Sequence[str] | None
) -> list[str]:
    """Each row's adapter name, checked: one per text, each loaded."""
    loaded = ", ".join(adapters)
    if adapter_names is None:
        if len(adapters) == 1:
            return [next(iter(adapters))] * len(texts)
        raise ValueError(f"Several adapters are loaded ({loaded}): pass adapter_names=, one name per text.")
    if isinstance(adapter_names, str):
        raise ValueError(
            f"adapter_names must be one name per text, not a single string ({adapter_names!r}); "
            f"e.g. [{adapter_names!r}] * len(texts)."
        )
    names = list(adapter_names)
    if len(names) != len(texts):
        raise ValueError(f"Got {len(names)} adapter names for {len(texts)} texts; pass one adapter name per text.")
    for row, name in enumerate(names):
        if name not in adapters.adapters:
            raise ValueError(f"Row {row} names adapter {name!r}, which was not loaded; loaded: {loaded}.")
    return names


def _same_model(first: str | None, second: str | None) -> bool:
    """Whether two recorded base models are the same: equal names, or local folders that are the same folder."""
    if first == second:
        return True
    if not first or not second:
        return False
    one, other = Path(first).expanduser(), Path(second).expanduser()
    return one.is_dir() and other.is_dir() and one.resolve() == other.resolve()
