"""A recipe's last steps: the outputs written after the final evaluation, the one-line summary, and the end of the
run (every process waits, then the Trainer ends).

What a run writes into ``--output_dir``: ``eval_results.json``, ``predictions.csv``, ``adapter/`` (the adapter, its
model card, ``softprompt_hf.json`` and, where it differs from the base model's, the tokenizer) and, for data with
unlabelled rows, ``raft_submission.csv``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from transformers import Trainer
from transformers.utils import logging

from ..adapter.card import ModelCardCallback
from ..adapter.saving import save_adapter
from ..core import upstream
from ..core.files import atomic_write_json
from ..core.locations import is_hub_id
from ..core.sharding import gathered_root
from ..data.loading import ClassificationData, TextData
from ..evaluation.compute_metrics import GenerationMetrics, TextGenerationMetrics
from ..evaluation.prediction_files import write_predictions, write_raft_submission
from ..training.arguments import DataArguments, ModelArguments, RecipeArguments
from .inputs import label_tokenization_of, text_column_of

logger = logging.get_logger(__name__)

__all__ = [
    "ADAPTER_DIRNAME",
    "PREDICTIONS_NAME",
    "RESULTS_NAME",
    "SUBMISSION_NAME",
    "end_run",
    "save_run_outputs",
    "summary_line",
]

ADAPTER_DIRNAME = "adapter"
PREDICTIONS_NAME = "predictions.csv"
SUBMISSION_NAME = "raft_submission.csv"
RESULTS_NAME = "eval_results.json"


def save_run_outputs(
    trainer: Trainer,
    results: dict[str, Any],
    *,
    data: ClassificationData | TextData,
    metrics: GenerationMetrics | TextGenerationMetrics,
    args: RecipeArguments,
    repo_id: str | None = None,
) -> None:
    """Write a run's outputs into ``output_dir``, after its final evaluation gave ``results``:

    ``eval_results.json``, ``predictions.csv`` (the validation rows of that evaluation: text, gold and predicted
    label; for a free-text task, text, reference and output), ``adapter/`` (adapter + model card +
    ``softprompt_hf.json``, + the tokenizer where it is not the base model's; written atomically) and, when the
    data has unlabelled rows and ``--predict_unlabeled`` is on, ``raft_submission.csv``. ``repo_id`` is the Hub
    repository the folder will be pushed to, if any (the card's usage example loads it from there; a push elsewhere
    renders the card again from the inputs kept in ``softprompt_hf.json``). Every process calls it: the unlabelled
    rows are predicted by all of them, and under FSDP2 all gather the soft prompt for the main process to save.
    """
    model_args, data_args = args.model, args.data
    predict_unlabeled = args.training.predict_unlabeled
    model: Any = trainer.model
    unlabeled, predicted = None, []
    if isinstance(data, ClassificationData) and isinstance(metrics, GenerationMetrics) and predict_unlabeled:
        unlabeled = data.unlabeled
        if unlabeled is not None and len(unlabeled) > 0:
            # Every process takes part: GenerationMetrics splits the rows between the processes and gathers them.
            predicted = [p.predicted for p in metrics.predict(model, list(unlabeled[data.text_column]))]
    output_dir = Path(str(trainer.args.output_dir))
    # Under FSDP2 every process gathers the soft prompt's modules for the main process to save them.
    with gathered_root(model):
        if not trainer.is_world_process_zero():
            return
        atomic_write_json(output_dir / RESULTS_NAME, {k: v for k, v in results.items() if _jsonable(v)})
        write_predictions(output_dir / PREDICTIONS_NAME, metrics.last_predictions)
        save_adapter(
            model,
            output_dir / ADAPTER_DIRNAME,
            tokenizer=trainer.processing_class,
            base_model_id=model_args.base_model_id,
            card=_model_card(trainer, metrics, data, model_args, data_args, results),
            repo_id=repo_id,
            class_names=list(data.class_names) if isinstance(data, ClassificationData) else None,
            eval_mode=metrics.mode if isinstance(metrics, GenerationMetrics) else None,
        )
    if predicted and isinstance(data, ClassificationData):
        assert unlabeled is not None
        ids = list(unlabeled[data.id_column]) if data.id_column else list(range(len(predicted)))
        # RAFT wants a class for every row: outputs that match no label get the training data's majority class
        # (the submission writer logs how many).
        labels = list(data.train[data.target_column])
        majority = data.class_names[data.classes.index(max(data.classes, key=labels.count))]
        write_raft_submission(output_dir / SUBMISSION_NAME, ids, predicted, data.class_names, fallback=majority)
    logger.info(f"Outputs written to {output_dir} (adapter in {output_dir / ADAPTER_DIRNAME})")


def _jsonable(value: Any) -> bool:
    return isinstance(value, (int, str)) or (isinstance(value, float) and math.isfinite(value))


def _model_card(
    trainer: Trainer,
    metrics: GenerationMetrics | TextGenerationMetrics,
    data: ClassificationData | TextData,
    model_args: ModelArguments,
    data_args: DataArguments,
    results: dict[str, Any],
) -> Any:
    """The run's card data (``ModelCardInputs``): what the Trainer ran, and the final ``results``."""
    text_column = text_column_of(data, data_args)
    dataset = {"raft": "ought/raft"}.get(data_args.dataset)
    collector = ModelCardCallback.of(
        trainer,
        base_model=model_args.base_model,
        metrics=metrics,
        # A local base model (the embedded default) gets a card that says it has no Hub id.
        allow_local_base=not is_hub_id(model_args.base_model),
        dataset=dataset,
        dataset_config=data_args.raft_subset if dataset else None,
    )
    return collector.card_data(
        trainer.model,
        metrics=results,
        labels=list(data.classes) if isinstance(data, ClassificationData) else None,
        template=data_args.prompt(text_column),
        text_column=text_column,
        label_tokenization=label_tokenization_of(data_args),
    )


def summary_line(method: str, results: dict[str, Any], data: ClassificationData | TextData, output_dir: str) -> str:
    """The one line a recipe prints at the end."""
    keys: tuple[str, ...] = ("eval_accuracy", "eval_f1", "eval_invalid_rate")
    if isinstance(data, TextData):
        keys = ("eval_rougeL", "eval_bleu", "eval_chrf", "eval_exact_match", "eval_gen_len")
    shown = ", ".join(f"{key.removeprefix('eval_')} {results[key]:.3f}" for key in keys if key in results)
    rows = len(data.validation) if data.validation is not None else 0
    return f"{method}: validation {shown} ({rows} rows); adapter saved to {Path(output_dir) / ADAPTER_DIRNAME}"


def end_run(trainer: Trainer) -> None:
    """End a run: wait for every process (the main one may still be writing or pushing), then ``trainer.end()``
    (trackers finish, the process group is destroyed).

    A gloo group (processes on CPU) is not destroyed: torch 2.13's gloo teardown can hang or crash a run whose work
    had all finished (``core.upstream`` entry 32). ``softprompt_hf.steps.errors.run_recipe`` then ends the process
    without tearing the group down; a script that calls a recipe's ``main`` itself should end its processes the
    same way (``softprompt_hf.core.upstream.exit_without_gloo_teardown``).
    """
    # Trainer.end() destroys the process group without waiting: the main process may still be writing or pushing.
    trainer.accelerator.wait_for_everyone()
    if upstream.gloo_group_alive():
        for tracker in trainer.accelerator.trackers:  # what Trainer.end() does besides destroying the group
            tracker.finish()
    else:
        trainer.end()
