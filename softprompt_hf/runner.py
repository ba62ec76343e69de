"""What the recipes in ``recipes/`` share: a run's start, its Trainer and its end.

A recipe parses its arguments (``softprompt_hf.training.arguments.parse_recipe_args``), builds its method's peft config
itself, and makes three calls: ``start_run`` (logging, the Hub push taken over, the output folder checked, the
seed, data, tokenizer and metrics), ``build_trainer`` (the base model wrapped with the peft config, a stock
``Trainer`` with our collator, metrics and callbacks) and, after ``trainer.train()``, ``finish_recipe``
(the final evaluation, the outputs, the push and ``Trainer.end()``). ``run_recipe`` runs a recipe's ``main``,
reports bad input in one line, and ends a gloo process without its teardown (``core.upstream`` entry 32).
"""

from __future__ import annotations

import errno
import json
import logging as std_logging
import math
import os
import sys
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import PeftConfig
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    EarlyStoppingCallback,
    PreTrainedTokenizerBase,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.utils import logging

from .adapter.card import ModelCardCallback
from .adapter.hub import HubPushError, check_push_access, push_adapter_folder
from .adapter.saving import save_adapter
from .constants import DEFAULT_TIMEOUT
from .core import upstream
from .core.files import atomic_write_json
from .core.locations import is_hub_id, is_local_path
from .core.sharding import gathered_root
from .data.chat import ChatTemplate, prompt_format
from .data.collator import SoftPromptDataCollator
from .data.loading import ClassificationData, TextData, load_classification_data, load_raft, load_text_data
from .data.prompt import PromptFormat, PromptTemplate
from .data.splits import stratified_split
from .embedded import EMBEDDED_DATA_FILES, label_tokenization_for
from .evaluation.compute_metrics import GenerationMetrics, TextGenerationMetrics
from .evaluation.prediction_files import write_predictions, write_raft_submission
from .modeling.initialization import SoftPromptInit
from .modeling.label_logits import enable_label_only_logits
from .modeling.methods import build_soft_prompt_model
from .modeling.shared_prompt import enable_shared_prompt
from .real import ExtraNotInstalledError, load_aclsum, load_bbc_news
from .training.arguments import (
    DataArguments,
    ModelArguments,
    RecipeArguments,
    SoftPromptTrainingArguments,
    fsdp_requested,
)
from .training.callbacks import (
    ParameterSummaryCallback,
    SamplePredictionsCallback,
    SoftPromptGuardCallback,
    check_trainer,
)
from .training.checkpoints import SoftPromptCheckpointCallback, check_complete_checkpoint, last_complete_checkpoint

logger = logging.get_logger(__name__)

__all__ = [
    "HubTarget",
    "RecipeRun",
    "build_trainer",
    "finish_recipe",
    "finish_run",
    "push_run",
    "run_recipe",
    "start_run",
    "user_error_message",
]

ADAPTER_DIRNAME = "adapter"
PREDICTIONS_NAME = "predictions.csv"
SUBMISSION_NAME = "raft_submission.csv"
RESULTS_NAME = "eval_results.json"


@dataclass
class RecipeRun:
    """A recipe run from ``start_run`` to ``finish_recipe``: what the steps after the start need."""

    args: RecipeArguments
    data: ClassificationData | TextData
    tokenizer: PreTrainedTokenizerBase
    metrics: GenerationMetrics | TextGenerationMetrics
    resume_from_checkpoint: str | None = None
    hub_target: HubTarget | None = None

    @property
    def class_labels(self) -> list[str] | None:
        """The label texts of a classification run (``data.classes``); None for free-text targets."""
        return list(self.data.classes) if isinstance(self.data, ClassificationData) else None


