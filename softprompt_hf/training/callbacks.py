"""Trainer callbacks for soft prompts, each with one job.

- ``SoftPromptCheckpointCallback``: checkpoints that really resume (and ``load_best_model_at_end``) for the
  three methods: it saves the trainable modules themselves and loads them back in place of peft's adapter file.
- ``SoftPromptGuardCallback`` (and ``check_trainer``): refuses, before training, settings that cannot work.
- ``ParameterSummaryCallback``: logs the trainable parameters when training starts.
- ``SamplePredictionsCallback``: logs a few generated predictions at each evaluation (logs + TensorBoard).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, PeftType
from safetensors.torch import load_file, save_file
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.utils import logging

from ..adapter.saving import base_tokenizer_files
from ..core.files import atomic_write_json, sha256_of_file
from ..core.sharding import copy_into, reshard_root, trainable_state
from ..core.upstream import (
    adapter_only_fsdp_state_dict,
    intercept_checkpoint_loading,
    load_fsdp_checkpoints_as_soft_prompts,
    route_prefix_cache_argument,
)
from ..evaluation.compute_metrics import GenerationMetrics, TextGenerationMetrics
from ..modeling.methods import check_training_arguments

logger = logging.get_logger(__name__)

__all__ = [
    "CHECKPOINT_MARKER_NAME",
    "LAST_CHECKPOINT_NAME",
    "SOFT_PROMPT_STATE_NAME",
    "ParameterSummaryCallback",
    "SamplePredictionsCallback",
    "SoftPromptCheckpointCallback",
    "SoftPromptGuardCallback",
    "check_trainer",
    "last_complete_checkpoint",
    "load_soft_prompt_state",
    "save_soft_prompt_state",
]

#: The trainable modules' own weights (prompt embeddings before any encoder, the P-tuning MLP/LSTM, the
#: prefix projection), written into each checkpoint next to peft's adapter file.
SOFT_PROMPT_STATE_NAME = "soft_prompt_state.safetensors"
#: Written last into a checkpoint, once everything else is on disk: its presence means "complete".
CHECKPOINT_MARKER_NAME = "softprompt_checkpoint.json"
#: In the Trainer's output_dir: the name and step of the newest complete checkpoint.
LAST_CHECKPOINT_NAME = "last_complete_checkpoint.json"

_CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
_FORMAT_VERSION = 1


# ----------------------------------------------------------------------------------------------------------
# Full-fidelity checkpoints
# ----------------------------------------------------------------------------------------------------------


def _peft_model(model: Any) -> PeftModel:
    # The Trainer hands callbacks its own (unwrapped) model; accept a DDP-wrapped one too.
    model = getattr(model, "module", model)
    if not isinstance(model, PeftModel):
        raise TypeError(
            f"Soft-prompt callbacks need a peft PeftModel, got {type(model).__name__}. Wrap the base model with "
            "softprompt_hf.build_soft_prompt_model (or peft.get_peft_model) before creating the Trainer."
        )
    return model


def save_soft_prompt_state(
    model: Any, checkpoint_dir: str | os.PathLike[str], state: dict[str, torch.Tensor] | None = None
) -> Path:
    """Write the model's trainable parameters (``SOFT_PROMPT_STATE_NAME``) into ``checkpoint_dir`` atomically.

    Unlike peft's ``adapter_model.safetensors``, which holds the prompt the trained modules *produce*, this
    holds the modules themselves, so training can continue from them exactly. ``state`` is what
    ``trainable_state`` read, when every process had to take part in reading it (FSDP2).
    """
    model = _peft_model(model)
    state = trainable_state(model) if state is None else state
    if not state:
        raise ValueError("The model has no trainable parameters: there is no soft prompt to checkpoint.")
    folder = Path(checkpoint_dir)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / SOFT_PROMPT_STATE_NAME
    tmp = folder / f".{SOFT_PROMPT_STATE_NAME}.tmp"
    config = model.peft_config[model.active_adapter]
    save_file(state, str(tmp), metadata={"format": str(_FORMAT_VERSION), "peft_type": str(config.peft_type.value)})
    os.replace(tmp, target)
    return target


@torch.no_grad()
def load_soft_prompt_state(model: Any, checkpoint_dir: str | os.PathLike[str]) -> None:
    """Copy the trainable parameters saved by ``save_soft_prompt_state`` back into ``model``, in place.

    In place, so that an optimizer holding the parameters keeps working. Raises a ``ValueError`` if the
    checkpoint is incomplete or was written for other modules (another method or configuration).
    """
    model = _peft_model(model)
    folder = Path(checkpoint_dir)
    check_complete_checkpoint(folder)
    saved = load_file(str(folder / SOFT_PROMPT_STATE_NAME))
    # Under FSDP2, write into each process's shard, not into gathered copies that FSDP frees later.
    reshard_root(model)
    params = {name: param for name, param in model.named_parameters() if param.requires_grad}
    missing, unexpected = sorted(params.keys() - saved.keys()), sorted(saved.keys() - params.keys())
    if missing or unexpected:
        raise ValueError(
            f"{folder} was saved from another soft-prompt configuration (missing: {missing[:3]}, unexpected: "
            f"{unexpected[:3]}). Resume with the same method and options that wrote the checkpoint."
        )
    for name, param in params.items():
        if saved[name].shape != param.shape:
            raise ValueError(
                f"{folder}: {name} has shape {tuple(saved[name].shape)} in the checkpoint and {tuple(param.shape)} "
                "in the model. Resume with the same method and options that wrote the checkpoint."
            )
        copy_into(param, saved[name])  # under FSDP2, this process's shard of it


def check_complete_checkpoint(folder: Path) -> None:
    """Raises ``ValueError`` (naming the fix) unless ``folder`` is a complete soft-prompt checkpoint: its marker
    file is there and every file it lists has the recorded SHA-256."""
    marker = folder / CHECKPOINT_MARKER_NAME
    if not marker.is_file():
        raise ValueError(
            f"{folder} is not a complete soft-prompt checkpoint ({CHECKPOINT_MARKER_NAME} is missing: the run was "
            "probably interrupted while saving it, or saved without SoftPromptCheckpointCallback). Resume from "
            "the last complete one, softprompt_hf.training.callbacks.last_complete_checkpoint("
            f"{str(folder.parent)!r}), or delete this folder."
        )
    files = json.loads(marker.read_text(encoding="utf-8")).get("files", {})
    for name, digest in files.items():
        path = folder / name
        if not path.is_file() or sha256_of_file(path) != digest:
            raise ValueError(
                f"{path} does not match the checkpoint's record ({CHECKPOINT_MARKER_NAME}): the checkpoint was "
                "changed or damaged after it was saved. Resume from an earlier checkpoint."
            )


def last_complete_checkpoint(output_dir: str | os.PathLike[str]) -> str | None:
    """The newest ``checkpoint-N`` folder in ``output_dir`` that a soft-prompt run finished writing, or None.

    Use it as ``trainer.train(resume_from_checkpoint=last_complete_checkpoint(output_dir))``: the Trainer's own
    ``resume_from_checkpoint=True`` takes the newest folder, even one the run was killed while writing.
    """
    folder = Path(output_dir)
    if not folder.is_dir():
        return None
    steps = []
    for child in folder.iterdir():
        match = _CHECKPOINT_PATTERN.match(child.name)
        if match and (child / CHECKPOINT_MARKER_NAME).is_file():
            steps.append((int(match.group(1)), child))
    return str(max(steps)[1]) if steps else None


def _checkpoint_files(folder: Path) -> list[Path]:
    """The files a checkpoint's marker records: all of them but the marker and hidden temporaries.

    Atomic writes (ours, ``atomic_write_*``) go through a hidden ``.<name>...tmp`` file that is renamed once
    complete; such a file, in any subfolder, is still being written (or was left by a crash) and is no part of
    the checkpoint, so a path with any hidden part is left out.
    """
    return [
        path
        for path in sorted(folder.rglob("*"))
        if path.is_file()
        and path.name != CHECKPOINT_MARKER_NAME
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    ]


def _wait_for_every_process(args: TrainingArguments) -> None:
    """Return once every process of a distributed run got here (at once without a process group).

    transformers 5.24's ``Trainer._save_checkpoint`` has every process write its own ``rng_state_<rank>.pth``
    and then calls ``on_save`` with no barrier in between (pitfall 17 in the project notes; listed in
    ``softprompt_hf.core.upstream``): the main process must wait for the others before it hashes the folder,
    or the marker misses or mis-hashes their files.
    """
    if args.world_size <= 1 or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    distributed_state = getattr(args, "distributed_state", None)
    if distributed_state is not None:
        distributed_state.wait_for_everyone()
    else:
        torch.distributed.barrier()


def _checkpoint_tokenizer(kwargs: dict[str, Any]) -> Any:
    """What the Trainer saves into each checkpoint as the tokenizer: its ``processing_class``, else its data
    collator's ``tokenizer``."""
    tokenizer = kwargs.get("processing_class")
    if tokenizer is None:
        collator = getattr(kwargs.get("train_dataloader"), "collate_fn", None)
        tokenizer = getattr(getattr(collator, "data_collator", collator), "tokenizer", None)
    return tokenizer


