"""What a recipe gives the stock ``Trainer`` besides the model and the data: the collator, the generation-based
metrics, the callbacks, and the model's exact speed-ups.

Each is built from the run's flags the same way for every method, so that training, evaluation and the saved
adapter see the same template, label boundary and length caps.
"""

from __future__ import annotations

import torch
from transformers import EarlyStoppingCallback, PreTrainedTokenizerBase, TrainerCallback
from transformers.utils import logging

from ..data.collator import SoftPromptDataCollator
from ..data.loading import ClassificationData, TextData
from ..evaluation.compute_metrics import GenerationMetrics, TextGenerationMetrics
from ..modeling.label_logits import enable_label_only_logits
from ..modeling.shared_prompt import enable_shared_prompt
from ..training.arguments import DataArguments, SoftPromptTrainingArguments, fsdp_requested
from ..training.callbacks import ParameterSummaryCallback, SamplePredictionsCallback, SoftPromptGuardCallback
from ..training.checkpoints import SoftPromptCheckpointCallback
from .inputs import label_tokenization_of, run_prompt, text_column_of

logger = logging.get_logger(__name__)

__all__ = ["build_collator", "build_metrics", "enable_speed_ups", "recipe_callbacks"]


def build_collator(
    tokenizer: PreTrainedTokenizerBase, data: ClassificationData | TextData, data_args: DataArguments
) -> SoftPromptDataCollator:
    """The training collator for ``data`` with the run's template and length caps."""
    text_column = text_column_of(data, data_args)
    collator = SoftPromptDataCollator(
        tokenizer,
        text_column=text_column,
        target_column=data.target_column,
        template=data_args.prompt(text_column),
        max_length=data_args.max_length,
        label_tokenization=label_tokenization_of(data_args),
        max_target_length=data_args.max_target_length,
    )
    if isinstance(data, TextData) and (data_args.max_length is not None or data_args.max_target_length is not None):
        collator.count_cut(data.train)  # one warning with the counts of sources and targets cut
    return collator


def build_metrics(
    tokenizer: PreTrainedTokenizerBase,
    data: ClassificationData | TextData,
    data_args: DataArguments,
    training_args: SoftPromptTrainingArguments,
) -> GenerationMetrics | TextGenerationMetrics:
    """Generation-based metrics on the validation split, prompts cut exactly as in training."""
    if data.validation is None or len(data.validation) == 0:
        raise ValueError("The recipes evaluate on a validation split: set --validation_size above 0.")
    text_column = text_column_of(data, data_args)
    template = data_args.prompt(text_column)
    if isinstance(data, TextData):
        metrics = TextGenerationMetrics(
            tokenizer,
            data.validation,
            text_column=text_column,
            target_column=data.target_column,
            id_column=data.id_column,
            template=template,
            metrics=data_args.text_metric_names,
            max_new_tokens=data_args.max_target_length,
            batch_size=training_args.per_device_eval_batch_size,
            label_tokenization=label_tokenization_of(data_args),
        )
        if data_args.max_length is not None:
            # The room the collator leaves the longest target: max_length minus what evaluation may generate.
            metrics.max_prompt_tokens = max(1, data_args.max_length - (metrics.max_new_tokens or 1))
        if training_args.load_best_model_at_end:  # a text task reports no F1: parse_recipe_args chose its metric
            logger.info(
                "The best adapter is the one with the %s %s (--metric_for_best_model).",
                "highest" if training_args.greater_is_better else "lowest",
                training_args.metric_for_best_model,
            )
        return metrics
    max_prompt_tokens = None
    if data_args.max_length is not None:
        # The collator's budget: max_length minus the target (label + EOS), for the longest label.
        prompt = run_prompt(data, data_args)
        max_prompt_tokens = data_args.max_length - max(
            len(prompt.encode_target(tokenizer, label)) for label in data.classes
        )
    return GenerationMetrics(
        tokenizer,
        data.classes,
        data.validation,
        text_column=data.text_column,
        target_column=data.target_column,
        id_column=data.id_column,
        template=template,
        label_tokenization=label_tokenization_of(data_args),
        mode=training_args.eval_mode,
        batch_size=training_args.per_device_eval_batch_size,
        max_prompt_tokens=max_prompt_tokens,
    )


def recipe_callbacks(
    metrics: GenerationMetrics | TextGenerationMetrics, training_args: SoftPromptTrainingArguments
) -> list[TrainerCallback]:
    """The callbacks every recipe run uses: refusals, exact checkpoints, parameter summary, samples, early stop."""
    callbacks: list[TrainerCallback] = [
        SoftPromptGuardCallback(),
        SoftPromptCheckpointCallback(),
        ParameterSummaryCallback(),
        *metrics.trainer_kwargs()["callbacks"],
    ]
    if training_args.num_sample_predictions > 0:
        callbacks.append(SamplePredictionsCallback(metrics, num_samples=training_args.num_sample_predictions))
    if training_args.early_stopping_patience is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=training_args.early_stopping_patience))
    return callbacks


def enable_speed_ups(model: torch.nn.Module, training_args: SoftPromptTrainingArguments) -> None:
    """The recipes' exact speed-ups (``--label_only_logits``, ``--shared_prompt``), in training and eval loss.

    Sharing the virtual tokens runs the base model's layers twice per forward (the virtual tokens, then the
    batch); FSDP expects one run per forward, so under FSDP the virtual tokens stay per row.
    """
    if training_args.label_only_logits:  # the same loss, with logits only where labels are supervised
        enable_label_only_logits(model, in_eval=True)
    if not training_args.shared_prompt:
        return
    if fsdp_requested(training_args):
        logger.info("FSDP: the soft prompt's virtual tokens are computed per row (--shared_prompt needs plain DDP).")
        return
    enable_shared_prompt(model, in_eval=True)  # the same loss; a log line says why if it cannot be exact
