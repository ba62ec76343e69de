"""A recipe's first step, before any data or model loads: logging, the output folder, the checkpoint to resume from.

Each check refuses input that cannot work with a message that names the flag and the fix, so that a run fails in
its first second rather than an epoch later.
"""

from __future__ import annotations

import logging as std_logging
import os
import tempfile
from pathlib import Path

from transformers import TrainingArguments
from transformers.utils import logging

from ..training.checkpoints import check_complete_checkpoint, last_complete_checkpoint

__all__ = ["check_output_dir", "resolve_resume_checkpoint", "setup_logging"]


def setup_logging(training_args: TrainingArguments) -> None:
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


def check_output_dir(training_args: TrainingArguments) -> None:
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


def resolve_resume_checkpoint(training_args: TrainingArguments) -> str | None:
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