def _needs_module_state(model: PeftModel, adapter_name: str) -> bool:
    # For these, peft's adapter file holds the encoder's *output*, which cannot be loaded back into the
    # encoder's input (P-tuning would apply its MLP twice; the prefix projection's shapes differ).
    config = model.peft_config[adapter_name]
    return config.peft_type == PeftType.P_TUNING or (
        config.peft_type == PeftType.PREFIX_TUNING and bool(getattr(config, "prefix_projection", False))
    )


def _load_checkpoint(model: PeftModel, folder: Path, adapter_name: str) -> bool:
    """Loads our full state from a checkpoint that has one; ``False`` for a folder peft's loader should read.

    The Trainer loads checkpoints (resume, ``load_best_model_at_end``) with ``model.load_adapter``; this runs
    first (``softprompt_hf.core.upstream.intercept_checkpoint_loading``).
    """
    if not (
        folder.is_dir() and adapter_name in model.peft_config and model.peft_config[adapter_name].is_prompt_learning
    ):
        return False
    if (folder / SOFT_PROMPT_STATE_NAME).is_file() or (folder / CHECKPOINT_MARKER_NAME).is_file():
        load_soft_prompt_state(model, folder)
        logger.info(f"Restored the soft prompt's trainable modules from {folder}")
        return True
    if _needs_module_state(model, adapter_name):
        raise ValueError(
            f"{folder} has no {SOFT_PROMPT_STATE_NAME}: its adapter file holds only the prompt that the "
            "trained encoder produced, and loading that back into the encoder would silently corrupt "
            "it. Checkpoints written with SoftPromptCheckpointCallback resume exactly; this one can be "
            "used for inference only (AutoPeftModelForCausalLM.from_pretrained)."
        )
    return False