def start_run(args: RecipeArguments) -> RecipeRun:
    """Start a recipe run: everything that can be checked before a model is loaded, then the data.

    Shows the progress on the main process; takes the Hub push over from the Trainer (and checks it can work:
    see ``_take_over_hub_push``; the token leaves ``args.training``); makes sure ``output_dir`` can be written
    and ``--resume_from_checkpoint`` names a complete checkpoint; sets the seed; loads the data (with its
    stratified, seeded validation split), the tokenizer and the generation-based metrics.

    Raises:
        ValueError: For input that cannot work, before any training, with what to change.
    """
    training_args = args.training
    _setup_logging(training_args)
    hub_target = _take_over_hub_push(training_args, args.model)  # pushed by finish_recipe, not the Trainer
    _check_output_dir(training_args)  # writable now, not only when the first checkpoint is due
    resume = _resolve_resume_checkpoint(training_args)
    set_seed(training_args.seed)
    if args.data.label_tokenization is None:  # the base model's own boundary: one value for the whole run
        args.data.label_tokenization = label_tokenization_for(args.model.model_name_or_path)
    data = _load_data(args.data, seed=training_args.seed)
    # Every field of the template is a column of the data, before the tokenizer and model load.
    _prompt(data, args.data).check_columns(data.train.column_names, where="the training data")
    if isinstance(data, TextData):
        _choose_text_metric_for_best_model(training_args, args.data)
    tokenizer = _load_tokenizer(args.model)
    if args.data.chat_template:
        _check_chat_template(tokenizer, args.model)
    metrics = _build_metrics(tokenizer, data, args.data, training_args)
    return RecipeRun(args, data, tokenizer, metrics, resume_from_checkpoint=resume, hub_target=hub_target)


def build_trainer(run: RecipeRun, peft_config: PeftConfig, init: SoftPromptInit | None = None) -> Trainer:
    """The frozen base model wrapped with ``peft_config``, in a stock ``Trainer`` set up for soft prompts.

    ``init`` says where the soft prompt starts (``SoftPromptArguments.initialization``; default: the config's own,
    see ``build_soft_prompt_model``). The model gets the recipes' exact speed-ups (``--label_only_logits``,
    ``--shared_prompt``); the Trainer gets our collator (the run's template and length cap), the generation-based
    metrics, and the callbacks: refusals, checkpoints that resume exactly, the parameter summary, sample
    predictions and early stopping. Its evaluations only decode, without the loss pass, unless ``--eval_loss``.
    """
    args = run.args
    base_model = AutoModelForCausalLM.from_pretrained(args.model.model_name_or_path)
    model = build_soft_prompt_model(
        base_model, peft_config, tokenizer=run.tokenizer, training_args=args.training, init=init
    )
    _enable_speed_ups(model, args.training)
    trainer = Trainer(
        model=model,
        args=args.training,
        train_dataset=run.data.train,
        eval_dataset=run.data.validation,
        data_collator=_build_collator(run.tokenizer, run.data, args.data),
        processing_class=run.tokenizer,
        compute_metrics=run.metrics,
        preprocess_logits_for_metrics=run.metrics.trainer_kwargs()["preprocess_logits_for_metrics"],
        callbacks=_callbacks(run.metrics, args.training),
    )
    check_trainer(trainer)
    if not args.training.eval_loss:
        run.metrics.skip_loss_pass(trainer)  # evaluations decode only (--eval_loss keeps the loss pass)
    return trainer


def finish_recipe(trainer: Trainer, run: RecipeRun) -> dict[str, Any]:
    """End a recipe run: evaluate the best adapter and write the outputs (``finish_run``), push the saved folder
    (``--push_to_hub``), print the recipe's one-line summary on the main process, wait for every process, then
    ``trainer.end()`` (trackers finish, the process group is destroyed).

    A gloo group (processes on CPU) is not destroyed: torch 2.13's gloo teardown can hang or crash a run whose
    work had all finished (``core.upstream`` entry 32). ``run_recipe`` then ends the process without tearing the
    group down; a script that calls a recipe's ``main`` itself should end its processes the same way
    (``softprompt_hf.core.upstream.exit_without_gloo_teardown``). Returns the final validation metrics.
    """
    args = run.args
    results = finish_run(
        trainer,
        run.metrics,
        run.data,
        model_args=args.model,
        data_args=args.data,
        predict_unlabeled=args.training.predict_unlabeled,
        repo_id=run.hub_target,
    )
    if run.hub_target is not None:
        push_run(trainer, run.hub_target, args.model)
    if trainer.is_world_process_zero():
        # The recipe's output on the command line, like run_recipe's error line: not a log record.
        print(_summary_line(args.prompt.method, results, run.data, str(args.training.output_dir)))
    # Trainer.end() destroys the process group without waiting: the main process may still be writing or pushing.
    trainer.accelerator.wait_for_everyone()
    if upstream.gloo_group_alive():
        for tracker in trainer.accelerator.trackers:  # what Trainer.end() does besides destroying the group
            tracker.finish()
    else:
        trainer.end()
    return results


