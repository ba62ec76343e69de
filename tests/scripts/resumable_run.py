"""A short soft-prompt training run on the embedded model, used by the resume tests.

    python tests/scripts/resumable_run.py OUTPUT_DIR --method p_tuning [--kill_at_step 6] [--resume]

With ``--kill_at_step N`` the process SIGKILLs itself at the end of step N (after its checkpoints up to that
step were written), like a preempted job. With ``--resume`` it continues from the last complete checkpoint.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback, TrainingArguments, set_seed

from softprompt_hf import GenerationMetrics, SoftPromptDataCollator, build_soft_prompt_model, load_raft
from softprompt_hf.embedded import EMBEDDED_DATA_FILES, EMBEDDED_MODEL_PATH
from softprompt_hf.training.checkpoints import SoftPromptCheckpointCallback, last_complete_checkpoint

MAX_STEPS = 12
SAVE_STEPS = 4


class _KillAt(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)


def _method_options(method: str, prefix_projection: bool) -> dict:
    """Each method's own options (SoftPromptArguments refuses those of another method)."""
    if method == "prompt_tuning":
        return {"prompt_tuning_init": "RANDOM"}
    if method == "p_tuning":
        return {"encoder_hidden_size": 16}
    return {"prefix_projection": True, "encoder_hidden_size": 16} if prefix_projection else {}


def run(
    output_dir: str | Path,
    method: str,
    *,
    prefix_projection: bool = False,
    kill_at_step: int | None = None,
    resume: bool = False,
    seed: int = 7,
    evaluate: bool = False,
    callbacks: list[TrainerCallback] | None = None,
    train: bool = True,
    **overrides,
) -> Trainer:
    """Build (and by default run) the Trainer. ``evaluate=True`` adds generation metrics on 32 validation rows;
    ``overrides`` are TrainingArguments values."""
    set_seed(seed)
    data = load_raft(data_files=EMBEDDED_DATA_FILES, validation_size=0.2, seed=seed)
    train_rows = data.train.select(range(64))
    tokenizer = AutoTokenizer.from_pretrained(EMBEDDED_MODEL_PATH)
    model = build_soft_prompt_model(
        AutoModelForCausalLM.from_pretrained(EMBEDDED_MODEL_PATH),
        method=method,
        num_virtual_tokens=4,
        **_method_options(method, prefix_projection),
    )
    values = {
        "output_dir": str(output_dir),
        "max_steps": MAX_STEPS,
        "save_steps": SAVE_STEPS,
        "per_device_train_batch_size": 8,
        "learning_rate": 3e-2,
        "lr_scheduler_type": "linear",
        "remove_unused_columns": False,
        "report_to": [],
        "logging_steps": 100,
        "seed": seed,
        "use_cpu": True,
        "disable_tqdm": True,
    }
    values.update(overrides)
    args = TrainingArguments(**values)
    all_callbacks: list[TrainerCallback] = [SoftPromptCheckpointCallback(), *(callbacks or [])]
    if kill_at_step is not None:
        all_callbacks.append(_KillAt(kill_at_step))
    extra = {}
    if evaluate:
        validation = data.validation.select(range(32))
        metrics = GenerationMetrics(tokenizer, data.classes, validation, text_column=data.text_column)
        extra = {"eval_dataset": validation, **metrics.trainer_kwargs()}
        all_callbacks.extend(extra.pop("callbacks"))
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_rows,
        data_collator=SoftPromptDataCollator(tokenizer, text_column=data.text_column),
        callbacks=all_callbacks,
        **extra,
    )
    if train:
        trainer.train(resume_from_checkpoint=last_complete_checkpoint(output_dir) if resume else None)
    return trainer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("--method", required=True)
    parser.add_argument("--prefix_projection", action="store_true")
    parser.add_argument("--kill_at_step", type=int)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    run(
        args.output_dir,
        args.method,
        prefix_projection=args.prefix_projection,
        kill_at_step=args.kill_at_step,
        resume=args.resume,
    )


if __name__ == "__main__":
    main()