class SoftPromptCheckpointCallback(TrainerCallback):
    """Checkpoints from which soft-prompt training resumes exactly, and from which the best one is reloaded.

    peft's checkpoint file holds only the final prompt (P-tuning's encoder output, the prefix projection's
    output), so the Trainer's ``resume_from_checkpoint`` and ``load_best_model_at_end`` cannot restore the
    modules that produce it (pitfall 8 in the project notes). This callback

    - writes the trainable modules (``SOFT_PROMPT_STATE_NAME``) into every checkpoint, then a marker with the
      SHA-256 of every file (``CHECKPOINT_MARKER_NAME``: a checkpoint without it is incomplete), and records
      the newest complete checkpoint in ``output_dir/last_complete_checkpoint.json``. In a distributed run the
      main process first waits for every process to finish its part of the checkpoint (its RNG state);
    - removes the tokenizer files the Trainer saves into each checkpoint (its ``processing_class``) when they are
      the base model's own tokenizer's, byte for byte (Gemma 3's 262k-token ``tokenizer.json`` is 33 MB): resuming
      needs none, and the base model has it. A changed tokenizer (a pad token set to EOS, say) stays;
    - makes the model load those modules whenever the Trainer loads a checkpoint into it. The Trainer itself
      restores the optimizer, the scheduler, the RNG states and the data order.

    Example:

    ```python
    >>> from transformers import Trainer, TrainingArguments
    >>> from softprompt_hf import SoftPromptDataCollator
    >>> args = TrainingArguments("run", max_steps=2, save_steps=1, remove_unused_columns=False, report_to=[])
    >>> trainer = Trainer(model, args, train_dataset=data.train, data_collator=SoftPromptDataCollator(tokenizer),
    ...                   callbacks=[SoftPromptCheckpointCallback()])
    >>> trainer.train(resume_from_checkpoint=last_complete_checkpoint(args.output_dir)).global_step  # None: start
    {'train_runtime': ...}
    2
    >>> last_complete_checkpoint(args.output_dir)  # what a rerun of the same line resumes from
    'run/checkpoint-2'

    ```
    """

    def __init__(self) -> None:
        # The base model's tokenizer files as the run's tokenizer saves them ({} where it is another), found once.
        self._base_tokenizer: dict[str, str] | None = None

    def on_init_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        model = kwargs.get("model")
        if model is not None:
            peft_model = _peft_model(model)
            route_prefix_cache_argument(peft_model)
            intercept_checkpoint_loading(peft_model, _load_checkpoint)

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        # Every process gets here (the Trainer calls on_save on all of them), so all of them reach the barrier,
        # and all of them gather the soft prompt's parameters when FSDP2 shards them.
        _wait_for_every_process(args)
        trainable = trainable_state(_peft_model(kwargs["model"]))
        if not args.should_save:
            return
        folder = Path(str(args.output_dir)) / f"checkpoint-{state.global_step}"
        if not folder.is_dir():
            logger.warning(f"Expected the Trainer's checkpoint at {folder}; no soft-prompt state written.")
            return
        save_soft_prompt_state(kwargs["model"], folder, trainable)
        files = {path.relative_to(folder).as_posix(): sha256_of_file(path) for path in _checkpoint_files(folder)}
        tokenizer_files = self._base_tokenizer_files(kwargs["model"], _checkpoint_tokenizer(kwargs))
        if tokenizer_files and all(files.get(name) == digest for name, digest in tokenizer_files.items()):
            for name in tokenizer_files:
                (folder / name).unlink()
                del files[name]
        record = {"format": _FORMAT_VERSION, "global_step": state.global_step, "files": files}
        atomic_write_json(folder / CHECKPOINT_MARKER_NAME, record)
        atomic_write_json(
            Path(str(args.output_dir)) / LAST_CHECKPOINT_NAME,
            {"checkpoint": folder.name, "global_step": state.global_step},
        )

    def _base_tokenizer_files(self, model: Any, tokenizer: Any) -> dict[str, str]:
        if self._base_tokenizer is None:
            peft_model = _peft_model(model)
            base = peft_model.peft_config[peft_model.active_adapter].base_model_name_or_path
            self._base_tokenizer = base_tokenizer_files(tokenizer, base) or {}
        return self._base_tokenizer


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
        peft_model = _peft_model(model)
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
    load_fsdp_checkpoints_as_soft_prompts(trainer, _load_checkpoint)
    _check_arguments(trainer.args, model)
    peft_model = _peft_model(model)
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
            route_prefix_cache_argument(_peft_model(model))

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