def _setup_logging(training_args: TrainingArguments) -> None:
    """Show the run's own INFO lines (parameter summary, sample predictions, outputs written) on the main process,
    and the Trainer's at ``--log_level``; warnings elsewhere (``--log_level_replica``)."""
    std_logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=std_logging.WARNING)
    level = training_args.get_process_log_level()
    logging.set_verbosity(level)
    ours = level
    if training_args.log_level == "passive" and training_args.should_log:
        # "passive" leaves transformers at its default, WARNING, which would hide the few lines a recipe run is
        # for; `--log_level info` shows them together with every INFO line of transformers.
        ours = min(level, std_logging.INFO)
    std_logging.getLogger("softprompt_hf").setLevel(ours)


def _load_data(data_args: DataArguments, seed: int) -> ClassificationData | TextData:
    """Load the data a recipe trains on, with its stratified, seeded validation split, and its train rows cut to
    a stratified subset of ``--max_train_samples`` if set (``--task text``: a seeded validation split and subset)."""
    if data_args.task == "text":
        return _load_text(data_args, seed)
    data = _load_splits(data_args, seed)
    wanted = data_args.max_train_samples
    if wanted is not None and wanted < len(data.train):
        if wanted < len(data.classes):
            raise ValueError(
                f"--max_train_samples {wanted} is fewer rows than the {len(data.classes)} classes: every class needs "
                "a training row. Give at least that many."
            )
        # The subset is what a stratified split would hold out: each class in proportion, seeded.
        _, subset = stratified_split(data.train, data.label_column, wanted, seed)
        data = replace(data, train=subset)
    return data


def _load_text(data_args: DataArguments, seed: int) -> TextData:
    """``--task text``: the text-to-text files, the template's columns as sources; the id column kept when the data
    has it; ``--max_train_samples`` a seeded random subset of the train rows, in their order."""
    prompt = PromptTemplate(data_args.template, data_args.text_column or "text")
    if data_args.dataset == "aclsum":
        sources = [name.strip() for name in data_args.aclsum_source.split(",") if name.strip()]
        data = load_aclsum(data_args.aclsum_aspect, sources)  # its own splits: train, val (validation), test
        return _train_subset(data, data_args.max_train_samples, seed)
    files = {split: path for split, path in (("train", data_args.train_file), ("test", data_args.test_file)) if path}
    if "train" not in files:
        raise ValueError("--task text needs --train_file: the rows with the source column(s) and --target_column.")
    if "text" in prompt.fields and data_args.text_column is None:
        raise ValueError(
            f"The template {data_args.template!r} reads {{text}}: give --text_column (the column it reads), or "
            "write the template with your columns' names in braces, e.g. 'Abstract : {abstract} Summary : '."
        )
    assert data_args.target_column is not None  # DataArguments requires it with --task text
    size: float | int = int(data_args.validation_size) if data_args.validation_size >= 1 else data_args.validation_size
    try:
        data = load_text_data(
            files,
            source_columns=list(prompt.columns),
            target_column=data_args.target_column,
            validation_size=size,
            seed=seed,
        )
    except ValueError as err:
        raise ValueError(
            f"{err} (In a recipe the source columns are the fields of --template, the reference is --target_column.)"
        ) from err
    if data_args.id_column is not None and data_args.id_column in data.train.column_names:
        data = replace(data, id_column=data_args.id_column)
    return _train_subset(data, data_args.max_train_samples, seed)


def _train_subset(data: TextData, wanted: int | None, seed: int) -> TextData:
    """``--max_train_samples``: a seeded random subset of the train rows, in their order."""
    if wanted is not None and wanted < len(data.train):
        keep = sorted(np.random.default_rng(seed).choice(len(data.train), size=wanted, replace=False).tolist())
        data = replace(data, train=data.train.select(keep))
    return data


