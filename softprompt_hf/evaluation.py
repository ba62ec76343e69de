"""Generation-based ``compute_metrics`` for the stock ``Trainer``: score what the model generates."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from transformers import PreTrainedTokenizerBase, TrainerCallback
from transformers.utils import logging

from ._decoding import label_outputs
from .constants import MODES
from .metrics import ClassificationReport, check_label_set, classification_report, match_label
from .prompt import DEFAULT_TEMPLATE, PromptInput, PromptTemplate
from .sharding import check_supported, run_sharded

__all__ = ["GenerationMetrics", "Prediction"]

logger = logging.get_logger(__name__)


@dataclass
class Prediction:
    """One scored eval row: the matched label (``None`` if the output matched no label) and, in rank
    mode, the log-likelihood of each label. In constrained mode ``output`` is the label itself."""

    text: str
    gold: str | None
    predicted: str | None
    output: str
    scores: dict[str, float] | None = None
    id: Any = None


@dataclass
class GenerationMetrics(TrainerCallback):
    """``compute_metrics`` that scores the labels the model *generates* on the eval rows.

    Plugged into the unmodified ``Trainer``, it adds ``eval_accuracy``, ``eval_f1`` (macro-F1, RAFT's
    metric) and ``eval_invalid_rate`` to ``trainer.evaluate()``, to the logs, and to what
    ``metric_for_best_model`` and ``EarlyStoppingCallback`` can use; the eval loss still comes from the
    Trainer's own loop. It is also a callback: the Trainer hands it the model when it is built.

    Modes:

    - ``"generate"``: greedy decoding of the label text, stopped at EOS or after the longest label's
      token count + 1; the output is normalised (case, whitespace, trailing punctuation) and matched to
      the label set, anything else counts as invalid.
    - ``"rank"``: rank classification: the log-likelihood of each label's tokens and EOS after the
      prompt, argmax over the label set (always valid); per-label scores are kept.
    - ``"constrained"``: greedy decoding restricted at each step to the tokens that continue some label
      (:func:`~softprompt_hf.constrained_labels`): always a label (``eval_invalid_rate`` is 0), the
      same label as ``"generate"`` wherever greedy decoding produces a label's exact tokens, and only the
      candidate tokens' rows of the output layer are computed (fast with a large vocabulary).

    Predicted labels do not depend on batching: prompts of different lengths share a batch only with masked
    right padding and each row's own positions, and with sliding-window attention only within the window (see
    :func:`~softprompt_hf.generate_labels`);
    rank scores depend on it only through float rounding (another batch size is another matrix-product
    shape, about 1e-5 apart in float32), so only labels scored that close together can swap. The
    Trainer keeps no logits (``preprocess_logits_for_metrics`` drops them), so memory does not grow with
    the eval set. With ``TrainingArguments(include_for_metrics=["loss"])`` it also reports the seed guide's
    ``eval_perplexity`` (exp of the mean eval loss). Under ``accelerate launch`` or ``torchrun`` each
    process scores its share of the rows once and the predictions are gathered, so every process returns
    the same metrics.

    Args:
        tokenizer: The model's tokenizer.
        labels: The label texts, e.g. ``data.classes`` (``["complaint", "no complaint"]``).
        eval_rows: The rows to score (a ``datasets.Dataset`` or a list of dicts), with the text and gold
            label text columns: the Trainer's ``eval_dataset``. In the Trainer, ``compute_metrics`` refuses
            (``ValueError``) an eval set of another row count, or, when its text column is there, of other
            texts; so with a dict of eval datasets, each set must be these rows (in any order).
        text_column: Column holding the text.
        target_column: Column holding the gold label text.
        id_column: Optional column identifying rows, carried into the predictions.
        template: The prompt template used in training.
        mode: ``"generate"``, ``"rank"`` or ``"constrained"``.
        batch_size: Prompts per forward pass.
        max_prompt_tokens: Truncate texts (never the template) so that prompts fit.
        label_tokenization: Where the prompt ends and the label begins, as in training (the collator's
            ``label_tokenization``): ``"joint"`` (default) or ``"separate"``
            (see :class:`~softprompt_hf.prompt.PromptTemplate`).

    Example:

    ```python
    >>> from transformers import Trainer
    >>> from softprompt_hf import SoftPromptDataCollator
    >>> metrics = GenerationMetrics(tokenizer, data.classes, data.validation)
    >>> trainer = Trainer(model=model, args=args, train_dataset=data.train, eval_dataset=data.validation,
    ...                   data_collator=SoftPromptDataCollator(tokenizer), **metrics.trainer_kwargs())
    >>> trainer.evaluate()["eval_f1"]  # the Trainer also prints the metrics
    {'eval_loss': ..., 'eval_f1': '1', ...}
    1.0

    ```
    """

    tokenizer: PreTrainedTokenizerBase
    labels: Sequence[str]
    eval_rows: Any
    text_column: str = "Tweet text"
    target_column: str = "text_label"
    id_column: str | None = None
    template: str = DEFAULT_TEMPLATE
    mode: str = "generate"
    batch_size: int = 32
    max_prompt_tokens: int | None = None
    model: torch.nn.Module | None = field(default=None, repr=False)
    label_tokenization: str = "joint"
    last_report: ClassificationReport | None = field(default=None, init=False, repr=False)
    last_predictions: list[Prediction] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        self._show_progress = True
        self._trainer_eval_dataloader: Any = None
        if self.mode not in MODES:
            raise ValueError(f"Unknown mode {self.mode!r}; choose one of {list(MODES)}.")
        self.labels = check_label_set(self.labels)
        label_lengths = [len(self.tokenizer(label, add_special_tokens=False)["input_ids"]) for label in self.labels]
        for label, length in zip(self.labels, label_lengths, strict=True):
            if not length:
                raise ValueError(f"Label {label!r} tokenizes to no token at all: the model could never generate it.")
        self._prompt = PromptTemplate(self.template, self.text_column, self.label_tokenization)
        self._texts, self._gold, self._ids = self._read_rows(self.eval_rows)

    def _read_rows(self, rows: Any) -> tuple[list[str], list[str], list[Any]]:
        records = eval_records(rows, "GenerationMetrics")
        self._sources = prompt_sources(records, self._prompt, "Eval")
        for name in (self.target_column, self.id_column):
            if name is not None and name not in records[0]:
                raise ValueError(
                    f"Eval rows have no {name!r} column (columns: {sorted(records[0])}). Eval rows need the text "
                    f"and the gold label text; unlabelled rows belong to prediction (see `predict`)."
                )
        gold = []
        for i, record in enumerate(records):
            label = record[self.target_column]
            matched = None if label is None else match_label(str(label), self.labels)
            if matched is None:
                raise ValueError(
                    f"Eval row {i} has gold label {label!r}, which is not in the label set {list(self.labels)}. "
                    "Scoring needs labelled rows; keep unlabelled rows for prediction."
                )
            gold.append(matched)
        ids = [record[self.id_column] for record in records] if self.id_column else [None] * len(records)
        return source_texts(records, self._prompt), gold, ids

    # -- Trainer hooks ---------------------------------------------------------------------------
    def trainer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``Trainer(...)``: ``compute_metrics``, ``preprocess_logits_for_metrics``
        and ``callbacks``."""
        return {
            "compute_metrics": self,
            "preprocess_logits_for_metrics": self.preprocess_logits_for_metrics,
            "callbacks": [self],
        }

    def on_init_end(self, args, state, control, model=None, **kwargs):
        if model is not None and self.model is None:
            self.model = model
        # Follow the Trainer's choice of progress bars (--disable_tqdm).
        self._show_progress = not args.disable_tqdm

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        # The Trainer hands callbacks its model as accelerate prepared it. Refuse what cannot be scored (FSDP1)
        # before the first step rather than at the first evaluation.
        if model is not None and args.eval_strategy != "no":
            check_supported(model)

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        # The dataloader the Trainer is evaluating right now: __call__ checks that its rows are ours.
        self._trainer_eval_dataloader = eval_dataloader

    @staticmethod
    def preprocess_logits_for_metrics(logits: Any, labels: torch.Tensor) -> torch.Tensor:
        """Drops the logits: the metrics come from generation, and full-vocabulary logits of every eval
        batch (``(batch, virtual + length, vocab)`` for prompt methods) would otherwise pile up."""
        return torch.zeros(labels.shape[0], device=labels.device)

    def __call__(self, eval_prediction: Any = None) -> dict[str, float]:
        if self.model is None:
            raise ValueError(
                "GenerationMetrics has no model: pass it to the Trainer with `**metrics.trainer_kwargs()` (it is "
                "also a callback that receives the model), or set `metrics.model = model`."
            )
        if eval_prediction is not None:
            self._check_trainer_rows(eval_prediction)
        metrics = self.evaluate(self.model)
        losses = getattr(eval_prediction, "losses", None)
        if losses is not None and np.size(losses):
            # The seed guide's eval perplexity: exp of the mean per-example eval loss.
            metrics["perplexity"] = math.exp(float(np.mean(losses)))
        return metrics

    def _check_trainer_rows(self, eval_prediction: Any) -> None:
        """Refuse to score other rows than those the Trainer evaluated: the metrics would describe another set."""
        dataloader, self._trainer_eval_dataloader = self._trainer_eval_dataloader, None
        dataset = getattr(dataloader, "dataset", None)
        # transformers 5.24's evaluation_loop (listed in softprompt_hf._upstream) gathers every process's
        # predictions with gather_for_metrics, which drops the rows repeated to even out the last batches when
        # the dataset has a length: the count is the eval set's under DDP too. An iterable dataset split between
        # processes may keep such repeats.
        uneven = isinstance(dataset, torch.utils.data.IterableDataset) and PartialState().num_processes > 1
        count = _prediction_rows(eval_prediction)
        if count is not None and count != len(self._texts) and not uneven:
            raise ValueError(
                f"The Trainer evaluated {count} rows, but this GenerationMetrics scores its own {len(self._texts)} "
                f"eval rows: its metrics would describe other rows than the Trainer's eval set. {_SAME_ROWS_ADVICE}"
            )
        texts = _column(dataset, self.text_column)
        if texts is not None and Counter(map(str, texts)) != Counter(self._texts):
            raise ValueError(
                f"The Trainer's eval set ({len(texts)} rows) holds other {self.text_column!r} texts than the rows "
                f"this GenerationMetrics scores: its metrics would describe other rows. {_SAME_ROWS_ADVICE}"
            )

    # -- Scoring ---------------------------------------------------------------------------------
    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Scores ``model`` on the eval rows and returns ``{"accuracy", "f1", "invalid_rate"}``."""
        outputs, scores = self._score(model, self._sources)
        predicted = [match_label(output, self.labels) for output in outputs]
        self.last_report = classification_report(self._gold, predicted, self.labels)
        self.last_predictions = [
            Prediction(text=t, gold=g, predicted=p, output=o, scores=s, id=i)
            for t, g, p, o, s, i in zip(self._texts, self._gold, predicted, outputs, scores, self._ids, strict=True)
        ]
        return self.last_report.as_metrics()

    def predict(self, model: torch.nn.Module, texts: Sequence[PromptInput]) -> list[Prediction]:
        """Labels unlabelled texts, or rows holding the template's columns (no gold), with the configured mode.

        In a distributed run every process must call it: the texts are split between the processes and the
        predictions gathered, so that all of them get the whole list.
        """
        outputs, scores = self._score(model, list(texts))
        return [
            Prediction(
                text=_shown(t, self._prompt), gold=None, predicted=match_label(o, self.labels), output=o, scores=s
            )
            for t, o, s in zip(texts, outputs, scores, strict=True)
        ]

    def _score(
        self, model: torch.nn.Module, texts: list[PromptInput]
    ) -> tuple[list[str], list[dict[str, float] | None]]:
        state = PartialState()
        indices = list(range(len(texts)))
        with state.split_between_processes(indices) as mine:
            # Under FSDP2 the processes decode their shares in step (softprompt_hf.sharding); otherwise as is.
            outputs, scores = run_sharded(
                model,
                lambda: label_outputs(
                    self.mode,
                    model,
                    self.tokenizer,
                    [texts[i] for i in mine],
                    self.labels,
                    template=self._prompt,
                    max_prompt_tokens=self.max_prompt_tokens,
                    batch_size=self.batch_size,
                    show_progress=state.is_main_process and self._show_progress,
                ),
            )
            local = list(zip(outputs, scores, strict=True))
        gathered = gather_object(local) if state.num_processes > 1 else local
        if len(gathered) != len(texts):
            raise RuntimeError(f"Gathered {len(gathered)} predictions for {len(texts)} eval rows.")
        return [o for o, _ in gathered], [s for _, s in gathered]


_SAME_ROWS_ADVICE = (
    "Give GenerationMetrics the rows of the Trainer's eval_dataset (eval_rows=the same dataset). A dict of eval "
    "datasets is evaluated with one compute_metrics, which scores one set of rows: keep in it only that set "
    "(under any names), and score each other set with its own GenerationMetrics, e.g. "
    "GenerationMetrics(tokenizer, labels, other_rows).evaluate(model)."
)


def eval_records(rows: Any, owner: str) -> list[Mapping[str, Any]]:
    """The rows of a ``datasets.Dataset`` or of a sequence of mappings, as a list of mappings (at least one)."""
    columns = getattr(rows, "column_names", None)
    records: list[Mapping[str, Any]] = list(rows) if columns is None else rows.to_list()
    if not records:
        raise ValueError(f"{owner} got no eval rows.")
    return records


def prompt_sources(records: Sequence[Mapping[str, Any]], prompt: PromptTemplate, kind: str) -> list[PromptInput]:
    """What ``prompt`` is filled from for each record: the text column's value for a template whose only field is
    ``{text}``, else the record's columns that the template reads. Checks that they are there and that texts are
    non-empty strings."""
    prompt.check_columns(records[0], where=f"the {kind.lower()} rows")
    sources: list[PromptInput] = []
    for i, record in enumerate(records):
        if "text" in prompt.fields:
            text = record[prompt.text_column]
            if not isinstance(text, str) or not text.strip():
                raise ValueError(
                    f"{kind} row {i} has text {text!r}; {prompt.text_column!r} must hold non-empty strings."
                )
        if prompt.fields == ("text",):
            sources.append(record[prompt.text_column])
        else:
            row = {column: record[column] for column in prompt.columns}
            prompt.values(row)  # a None in a field is refused here, with the row's column named
            sources.append(row)
    return sources


def source_texts(records: Sequence[Mapping[str, Any]], prompt: PromptTemplate) -> list[str]:
    """Each record's text as predictions files show it: its text column, or else the template's cut field."""
    column = prompt.text_column if prompt.text_column in records[0] else prompt.columns[-1]
    return [str(record[column]) for record in records]


def _shown(source: PromptInput, prompt: PromptTemplate) -> str:
    """A source as a prediction shows it: the text, or a row's text column (else the template's cut field)."""
    if isinstance(source, str):
        return source
    column = prompt.text_column if prompt.text_column in source else prompt.columns[-1]
    return str(source[column])


def _prediction_rows(eval_prediction: Any) -> int | None:
    """How many rows an ``EvalPrediction`` holds (None if it cannot tell): the leading size of its predictions
    (one number per row from ``preprocess_logits_for_metrics``) or labels, summed over the per-batch arrays of
    ``eval_do_concat_batches=False``."""
    for value in (getattr(eval_prediction, "predictions", None), getattr(eval_prediction, "label_ids", None)):
        if isinstance(value, np.ndarray | torch.Tensor) and value.ndim:
            return int(value.shape[0])
        if (
            isinstance(value, list)
            and value
            and all(isinstance(v, np.ndarray | torch.Tensor) and v.ndim for v in value)
        ):
            return sum(int(v.shape[0]) for v in value)
    return None


def _column(dataset: Any, name: str) -> list[Any] | None:
    """The ``name`` column of a ``datasets.Dataset`` or a list of dicts; None when it has none (the Trainer's
    ``remove_unused_columns`` drops it) or is something else (an iterable dataset)."""
    columns = getattr(dataset, "column_names", None)
    if columns is not None:
        return list(dataset[name]) if name in columns else None
    if isinstance(dataset, list) and dataset and all(isinstance(row, Mapping) and name in row for row in dataset):
        return [row[name] for row in dataset]
    return None
