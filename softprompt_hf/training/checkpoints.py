"""Checkpoints that really resume: the soft prompt's trainable modules saved into each of the Trainer's checkpoints
and loaded back in place of peft's adapter file (``SoftPromptCheckpointCallback``), each checkpoint marked complete
only once every file is on disk, and the newest complete one found again (``last_complete_checkpoint``).
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
from ..core.upstream import intercept_checkpoint_loading, route_prefix_cache_argument

logger = logging.get_logger(__name__)

__all__ = [
    "CHECKPOINT_MARKER_NAME",
    "LAST_CHECKPOINT_NAME",
    "SOFT_PROMPT_STATE_NAME",
    "SoftPromptCheckpointCallback",
    "check_complete_checkpoint",
    "last_complete_checkpoint",
    "load_checkpoint",
    "load_soft_prompt_state",
    "peft_model_of",
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


def peft_model_of(model: Any) -> PeftModel:
    """The ``PeftModel`` a callback is handed (the Trainer's own, unwrapped; a DDP-wrapped one too), or a
    ``TypeError`` that says how to build one."""
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
    model = peft_model_of(model)
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
    model = peft_model_of(model)
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
            "the last complete one, softprompt_hf.training.checkpoints.last_complete_checkpoint("
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


def load_checkpoint(model: PeftModel, folder: Path, adapter_name: str) -> bool:
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
            peft_model = peft_model_of(model)
            route_prefix_cache_argument(peft_model)
            intercept_checkpoint_loading(peft_model, load_checkpoint)

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        # Every process gets here (the Trainer calls on_save on all of them), so all of them reach the barrier,
        # and all of them gather the soft prompt's parameters when FSDP2 shards them.
        _wait_for_every_process(args)
        trainable = trainable_state(peft_model_of(kwargs["model"]))
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
            peft_model = peft_model_of(model)
            base = peft_model.peft_config[peft_model.active_adapter].base_model_name_or_path
            self._base_tokenizer = base_tokenizer_files(tokenizer, base) or {}
        return self._base_tokenizer