def _prompt(data: ClassificationData | TextData, data_args: DataArguments) -> PromptFormat:
    """The run's prompt (``--template``, or with ``--chat_template`` a ``ChatTemplate``), reading ``{text}`` from
    the data's text column."""
    text_column = _text_column(data, data_args)
    return prompt_format(data_args.prompt(text_column), text_column, _label_tokenization(data_args))


def _check_chat_template(tokenizer: PreTrainedTokenizerBase, model_args: ModelArguments) -> None:
    """``--chat_template true`` on a tokenizer whose chat template cannot build the prompts: the message names the
    model and the flag to drop."""
    try:
        ChatTemplate().check_tokenizer(tokenizer)
    except ValueError as err:
        raise ValueError(
            f"--chat_template true with {model_args.model_name_or_path!r}: {err} In a recipe: leave out "
            "--chat_template (or set chat_template: false) and write the prompt in --template."
        ) from err


def _text_column(data: ClassificationData | TextData, data_args: DataArguments) -> str:
    """The column ``{text}`` reads: the classification data's text column, or ``--text_column`` (``--task text``)."""
    if isinstance(data, ClassificationData):
        return data.text_column
    return data_args.text_column or "text"


def _text_metric_names(data_args: DataArguments) -> list[str] | None:
    """``--text_metrics`` as a list of names (None: every shipped metric)."""
    if data_args.text_metrics is None:
        return None
    return [name.strip() for name in data_args.text_metrics.split(",") if name.strip()]


def _choose_text_metric_for_best_model(training_args: TrainingArguments, data_args: DataArguments) -> None:
    """A free-text run picks its best adapter by ROUGE-L (else the first metric asked for) where the recipes' default,
    macro-F1, was left: a text task reports no F1."""
    if training_args.metric_for_best_model not in (None, "f1", "eval_f1"):
        return
    names = _text_metric_names(data_args) or ["rouge"]
    chosen = "rougeL" if "rouge" in names else names[0]
    logger.info("--task text: the best adapter is the one with the highest %s (--metric_for_best_model).", chosen)
    training_args.metric_for_best_model = chosen
    training_args.greater_is_better = True


def _load_splits(data_args: DataArguments, seed: int) -> ClassificationData:
    size: float | int = int(data_args.validation_size) if data_args.validation_size >= 1 else data_args.validation_size
    class_names = [name.strip() for name in data_args.class_names.split(",")] if data_args.class_names else None
    files = {split: path for split, path in (("train", data_args.train_file), ("test", data_args.test_file)) if path}
    common: dict[str, Any] = {
        "label_column": data_args.label_column,
        "id_column": data_args.id_column,
        "class_names": class_names,
        "unlabeled_class": data_args.unlabeled_class,
        "validation_size": size,
        "seed": seed,
    }
    if data_args.dataset == "embedded":
        return load_raft(data_files=EMBEDDED_DATA_FILES, text_column=data_args.text_column, **common)
    if data_args.dataset == "raft":
        return load_raft(data_args.raft_subset, files or None, text_column=data_args.text_column, **common)
    if data_args.dataset == "bbc_news":
        # Its columns and topics are fixed; the recipes score the validation split, so no test rows are held out.
        return load_bbc_news(text=data_args.bbc_news_text, validation_size=size, test_size=0, seed=seed)
    if not files or data_args.text_column is None:
        raise ValueError("dataset=files needs --train_file (and optionally --test_file) and --text_column.")
    return load_classification_data(files, text_column=data_args.text_column, **common)


