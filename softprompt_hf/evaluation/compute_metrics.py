"""Generation-based ``compute_metrics`` for the stock ``Trainer``: score what the model generates, labels
(:class:`GenerationMetrics`) or free text (:class:`TextGenerationMetrics`)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from transformers import PreTrainedTokenizerBase, Trainer, TrainerCallback
from transformers.trainer_pt_utils import find_batch_size
from transformers.utils import logging

from ..constants import MODES
from ..core.sharding import check_supported, run_sharded
from ..data.chat import ChatTemplate, prompt_format
from ..data.prompt import DEFAULT_TEMPLATE, PromptFormat, PromptInput
from ..inference.labels import check_generation_kwargs, generate_label_ids, label_outputs
from ..inference.loops import decode_outputs
from .metrics import ClassificationReport, check_label_set, classification_report, match_label

__all__ = ["GenerationMetrics", "Prediction", "TextGenerationMetrics", "TextPrediction"]

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


class _TrainerMetrics(TrainerCallback):
    """What ``GenerationMetrics`` and ``TextGenerationMetrics`` share: the stock Trainer's hooks (the model
    handed over, progress bars, the check that the Trainer evaluated these rows, no logits kept) and the
    ``compute_metrics`` call. Subclasses set ``model``, ``_texts`` (each row's text, as a predictions file shows
    it), ``_shown_column`` (the column those texts come from) and implement ``evaluate``."""

    model: torch.nn.Module | None
    _texts: list[str]
    _shown_column: str
    #: Progress bars while generating over the eval rows; the Trainer's ``--disable_tqdm`` sets it (``on_init_end``).
    show_progress: bool = True
    _trainer_eval_dataloader: Any = None
    _best_metric_example: ClassVar[str] = "f1"  # what skip_loss_pass's error suggests instead of the loss

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        raise NotImplementedError

    def trainer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``Trainer(...)``: ``compute_metrics``, ``preprocess_logits_for_metrics``
        and ``callbacks``. Then :meth:`skip_loss_pass` to evaluate without the Trainer's loss forward."""
        return {
            "compute_metrics": self,
            "preprocess_logits_for_metrics": self.preprocess_logits_for_metrics,
            "callbacks": [self],
        }

    def skip_loss_pass(self, trainer: Trainer) -> Trainer:
        """Make ``trainer``'s evaluations decode only: no ``eval_loss``, and no model forward over the eval rows
        before these metrics decode them. Returns ``trainer``.

        ``Trainer.evaluate`` always runs its loss pass (one forward of every eval row, with the labels) before it
        calls ``compute_metrics``, and these metrics then decode the same rows with generation: the loss pass is
        work on top of the metrics. After this call the Trainer's per-batch step only counts the batch's rows for
        ``compute_metrics`` (the metrics and ``num_samples`` stay the same; ``eval_samples_per_second`` becomes the
        decoding's own rate). Everything else is the stock Trainer's: evaluation strategy, best-model selection
        on these metrics, early stopping, logging, ``trainer.predict`` (which then returns no loss either).

        Raises:
            ValueError: If ``trainer`` does not use these metrics as its ``compute_metrics``, or if its
                arguments ask for the loss (``metric_for_best_model="loss"``, ``include_for_metrics=["loss"]``
                for ``eval_perplexity``, ``prediction_loss_only``): keep the loss pass for those.
        """
        suggestion = self._best_metric_example
        if trainer.compute_metrics is not self:
            raise ValueError(
                f"skip_loss_pass: this Trainer's compute_metrics is not this {type(self).__name__}: build it with "
                "Trainer(..., **metrics.trainer_kwargs()) first."
            )
        args = trainer.args
        wants_loss = []
        if args.metric_for_best_model in ("loss", "eval_loss"):
            wants_loss.append(f"metric_for_best_model={args.metric_for_best_model!r}")
        if "loss" in (args.include_for_metrics or []):
            wants_loss.append("include_for_metrics=['loss'] (eval_perplexity)")
        if args.prediction_loss_only:
            wants_loss.append("prediction_loss_only=True")
        if wants_loss:
            raise ValueError(
                f"skip_loss_pass: the Trainer's arguments ask for the eval loss ({', '.join(wants_loss)}), which "
                "only the loss pass computes. Keep the loss pass (do not call skip_loss_pass), or choose a "
                f"generated metric, e.g. metric_for_best_model={suggestion!r}."
            )
        if getattr(trainer, "_softprompt_hf_skips_loss_pass", False):
            return trainer
        trainer.prediction_step = _rows_only_step(trainer)  # type: ignore[method-assign]
        trainer._softprompt_hf_skips_loss_pass = True  # type: ignore[attr-defined]
        return trainer

    def on_init_end(self, args, state, control, model=None, **kwargs):
        if model is not None and self.model is None:
            self.model = model
        # Follow the Trainer's choice of progress bars (--disable_tqdm).
        self.show_progress = not args.disable_tqdm

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
                f"{type(self).__name__} has no model: pass it to the Trainer with `**metrics.trainer_kwargs()` (it "
                "is also a callback that receives the model), or set `metrics.model = model`."
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
        # transformers 5.24's evaluation_loop (listed in softprompt_hf.core.upstream) gathers every process's
        # predictions with gather_for_metrics, which drops the rows repeated to even out the last batches when
        # the dataset has a length: the count is the eval set's under DDP too. An iterable dataset split between
        # processes may keep such repeats.
        uneven = isinstance(dataset, torch.utils.data.IterableDataset) and PartialState().num_processes > 1
        count = _prediction_rows(eval_prediction)
        if count is not None and count != len(self._texts) and not uneven:
            raise ValueError(
                f"The Trainer evaluated {count} rows, but this {type(self).__name__} scores its own "
                f"{len(self._texts)} eval rows: its metrics would describe other rows than the Trainer's eval set. "
                f"{_same_rows_advice(self)}"
            )
        column = self._shown_column
        texts = _column(dataset, column)
        if texts is not None and Counter(map(str, texts)) != Counter(self._texts):
            raise ValueError(
                f"The Trainer's eval set ({len(texts)} rows) holds other {column!r} texts than the rows this "
                f"{type(self).__name__} scores: its metrics would describe other rows. {_same_rows_advice(self)}"
            )


