"""Trainer callbacks for soft prompts, each with one job (checkpoints that really resume are
``training.checkpoints.SoftPromptCheckpointCallback``).

- ``SoftPromptGuardCallback`` (and ``check_trainer``): refuses, before training, settings that cannot work.
- ``ParameterSummaryCallback``: logs the trainable parameters when training starts.
- ``SamplePredictionsCallback``: logs a few generated predictions at each evaluation (logs + TensorBoard).
"""

from __future__ import annotations

import os
from typing import Any

from peft import PeftType
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.utils import logging

from ..core.upstream import (
    adapter_only_fsdp_state_dict,
    load_fsdp_checkpoints_as_soft_prompts,
    route_prefix_cache_argument,
)
from ..evaluation.compute_metrics import GenerationMetrics, TextGenerationMetrics
from ..modeling.methods import check_training_arguments
from .checkpoints import load_checkpoint, peft_model_of

logger = logging.get_logger(__name__)

__all__ = [
    "ParameterSummaryCallback",
    "SamplePredictionsCallback",
    "SoftPromptGuardCallback",
    "check_trainer",
    "parameter_summary",
]

# ----------------------------------------------------------------------------------------------------------
# Refusals
# ----------------------------------------------------------------------------------------------------------

_PACKING_MESSAGE = (
    "{what} cannot be used with soft prompts: it concatenates several rows into one sequence, and peft puts "
    "the virtual tokens (or the prefix) once at the start of the whole sequence, so every row but the first "
    "would be trained without its prompt. Use softprompt_hf.SoftPromptDataCollator (dynamic padding, one "
    "row per sequence) and no packing."
)


def _zero_stage(args: TrainingArguments) -> int | None:
    plugin = getattr(args, "hf_deepspeed_config", None)
    if plugin is not None:
        config = getattr(plugin, "config", {}) or {}
        stage = config.get("zero_optimization", {}).get("stage")
        if stage is not None:
            return int(stage)
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() in ("1", "true", "yes"):
        stage = os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
        return int(stage) if stage else None
    return None


# peft 0.21 cannot save ZeRO-3-sharded prompt encoders (listed in softprompt_hf.core.upstream).
_ZERO3_MESSAGE = (
    "DeepSpeed ZeRO-3 is refused for soft prompts: it shards the prompt encoder's and the prefix's parameters "
    "across processes, and gathering them to save the adapter is not supported by peft 0.21 (saving can hang "
    "or write empty tensors). A soft prompt and its optimizer state are tiny: use ZeRO-2 "
    "(recipes/accelerate/deepspeed_zero2.yaml), DDP (recipes/accelerate/multi_gpu.yaml) or FSDP2 "
    "(recipes/accelerate/fsdp.yaml) instead."
)


def _check_collator(collator: Any) -> None:
    name = type(collator).__name__
    if name == "DataCollatorWithFlattening" or getattr(collator, "padding_free", False):
        raise ValueError(_PACKING_MESSAGE.format(what=f"Padding-free collation ({name})"))
    if getattr(collator, "return_position_ids", False) and name != "SoftPromptDataCollator":
        raise ValueError(_PACKING_MESSAGE.format(what=f"A collator that returns position_ids ({name})"))


def _check_arguments(args: TrainingArguments, model: Any | None) -> None:
    if model is not None:
        peft_model = peft_model_of(model)
        config = peft_model.peft_config[peft_model.active_adapter]
        if config.is_prompt_learning:
            check_training_arguments(config, args)
    if _zero_stage(args) == 3:
        raise ValueError(_ZERO3_MESSAGE)
    if getattr(args, "packing", False) or getattr(args, "padding_free", False):
        raise ValueError(_PACKING_MESSAGE.format(what="Packing / padding-free training"))


def check_trainer(trainer: Any) -> None:
    """Raise a ``ValueError`` for Trainer settings that cannot work with the trainer's soft-prompt model.

    Everything ``SoftPromptGuardCallback`` checks, plus what only the Trainer object knows: a
    ``compute_loss_func`` with prompt tuning / P-tuning (the Trainer takes the labels away from the model to
    call it, so peft cannot extend them over the virtual tokens and the shapes do not match). Like the callback,
    it makes a prefix-tuning model pass its prefix under the cache argument's current name. Under FSDP2 it
    makes the Trainer's saves gather the soft prompt only, and its resume and best-model loads read the soft-prompt
    state (``softprompt_hf.core.upstream`` entries 28 and 29): without it, saving a checkpoint of a prompt-learning
    model fails on the main process, and loading one fails in accelerate.
    """
    model = trainer.model
    adapter_only_fsdp_state_dict(trainer)
    load_fsdp_checkpoints_as_soft_prompts(trainer, load_checkpoint)
    _check_arguments(trainer.args, model)
    peft_model = peft_model_of(model)
    route_prefix_cache_argument(peft_model)  # see SoftPromptGuardCallback.on_init_end
    config = peft_model.peft_config[peft_model.active_adapter]
    if getattr(trainer, "compute_loss_func", None) is not None and config.peft_type in (
        PeftType.PROMPT_TUNING,
        PeftType.P_TUNING,
    ):
        raise ValueError(
            f"compute_loss_func cannot be used with {PeftType(config.peft_type).value}: the Trainer takes the labels "
            "away from the model to call it, and the logits it gets include the virtual tokens' positions while the "
            "labels do not, so the loss cannot line up. Leave compute_loss_func unset (the model computes the "
            "loss over the label tokens), or use prefix tuning, which adds no positions."
        )
    if trainer.data_collator is not None:
        _check_collator(trainer.data_collator)