def _load_tokenizer(model_args: ModelArguments) -> PreTrainedTokenizerBase:
    """The base model's tokenizer; EOS doubles as the pad token if it has none (a new token would resize the
    vocabulary and put the whole embedding matrix into the adapter).

    Raises:
        ValueError: If ``model_name_or_path`` is a local path that is not a model folder, or cannot be loaded, or
            its tokenizer has no EOS token (the target of every row ends with it).
    """
    source = model_args.model_name_or_path
    _check_model_source(source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    # ValueError: a folder without tokenizer files (transformers 5.24; listed in softprompt_hf.core.upstream).
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if is_local_path(source):
            fix = "Save the model's tokenizer into that folder too (tokenizer.save_pretrained(folder))."
        else:
            fix = (
                "There is no local folder of that name; pass an existing model folder or a Hub id (offline, download "
                f"it first while online: `hf download {source}`)."
            )
        raise ValueError(f"--model_name_or_path {source}: could not load its tokenizer ({first}). {fix}") from err
    if tokenizer.eos_token is None:
        raise ValueError(_no_eos_message(source, tokenizer))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _check_model_source(source: str) -> None:
    if not is_local_path(source):
        return
    path = Path(source).expanduser()
    if not path.exists():
        raise ValueError(
            f"--model_name_or_path {source}: no such folder. Pass the folder that holds the model's config.json "
            "and weights, or a Hub id such as bigscience/bloomz-560m."
        )
    if not path.is_dir() or not (path / "config.json").is_file():
        raise ValueError(
            f"--model_name_or_path {source} is not a model folder (it has no config.json). Pass the folder that "
            "model.save_pretrained() (or `hf download`) wrote."
        )


def _no_eos_message(source: str, tokenizer: PreTrainedTokenizerBase) -> str:
    from transformers import AutoConfig

    pad = f"its pad token is {tokenizer.pad_token!r}" if tokenizer.pad_token is not None else "it has no pad token"
    hint = ""
    try:
        eos_id = AutoConfig.from_pretrained(source).eos_token_id
    except (OSError, ValueError):
        eos_id = None
    if isinstance(eos_id, list):
        eos_id = eos_id[0] if eos_id else None
    if isinstance(eos_id, int) and 0 <= eos_id < len(tokenizer):
        token = tokenizer.convert_ids_to_tokens(eos_id)
        hint = f" The model's config.json names token {eos_id} ({token!r}) as its end of sequence:"
        hint += f' add "eos_token": {json.dumps(token)} to {source}/tokenizer_config.json.'
    else:
        hint = ' Add the model\'s end-of-sequence token as "eos_token" to its tokenizer_config.json.'
    return (
        f"The tokenizer of {source} has no EOS token ({pad}). Every training target ends with EOS, so that "
        f"generation knows where a label stops, and EOS is reused as the pad token.{hint}"
    )


def _label_tokenization(data_args: DataArguments) -> str:
    """The run's ``label_tokenization``: ``start_run`` sets it to the base model's own when left unset (None); a
    ``DataArguments`` used without it gets the collator's default."""
    return data_args.label_tokenization or "joint"


def _build_collator(
    tokenizer: PreTrainedTokenizerBase, data: ClassificationData | TextData, data_args: DataArguments
) -> SoftPromptDataCollator:
    """The training collator for ``data`` with the run's template and length caps."""
    collator = SoftPromptDataCollator(
        tokenizer,
        text_column=_text_column(data, data_args),
        target_column=data.target_column,
        template=data_args.prompt(_text_column(data, data_args)),
        max_length=data_args.max_length,
        label_tokenization=_label_tokenization(data_args),
        max_target_length=data_args.max_target_length,
    )
    if isinstance(data, TextData) and (data_args.max_length is not None or data_args.max_target_length is not None):
        collator.count_cut(data.train)  # one warning with the counts of sources and targets cut
    return collator


def _build_metrics(
    tokenizer: PreTrainedTokenizerBase,
    data: ClassificationData | TextData,
    data_args: DataArguments,
    training_args: SoftPromptTrainingArguments,
) -> GenerationMetrics | TextGenerationMetrics:
    """Generation-based metrics on the validation split, prompts cut exactly as in training."""
    if data.validation is None or len(data.validation) == 0:
        raise ValueError("The recipes evaluate on a validation split: set --validation_size above 0.")
    prompt = _prompt(data, data_args)
    template = data_args.prompt(_text_column(data, data_args))
    if isinstance(data, TextData):
        metrics = TextGenerationMetrics(
            tokenizer,
            data.validation,
            text_column=_text_column(data, data_args),
            target_column=data.target_column,
            id_column=data.id_column,
            template=template,
            metrics=_text_metric_names(data_args),
            max_new_tokens=data_args.max_target_length,
            batch_size=training_args.per_device_eval_batch_size,
            label_tokenization=_label_tokenization(data_args),
        )
        if data_args.max_length is not None:
            # The room the collator leaves the longest target: max_length minus what evaluation may generate.
            metrics.max_prompt_tokens = max(1, data_args.max_length - (metrics.max_new_tokens or 1))
        return metrics
    max_prompt_tokens = None
    if data_args.max_length is not None:
        # The collator's budget: max_length minus the target (label + EOS), for the longest label.
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
        label_tokenization=_label_tokenization(data_args),
        mode=training_args.eval_mode,
        batch_size=training_args.per_device_eval_batch_size,
        max_prompt_tokens=max_prompt_tokens,
    )