@dataclass
class GenerationMetrics(_TrainerMetrics):
    """``compute_metrics`` that scores the labels the model *generates* on the eval rows.

    Plugged into the unmodified ``Trainer``, it adds ``eval_accuracy``, ``eval_f1`` (macro-F1, RAFT's
    metric) and ``eval_invalid_rate`` to ``trainer.evaluate()``, to the logs, and to what
    ``metric_for_best_model`` and ``EarlyStoppingCallback`` can use; the eval loss comes from the Trainer's own
    loss pass, which :meth:`skip_loss_pass` drops. It is also a callback: the Trainer hands it the model when it
    is built.

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
        template: The prompt template used in training, or the ``ChatTemplate`` (whose ``{text}`` reads
            ``text_column``); with a chat template, labels end with its end-of-turn token instead of EOS.
        mode: ``"generate"``, ``"rank"`` or ``"constrained"``.
        batch_size: Prompts per forward pass.
        max_prompt_tokens: Truncate texts (never the template) so that prompts fit.
        label_tokenization: Where the prompt ends and the label begins, as in training (the collator's
            ``label_tokenization``): ``"joint"`` (default) or ``"separate"``
            (see :class:`~softprompt_hf.data.prompt.PromptTemplate`).

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

    #: What the targets are (``softprompt_hf.constants.TASKS``): what the card and softprompt_hf.json record.
    task: ClassVar[str] = "classification"

    tokenizer: PreTrainedTokenizerBase
    labels: Sequence[str]
    eval_rows: Any
    text_column: str = "Tweet text"
    target_column: str = "text_label"
    id_column: str | None = None
    template: str | ChatTemplate = DEFAULT_TEMPLATE
    mode: str = "generate"
    batch_size: int = 32
    max_prompt_tokens: int | None = None
    model: torch.nn.Module | None = field(default=None, repr=False)
    label_tokenization: str = "joint"
    last_report: ClassificationReport | None = field(default=None, init=False, repr=False)
    last_predictions: list[Prediction] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"Unknown mode {self.mode!r}; choose one of {list(MODES)}.")
        self.labels = check_label_set(self.labels)
        label_lengths = [len(self.tokenizer(label, add_special_tokens=False)["input_ids"]) for label in self.labels]
        for label, length in zip(self.labels, label_lengths, strict=True):
            if not length:
                raise ValueError(f"Label {label!r} tokenizes to no token at all: the model could never generate it.")
        self._prompt = prompt_format(self.template, self.text_column, self.label_tokenization, self.tokenizer)
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
        self._shown_column = self._prompt.source_column(records[0])
        return [str(record[self._shown_column]) for record in records], gold, ids

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
                text=self._prompt.source_text(t), gold=None, predicted=match_label(o, self.labels), output=o, scores=s
            )
            for t, o, s in zip(texts, outputs, scores, strict=True)
        ]

    def _score(
        self, model: torch.nn.Module, texts: list[PromptInput]
    ) -> tuple[list[str], list[dict[str, float] | None]]:
        state = PartialState()
        indices = list(range(len(texts)))
        with state.split_between_processes(indices) as mine:
            # Under FSDP2 the processes decode their shares in step (softprompt_hf.core.sharding); otherwise as is.
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
                    show_progress=state.is_main_process and self.show_progress,
                ),
            )
            local = list(zip(outputs, scores, strict=True))
        gathered = gather_object(local) if state.num_processes > 1 else local
        if len(gathered) != len(texts):
            raise RuntimeError(f"Gathered {len(gathered)} predictions for {len(texts)} eval rows.")
        return [o for o, _ in gathered], [s for _, s in gathered]


@dataclass
class TextPrediction:
    """One eval row of a free-text task: its text (the source), the reference, and what the model generated
    (``tokens``: how many tokens, its EOS not counted)."""

    text: str
    reference: str | None
    output: str
    tokens: int
    id: Any = None


@dataclass
class TextGenerationMetrics(_TrainerMetrics):
    """``compute_metrics`` that scores the free text the model *generates* on the eval rows: the twin of
    :class:`GenerationMetrics` for summaries, answers and rewrites.

    Plugged into the unmodified ``Trainer`` with ``**metrics.trainer_kwargs()``, it decodes every eval row with
    :func:`~softprompt_hf.generate_texts` (greedy on the package's batched engine unless ``generation_kwargs``
    ask ``generate()`` for beams or sampling), scores the outputs against the references with ``metrics``, and
    adds each score to ``trainer.evaluate()``: by default ``eval_rouge1``, ``eval_rouge2``, ``eval_rougeL``,
    ``eval_rougeLsum`` (0-1), ``eval_bleu``, ``eval_chrf`` (0-100) and ``eval_exact_match`` (0-1), from the
    package's offline ``evaluate`` metrics (:mod:`softprompt_hf.evaluation.text_metrics`), and always ``eval_gen_len``,
    the mean number of generated tokens (EOS not counted). Any of them works as ``metric_for_best_model`` (``"rougeL"``)
    and for ``EarlyStoppingCallback``. As with ``GenerationMetrics``: the Trainer keeps no logits, every process decodes
    its share of the rows once under ``accelerate launch`` or ``torchrun`` and all get the same metrics,
    ``compute_metrics`` refuses an eval set other than ``eval_rows``, and ``last_predictions`` holds each row's source,
    reference and output for a predictions file.

    Args:
        tokenizer: The model's tokenizer.
        eval_rows: The rows to score (a ``datasets.Dataset`` or a list of dicts) with the template's columns and
            the reference: the Trainer's ``eval_dataset``.
        text_column: The column ``{text}`` reads (as for the collator).
        target_column: The column holding the reference text.
        id_column: Optional column identifying rows, carried into the predictions.
        template: The prompt template used in training (``{text}`` and any column's name in braces), or the
            ``ChatTemplate``.
        metrics: What scores the outputs: ``None`` for the shipped four (ROUGE, BLEU, chrF, exact match), a
            shipped metric's name or a list of names (``"rouge"``, ``"bleu"``, ``"chrf"``, ``"exact_match"``), or
            any object with ``.compute(predictions=..., references=...)`` returning a dict (a user's
            ``evaluate.load("bertscore")``, an ``evaluate.combine([...])``), alone or in a list with names. A
            list's results are merged (the same key twice is an error). Numbers are kept, lists of numbers
            averaged (BERTScore's per-row ``f1``), anything else (a hash code string) left out.
        max_new_tokens: The most tokens generated per row, EOS included; default: the longest reference's
            tokens and its EOS (use the collator's ``max_target_length`` where targets were cut in training).
        batch_size: Prompts per forward pass.
        max_prompt_tokens: Cut the template's cut field (never the template) so that prompts fit.
        label_tokenization: Where the prompt ends and the target begins, as in training: ``"joint"`` or
            ``"separate"``.
        generation_kwargs: ``generate()`` settings for beam search or sampling (see
            :func:`~softprompt_hf.generate_texts`); default greedy.

    Example:

    ```python
    >>> from transformers import Trainer
    >>> from softprompt_hf import SoftPromptDataCollator, TextGenerationMetrics
    >>> columns = {"text_column": "abstract", "target_column": "summary", "template": "{text} Summary : "}
    >>> metrics = TextGenerationMetrics(tokenizer, data.validation, **columns)  # doctest: +SKIP
    >>> trainer = Trainer(model=model, args=args, train_dataset=data.train, eval_dataset=data.validation,
    ...                   data_collator=SoftPromptDataCollator(tokenizer, **columns),
    ...                   **metrics.trainer_kwargs())  # doctest: +SKIP
    >>> metrics.skip_loss_pass(trainer)  # evaluations decode only, no eval_loss  # doctest: +SKIP
    >>> trainer.evaluate()["eval_rougeL"]  # doctest: +SKIP
    0.41

    ```
    """

    task: ClassVar[str] = "text"
    _best_metric_example: ClassVar[str] = "rougeL"

    tokenizer: PreTrainedTokenizerBase
    eval_rows: Any
    text_column: str = "Tweet text"
    target_column: str = "text_label"
    id_column: str | None = None
    template: str | ChatTemplate = DEFAULT_TEMPLATE
    metrics: Any = None
    max_new_tokens: int | None = None
    batch_size: int = 32
    max_prompt_tokens: int | None = None
    label_tokenization: str = "joint"
    generation_kwargs: dict[str, Any] | None = None
    model: torch.nn.Module | None = field(default=None, repr=False)
    last_predictions: list[TextPrediction] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        check_generation_kwargs(self.generation_kwargs)
        self._prompt = prompt_format(self.template, self.text_column, self.label_tokenization, self.tokenizer)
        self._scorers = _scorers(self.metrics)
        records = eval_records(self.eval_rows, "TextGenerationMetrics")
        self._sources = prompt_sources(records, self._prompt, "Eval")
        for name in (self.target_column, self.id_column):
            if name is not None and name not in records[0]:
                raise ValueError(
                    f"Eval rows have no {name!r} column (columns: {sorted(records[0])}). Eval rows need the "
                    "template's columns and the reference text; rows without a reference belong to prediction."
                )
        self._references: list[str] = []
        for i, record in enumerate(records):
            reference = record[self.target_column]
            if not isinstance(reference, str) or not reference.strip():
                raise ValueError(
                    f"Eval row {i} has reference {reference!r}; {self.target_column!r} must hold non-empty strings "
                    "(drop rows without a reference from the eval set)."
                )
            self._references.append(reference)
        self._ids = [record[self.id_column] for record in records] if self.id_column else [None] * len(records)
        self._shown_column = self._prompt.source_column(records[0])
        self._texts = [str(record[self._shown_column]) for record in records]
        if self.max_new_tokens is None:
            self.max_new_tokens = max(len(self._prompt.encode_target(self.tokenizer, r)) for r in self._references)
        elif self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}.")

    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        """Generates for every eval row and returns the scores and ``gen_len``."""
        outputs, lengths = self._generate(model, self._sources)
        self.last_predictions = [
            TextPrediction(text=t, reference=r, output=o, tokens=n, id=i)
            for t, r, o, n, i in zip(self._texts, self._references, outputs, lengths, self._ids, strict=True)
        ]
        scores: dict[str, float] = {}
        for name, scorer in self._scorers:
            result = scorer.compute(predictions=outputs, references=self._references)
            for key, value in _numbers(name, result).items():
                if key in scores:
                    raise ValueError(
                        f"Two metrics report {key!r}: give the metrics distinct result names, or combine them with "
                        "evaluate.combine([...]), which prefixes clashing names."
                    )
                scores[key] = value
        scores["gen_len"] = float(np.mean(lengths))
        return scores

    def predict(self, model: torch.nn.Module, texts: Sequence[PromptInput]) -> list[TextPrediction]:
        """Generates for unlabelled texts, or rows holding the template's columns (no reference). In a
        distributed run every process must call it."""
        outputs, lengths = self._generate(model, list(texts))
        return [
            TextPrediction(text=self._prompt.source_text(t), reference=None, output=o, tokens=n)
            for t, o, n in zip(texts, outputs, lengths, strict=True)
        ]

    def _generate(self, model: torch.nn.Module, sources: list[PromptInput]) -> tuple[list[str], list[int]]:
        state = PartialState()
        stops = self._prompt.stop_ids(self.tokenizer)
        with state.split_between_processes(list(range(len(sources)))) as mine:
            ids = run_sharded(
                model,
                lambda: generate_label_ids(
                    model,
                    self.tokenizer,
                    [sources[i] for i in mine],
                    template=self._prompt,
                    max_new_tokens=self.max_new_tokens or 1,
                    max_prompt_tokens=self.max_prompt_tokens,
                    batch_size=self.batch_size,
                    show_progress=state.is_main_process and self.show_progress,
                    generation_kwargs=self.generation_kwargs,
                    use_generate=bool(self.generation_kwargs),
                    description="Generating texts",
                ),
            )
            local = [
                (text, len(row) - (bool(row) and row[-1] in stops))
                for row, text in zip(ids, decode_outputs(self.tokenizer, ids, stops), strict=True)
            ]
        gathered = gather_object(local) if state.num_processes > 1 else local
        if len(gathered) != len(sources):
            raise RuntimeError(f"Gathered {len(gathered)} outputs for {len(sources)} eval rows.")
        return [text for text, _ in gathered], [n for _, n in gathered]


def _scorers(metrics: Any) -> list[tuple[str, Any]]:
    """``metrics`` as ``(name, object with .compute)`` pairs: the shipped four for ``None``; names are loaded."""
    # Here, not at the top: `evaluate` takes about 0.4 s to import, which label runs and `softprompt-hf predict`
    # (this module's Prediction) never need.
    from .text_metrics import TEXT_METRICS, default_text_metrics, load_text_metric

    if metrics is None:
        return [("default_text_metrics", default_text_metrics())]
    items = list(metrics) if isinstance(metrics, list | tuple) else [metrics]
    if not items:
        raise ValueError(f"metrics=[] scores nothing: name metrics ({sorted(TEXT_METRICS)}) or leave it None.")
    scorers = []
    for item in items:
        if isinstance(item, str):
            scorers.append((item, load_text_metric(item)))
        elif callable(getattr(item, "compute", None)):
            scorers.append((getattr(item, "name", type(item).__name__), item))
        else:
            raise TypeError(
                f"metrics holds {item!r}, which is neither a shipped metric's name ({sorted(TEXT_METRICS)}) nor an "
                "object with .compute(predictions=..., references=...) (e.g. evaluate.load('bertscore'))."
            )
    return scorers


def _numbers(name: str, result: Any) -> dict[str, float]:
    """The numbers of a metric's result: numbers as they are, sequences of numbers averaged (per-row scores),
    nested dicts flattened as ``outer_inner``; the rest (strings, None) left out, logged once."""
    if not isinstance(result, Mapping):
        raise TypeError(f"Metric {name!r} returned {type(result).__name__}, not a dict of scores.")
    numbers: dict[str, float] = {}
    for key, value in result.items():
        if isinstance(value, Mapping):
            numbers.update({f"{key}_{k}": v for k, v in _numbers(name, value).items()})
        elif isinstance(value, bool) or value is None or isinstance(value, str):
            logger.info("Metric %r's %r (%r) is not a score; it is not logged.", name, key, value)
        elif isinstance(value, int | float | np.number) or (isinstance(value, np.ndarray) and value.ndim == 0):
            numbers[str(key)] = float(value)
        elif (
            isinstance(value, Sequence | np.ndarray)
            and len(value)
            and all(isinstance(v, int | float | np.number) and not isinstance(v, bool) for v in value)
        ):
            numbers[str(key)] = float(np.mean(value))
        else:
            logger.info("Metric %r's %r is not a number or a list of numbers; it is not logged.", name, key)
    return numbers


def _same_rows_advice(metrics: Any) -> str:
    name = type(metrics).__name__
    example = (
        "GenerationMetrics(tokenizer, labels, other_rows)"
        if name == "GenerationMetrics"
        else f"{name}(tokenizer, other_rows, ...)"
    )
    return (
        f"Give {name} the rows of the Trainer's eval_dataset (eval_rows=the same dataset). A dict of eval datasets "
        "is evaluated with one compute_metrics, which scores one set of rows: keep in it only that set (under any "
        f"names), and score each other set with its own {name}, e.g. {example}.evaluate(model)."
    )


def eval_records(rows: Any, owner: str) -> list[Mapping[str, Any]]:
    """The rows of a ``datasets.Dataset`` or of a sequence of mappings, as a list of mappings (at least one)."""
    columns = getattr(rows, "column_names", None)
    records: list[Mapping[str, Any]] = list(rows) if columns is None else rows.to_list()
    if not records:
        raise ValueError(f"{owner} got no eval rows.")
    return records


def prompt_sources(records: Sequence[Mapping[str, Any]], prompt: PromptFormat, kind: str) -> list[PromptInput]:
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


def _rows_only_step(trainer: Trainer) -> Callable[..., tuple[None, torch.Tensor, torch.Tensor]]:
    """``trainer.prediction_step`` for evaluations that only decode (``skip_loss_pass``): no forward; a zero per
    row of the batch as its predictions and labels, which is all the evaluation loop passes on to the metrics (it
    counts them, and gathers them across processes as it gathers a forward's)."""

    def prediction_step(
        model: torch.nn.Module, inputs: dict[str, Any], prediction_loss_only: bool, ignore_keys: Any = None
    ) -> tuple[None, torch.Tensor, torch.Tensor]:
        rows = find_batch_size(inputs)
        if rows is None:
            raise ValueError(
                "skip_loss_pass: the eval batch has no tensor to count its rows by; evaluate with the loss pass "
                "(do not call skip_loss_pass) for batches of this shape."
            )
        placeholder = torch.zeros(rows, device=trainer.args.device)
        return None, placeholder, placeholder

    return prediction_step


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