class SoftPromptGuardCallback(TrainerCallback):
    """Refuses, when the Trainer is built and again when training starts, settings that cannot work.

    Label smoothing (any method) and prefix tuning with gradient checkpointing (see
    ``check_training_arguments``), DeepSpeed ZeRO-3, packing and padding-free collation. A
    ``compute_loss_func`` is invisible to callbacks: call ``check_trainer(trainer)`` to cover it too.

    It also makes a prefix-tuning model built with ``peft.get_peft_model`` hand its prefix to the base model
    under the cache argument's current name, as ``build_soft_prompt_model`` does (see
    ``softprompt_hf.core.upstream.route_prefix_cache_argument``).
    """

    def on_init_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        model = kwargs.get("model")
        _check_arguments(args, model)
        if model is not None:
            # A user-built prefix-tuning model trains through peft 0.21's forward, which passes its prefix under
            # transformers' old cache argument name (``softprompt_hf.core.upstream.route_prefix_cache_argument``).
            route_prefix_cache_argument(peft_model_of(model))

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        _check_arguments(args, kwargs.get("model"))
        dataloader = kwargs.get("train_dataloader")
        collator = getattr(dataloader, "collate_fn", None)
        if collator is not None:
            _check_collator(collator)


# ----------------------------------------------------------------------------------------------------------
# Logging
# ----------------------------------------------------------------------------------------------------------


def parameter_summary(model: Any) -> list[tuple[str, int]]:
    """Trainable parameter counts per trainable module, e.g. ``[("prompt_encoder.default.embedding", 8192)]``."""
    counts: dict[str, int] = {}
    for name, param in getattr(model, "module", model).named_parameters():
        if param.requires_grad:
            module = name.rsplit(".", 1)[0]
            counts[module] = counts.get(module, 0) + param.numel()
    return list(counts.items())


class ParameterSummaryCallback(TrainerCallback):
    """Logs the trainable parameters per module, their total and their share of the model at train start."""

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        model = kwargs.get("model")
        if model is None or not state.is_world_process_zero:
            return
        rows = parameter_summary(model)
        trainable = sum(count for _, count in rows)
        total = sum(param.numel() for param in getattr(model, "module", model).parameters())
        lines = [f"  {name}: {count:,}" for name, count in rows]
        share = 100 * trainable / total if total else 0.0
        logger.info(
            "Trainable parameters: %s of %s (%.4f%%)\n%s", f"{trainable:,}", f"{total:,}", share, "\n".join(lines)
        )


def _markdown_cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


class SamplePredictionsCallback(TrainerCallback):
    """Logs a few of the evaluation's predictions (text, gold label, generated output) at each evaluation.

    They go to the logs and, when ``report_to`` includes TensorBoard, to a TensorBoard text summary
    (``eval/sample_predictions``) under ``<output_dir>/runs/sample_predictions`` (or under
    ``$TENSORBOARD_LOGGING_DIR``). The same rows are shown every time, so their evolution can be followed.

    Args:
        metrics: The ``GenerationMetrics`` or ``TextGenerationMetrics`` passed to the Trainer (its
            ``last_predictions`` are shown; a free-text task's reference as the gold).
        num_samples: How many rows to show.
        max_text_chars: Texts are cut to this many characters.
    """

    def __init__(
        self, metrics: GenerationMetrics | TextGenerationMetrics, num_samples: int = 4, max_text_chars: int = 120
    ):
        if num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {num_samples}.")
        self.metrics = metrics
        self.num_samples = num_samples
        self.max_text_chars = max_text_chars
        self._writer: Any | None = None

    def table(self) -> list[dict[str, str]]:
        """The rows shown for the last evaluation."""
        rows = []
        prediction: Any
        for prediction in list(self.metrics.last_predictions)[: self.num_samples]:
            text = (
                prediction.text
                if len(prediction.text) <= self.max_text_chars
                else prediction.text[: self.max_text_chars] + "..."
            )
            # A free-text prediction (TextPrediction) has a reference and an output, and no label.
            gold = prediction.gold if hasattr(prediction, "gold") else prediction.reference
            rows.append(
                {
                    "text": text,
                    "gold": str(gold),
                    "predicted": str(getattr(prediction, "predicted", prediction.output)),
                    "output": str(prediction.output),
                }
            )
        return rows

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        if not state.is_world_process_zero or not self.metrics.last_predictions:
            return
        rows = self.table()
        logger.info(
            "Sample predictions at step %d:\n%s",
            state.global_step,
            "\n".join(f"  gold={r['gold']!r} generated={r['output']!r} text={r['text']!r}" for r in rows),
        )
        if "tensorboard" in (args.report_to or []):
            header = "| text | gold | predicted | generated |\n|---|---|---|---|\n"
            body = "\n".join(
                "| " + " | ".join(_markdown_cell(r[key]) for key in ("text", "gold", "predicted", "output")) + " |"
                for r in rows
            )
            writer = self._tensorboard(args)
            writer.add_text("eval/sample_predictions", header + body, global_step=state.global_step)
            writer.flush()

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _tensorboard(self, args: TrainingArguments) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            root = os.environ.get("TENSORBOARD_LOGGING_DIR") or os.path.join(str(args.output_dir), "runs")
            self._writer = SummaryWriter(log_dir=os.path.join(os.path.expanduser(root), "sample_predictions"))
        return self._writer