def _callbacks(
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


def _enable_speed_ups(model: torch.nn.Module, training_args: SoftPromptTrainingArguments) -> None:
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


def _resolve_resume_checkpoint(training_args: TrainingArguments) -> str | None:
    """``--resume_from_checkpoint`` as a path, or ``last``/``true`` for the newest *complete* checkpoint.

    The checkpoint's files are checked against the SHA-256 record written when it was saved, before any
    training: a damaged or truncated checkpoint is refused with the newest intact one to resume from instead.
    """
    value = training_args.resume_from_checkpoint
    if value is None or str(value).lower() in ("", "false", "none"):
        return None
    output_dir = str(training_args.output_dir)
    if str(value).lower() in ("last", "true"):
        checkpoint = last_complete_checkpoint(output_dir)
        if checkpoint is None:
            raise ValueError(
                f"--resume_from_checkpoint {value}: no complete checkpoint in {training_args.output_dir}. Start "
                "without it, or pass a checkpoint folder."
            )
    else:
        if not Path(value).is_dir():
            raise ValueError(f"--resume_from_checkpoint {value}: no such folder.")
        checkpoint = str(value)
    try:
        check_complete_checkpoint(Path(checkpoint))
    except ValueError as err:
        raise ValueError(f"--resume_from_checkpoint {value}: {err}{_intact_alternative(checkpoint)}") from None
    return checkpoint


def _intact_alternative(damaged: str) -> str:
    """Where to resume from instead of ``damaged``: the newest older checkpoint whose files match their record."""
    folder = Path(damaged)
    older = []
    for child in folder.parent.glob("checkpoint-*"):
        step = child.name.removeprefix("checkpoint-")
        if child != folder and step.isdigit() and child.is_dir():
            older.append((int(step), child))
    for _, child in sorted(older, reverse=True):
        try:
            check_complete_checkpoint(child)
        except ValueError:
            continue
        return f" The newest intact checkpoint is {child}: pass --resume_from_checkpoint {child}."
    return " No other intact checkpoint was found: start without --resume_from_checkpoint."


def _check_output_dir(training_args: TrainingArguments) -> None:
    """Make sure ``output_dir`` can be written, before any training (the first checkpoint comes an epoch later).

    Creates the folder if needed and writes, then removes, a probe file in it.

    Raises:
        ValueError: If ``output_dir`` is a file, or cannot be created or written (read-only file system, no
            permission, disk full).
    """
    output_dir = Path(str(training_args.output_dir))
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"--output_dir {output_dir} is a file, not a folder: pass a folder for the run's outputs.")
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".write-test-", dir=output_dir)
        os.close(handle)
        os.unlink(probe)
    except OSError as err:
        reason = err.strerror or str(err)
        raise ValueError(
            f"--output_dir {output_dir} cannot be written ({reason}): checkpoints and the adapter go there. Pass "
            "--output_dir with a folder you can write to."
        ) from err


@dataclass
class HubTarget:
    """Where and how a recipe pushes its adapter (``_take_over_hub_push``); the token stays out of its repr."""

    repo_id: str
    token: str | None = field(default=None, repr=False)
    private: bool | None = None
    timeout: float | None = DEFAULT_TIMEOUT

    def __str__(self) -> str:
        return self.repo_id


def _take_over_hub_push(training_args: TrainingArguments, model_args: ModelArguments) -> HubTarget | None:
    """Turn the Trainer's own Hub push off and return where the recipe pushes to itself, if anywhere.

    The Trainer pushes with ``PeftModel.push_to_hub``, which on transformers 5.x replaces peft's card with a
    wrong one; the recipes push the complete local ``adapter/`` folder instead, once, at the end. What would
    make that push fail is refused here, before any training: no ``--hub_model_id``, a base model without a Hub
    id, offline mode, no token or one the Hub rejects, no write access to the namespace (``check_push_access``;
    every process calls this, and all refuse together).

    ``--hub_token`` moves from ``training_args`` into the returned ``HubTarget``: the Trainer pickles its
    ``TrainingArguments`` into every checkpoint (``training_args.bin``), so the token must not stay there.
    """
    token, training_args.hub_token = training_args.hub_token, None
    if not training_args.push_to_hub:
        return None
    if not training_args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id <user or org>/<repository>.")
    if not is_hub_id(base_model_id(model_args)):
        raise ValueError(
            f"--push_to_hub: the base model {model_args.model_name_or_path} is a local folder, and an adapter that "
            "names it cannot be loaded by anyone else. Pass --base_model_id <its Hub id> (e.g. "
            "bigscience/bloomz-560m)."
        )
    target = HubTarget(
        training_args.hub_model_id,
        token=token,
        private=training_args.hub_private_repo,
        timeout=getattr(training_args, "push_timeout", DEFAULT_TIMEOUT),
    )
    check_push_access(target.repo_id, token=target.token, timeout=target.timeout)
    training_args.push_to_hub = False
    return target


def push_run(trainer: Trainer, repo: HubTarget | str, model_args: ModelArguments) -> None:
    """Push the run's saved ``adapter/`` folder to ``repo`` (main process only).

    ``repo`` is what ``_take_over_hub_push`` returned (or a repository id: then the token is the saved login or
    ``HF_TOKEN``). Raises ``softprompt_hf.adapter.hub.HubPushError`` (which says what happened and gives the command
    that pushes the saved folder later) on failure.
    """
    if not trainer.is_world_process_zero():
        return
    target = repo if isinstance(repo, HubTarget) else HubTarget(repo, private=trainer.args.hub_private_repo)
    push_adapter_folder(
        Path(str(trainer.args.output_dir)) / ADAPTER_DIRNAME,
        target.repo_id,
        token=target.token,
        private=target.private,
        base_model_id=base_model_id(model_args),
        timeout=target.timeout,
    )


def _summary_line(method: str, results: dict[str, Any], data: ClassificationData | TextData, output_dir: str) -> str:
    """The one line a recipe prints at the end."""
    keys: tuple[str, ...] = ("eval_accuracy", "eval_f1", "eval_invalid_rate")
    if isinstance(data, TextData):
        keys = ("eval_rougeL", "eval_bleu", "eval_chrf", "eval_exact_match", "eval_gen_len")
    shown = ", ".join(f"{key.removeprefix('eval_')} {results[key]:.3f}" for key in keys if key in results)
    rows = len(data.validation) if data.validation is not None else 0
    return f"{method}: validation {shown} ({rows} rows); adapter saved to {Path(output_dir) / ADAPTER_DIRNAME}"


#: Set this environment variable to 1 to get the full traceback of an error a recipe reports in one line.
TRACEBACK_ENV = "SOFTPROMPT_HF_TRACEBACK"

# Faults of the machine rather than of the code: reported in one line wherever they are raised.
_ENVIRONMENT_ERRORS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
}
_PACKAGE_DIR = Path(__file__).resolve().parent


def user_error_message(err: BaseException) -> str | None:
    """The message to show for an error caused by a run's input or machine, or ``None`` for a bug.

    Input errors are the ``ValueError``/``OSError``/``HubPushError`` that softprompt_hf raises itself (its
    messages name the problem and the fix), and ``ExtraNotInstalledError`` (it names the pip command); machine
    faults are a full disk, a read-only file system or a missing permission, wherever raised. Anything else is
    unexpected and keeps its traceback.
    """
    if isinstance(err, OSError) and err.errno in _ENVIRONMENT_ERRORS:
        where = f" writing {err.filename}" if err.filename else ""
        return (
            f"{_ENVIRONMENT_ERRORS[err.errno]}{where} ({err.strerror or err}). Free space or fix the permissions (or "
            "pass another --output_dir) and run again: the files saved before the failure are complete, and "
            "--resume_from_checkpoint last continues from the newest complete checkpoint."
        )
    if isinstance(err, (ValueError, OSError, HubPushError, ExtraNotInstalledError)) and _raised_in_package(err):
        return str(err)
    return None


def _raised_in_package(err: BaseException) -> bool:
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(_PACKAGE_DIR)


def run_recipe(main: Callable[[list[str]], Any], argv: list[str] | None = None) -> int:
    """Run a recipe's ``main(argv)`` and return its exit code: 0, or 1 after an input error printed in one line.

    A recipe's ``__main__`` block is ``sys.exit(run_recipe(main))``. Errors that softprompt_hf raises about the
    input (and a full disk or read-only folder) print ``error: <message>`` on stderr without a traceback;
    with ``SOFTPROMPT_HF_TRACEBACK=1`` they are raised as usual. Any other exception is a bug and propagates
    with its traceback. In a distributed run each process exits on its own: an input error is found by every
    process alike, and a process that fails alone exits non-zero, which makes the launcher stop the others.

    A process that a launcher started (``WORLD_SIZE`` set) in a gloo group (distributed on CPU) does not return:
    once the exit handlers have run it ends with ``os._exit`` and this exit code (a bug's traceback printed first),
    so that torch 2.13's gloo teardown, which can hang or crash there, never runs (``core.upstream`` entry 32).
    """
    try:
        main(sys.argv[1:] if argv is None else argv)
        code = 0
    except Exception as err:
        message = user_error_message(err)
        if message is None or os.environ.get(TRACEBACK_ENV, "").lower() in ("1", "true", "yes"):
            if not upstream.launched_gloo_process():
                raise
            traceback.print_exc()  # what the interpreter prints for an uncaught exception, then exit code 1
        else:
            print(f"error: {message}", file=sys.stderr)
        code = 1
    # No barrier after an error: the other processes may have failed too, or be waiting elsewhere.
    if upstream.launched_gloo_process():
        upstream.exit_without_gloo_teardown(code)
    if code and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return code


def base_model_id(model_args: ModelArguments) -> str:
    """The base model's name for the adapter: the Hub id if given, else what it was loaded from."""
    return model_args.base_model_id or model_args.model_name_or_path


def finish_run(
    trainer: Trainer,
    metrics: GenerationMetrics | TextGenerationMetrics,
    data: ClassificationData | TextData,
    *,
    model_args: ModelArguments,
    data_args: DataArguments,
    predict_unlabeled: bool = True,
    repo_id: HubTarget | str | None = None,
) -> dict[str, Any]:
    """Evaluate the final (or best) adapter, then write the run's outputs into ``output_dir``:

    ``eval_results.json``, ``predictions.csv`` (the validation rows: text, gold and predicted label; for a free-text
    task, text, reference and output), ``adapter/`` (adapter + model card + ``softprompt_hf.json``, + the tokenizer
    where it is not the base model's; written atomically) and, when the data has unlabelled rows,
    ``raft_submission.csv``. ``repo_id`` is the Hub repository the folder will be pushed to, if any (the
    card's usage example loads it from there; a push elsewhere renders the card again from the inputs kept in
    ``softprompt_hf.json``). Returns the final validation metrics.
    """
    results = trainer.evaluate()
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
            return results
        atomic_write_json(output_dir / RESULTS_NAME, {k: v for k, v in results.items() if _jsonable(v)})
        write_predictions(output_dir / PREDICTIONS_NAME, metrics.last_predictions)
        save_adapter(
            model,
            output_dir / ADAPTER_DIRNAME,
            tokenizer=trainer.processing_class,
            base_model_id=model_args.base_model_id,
            card=_model_card(trainer, metrics, data, model_args, data_args, results),
            repo_id=str(repo_id) if repo_id is not None else None,
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
    return results


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
    dataset = {"raft": "ought/raft"}.get(data_args.dataset)
    collector = ModelCardCallback.of(
        trainer,
        base_model=base_model_id(model_args),
        metrics=metrics,
        # A local base model (the embedded default) gets a card that says it has no Hub id.
        allow_local_base=not is_hub_id(base_model_id(model_args)),
        dataset=dataset,
        dataset_config=data_args.raft_subset if dataset else None,
    )
    return collector.card_data(
        trainer.model,
        metrics=results,
        labels=list(data.classes) if isinstance(data, ClassificationData) else None,
        template=data_args.prompt(_text_column(data, data_args)),
        text_column=_text_column(data, data_args),
        label_tokenization=_label_tokenization(data_args),
    )
