"""Short soft-prompt runs of each method, run by tests/test_fsdp.py under FSDP2 or in one process.

    # FSDP2 over 2 CPU processes (gloo), through the launcher that lets accelerate take its FSDP branch on CPU:
    accelerate launch --multi_gpu --num_processes 2 --use_fsdp --fsdp_version 2 ... \\
        tests/scripts/cpu_fsdp.py tests/scripts/fsdp_run.py OUT --per_device_batch 4
    # The same run in one process, without FSDP:
    python tests/scripts/fsdp_run.py OUT --per_device_batch 8

For each method: 6 training steps (a checkpoint and a generation evaluation every 3, the best one loaded at the
end), then an evaluation by generation on the 32 validation rows and ones by rank and by constrained decoding on 33,
and the adapter saved. Each process writes ``OUT/<method>/process_<rank>.json``: the logged losses, the evaluations'
metrics and per-row outputs and scores, and the most bytes of the base model's parameters it held after a training
step; the main process writes the trainable parameters (``trainable.safetensors``) and the adapter folder.
``--kill_at_step N`` SIGKILLs every process at the end of step N; ``--resume`` continues from the last complete
checkpoint. ``--evaluate_first`` calls ``trainer.evaluate()`` before ``trainer.train()`` (under FSDP2 the Trainer
then prepares the model alone, which accelerate 1.15 refuses: softprompt_hf.core.upstream entry 31) and reports its
metrics and generated texts; ``--per_device_eval_batch`` is the Trainer's eval batch per process.
"""

from __future__ import annotations

import argparse
import json
import logging as std_logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch
from accelerate import PartialState
from resumable_run import run
from safetensors.torch import save_file
from transformers import TrainerCallback

from softprompt_hf import GenerationMetrics, load_raft, save_adapter
from softprompt_hf.core.sharding import gathered_root, local_parameter_bytes, trainable_state
from softprompt_hf.core.upstream import exit_without_gloo_teardown
from softprompt_hf.embedded import EMBEDDED_DATA_FILES
from softprompt_hf.training.callbacks import check_trainer
from softprompt_hf.training.checkpoints import last_complete_checkpoint

STEPS, EVERY = 6, 3


class _Served(std_logging.Handler):
    """Counts the one-token forwards a process ran in step with the others (the sharding module's debug line)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def emit(self, record: std_logging.LogRecord) -> None:
        if "one-token forwards" in record.getMessage():
            self.count += int(record.args[0])  # type: ignore[index]


class _ParameterBytes(TrainerCallback):
    """The frozen base's bytes on this process after each training step (FSDP2: the shards only; the root unit
    is gathered during an evaluation and stays so until the next backward)."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.seen.append(local_parameter_bytes(model))


def main(
    out: Path,
    methods: list[str],
    per_device_batch: int,
    kill_at_step: int | None,
    resume: bool,
    evaluate_first: bool = False,
    per_device_eval_batch: int = 8,
) -> None:
    state = PartialState()
    for method in methods:
        folder = out / method
        memory = _ParameterBytes()
        trainer = run(
            folder, method, evaluate=True, train=False, kill_at_step=kill_at_step, callbacks=[memory],
            per_device_train_batch_size=per_device_batch, max_steps=STEPS, save_steps=EVERY, eval_strategy="steps",
            eval_steps=EVERY, logging_steps=1, load_best_model_at_end=True, metric_for_best_model="f1",
            per_device_eval_batch_size=per_device_eval_batch,
        )  # fmt: skip
        check_trainer(trainer)  # what recipes/train.py does: FSDP2 saves and loads (softprompt_hf.core.upstream)
        first = None
        if evaluate_first:
            metrics = trainer.evaluate()
            first = {"metrics": metrics, "outputs": [p.output for p in trainer.compute_metrics.last_predictions]}
        trainer.train(resume_from_checkpoint=last_complete_checkpoint(folder) if resume else None)
        generate = trainer.compute_metrics
        assert isinstance(generate, GenerationMetrics)
        model = trainer.model
        generated = generate.evaluate(model)
        # 33 rows in batches of 4: 17 and 16 rows, 5 and 4 batches, so one process runs out of forwards first and
        # runs one-token forwards in step with the other (softprompt_hf.core.sharding).
        rows = load_raft(data_files=EMBEDDED_DATA_FILES, validation_size=0.2, seed=7).validation.select(range(33))
        rank = GenerationMetrics(
            generate.tokenizer, generate.labels, rows, text_column=generate.text_column, mode="rank", batch_size=4
        )
        served, sharding_logger = _Served(), std_logging.getLogger("softprompt_hf.core.sharding")
        sharding_logger.addHandler(served)
        sharding_logger.setLevel(std_logging.DEBUG)
        ranked = rank.evaluate(model)
        sharding_logger.removeHandler(served)
        constrained = GenerationMetrics(
            generate.tokenizer,
            generate.labels,
            rows,
            text_column=generate.text_column,
            mode="constrained",
            batch_size=4,
        )
        constrained_metrics = constrained.evaluate(model)
        trainable = trainable_state(model)  # every process: under FSDP2 the parameters are gathered
        report = {
            "processes": state.num_processes,
            "losses": [log["loss"] for log in trainer.state.log_history if "loss" in log],
            "best_checkpoint": trainer.state.best_model_checkpoint,
            "generate": {"metrics": generated, "outputs": [p.output for p in generate.last_predictions]},
            "rank": {
                "metrics": ranked,
                "predicted": [p.predicted for p in rank.last_predictions],
                "scores": [p.scores for p in rank.last_predictions],
            },
            "constrained": {
                "metrics": constrained_metrics,
                "predicted": [p.predicted for p in constrained.last_predictions],
            },
            "base_parameter_bytes": max(memory.seen),
            "one_token_forwards": served.count,
            "evaluate_first": first,
        }
        (folder / f"process_{state.process_index}.json").write_text(json.dumps(report))
        with gathered_root(model):  # every process gathers the soft prompt; the main process saves it
            if state.is_main_process:
                save_file(trainable, str(folder / "trainable.safetensors"))
                save_adapter(model, folder / "adapter", tokenizer=generate.tokenizer, labels=generate.labels)
        state.wait_for_everyone()
    if torch.distributed.is_initialized():  # not destroyed: torch 2.13's gloo teardown can hang (upstream entry 32)
        exit_without_gloo_teardown(0)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--methods", nargs="+", default=["prompt_tuning", "p_tuning", "prefix_tuning"])
    parser.add_argument("--per_device_batch", type=int, default=8)
    parser.add_argument("--kill_at_step", type=int)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--evaluate_first", action="store_true")
    parser.add_argument("--per_device_eval_batch", type=int, default=8)
    options = parser.parse_args()
    main(
        options.out,
        options.methods,
        options.per_device_batch,
        options.kill_at_step,
        options.resume,
        evaluate_first=options.evaluate_first,
        per_device_eval_batch=options.per_device_eval_batch,
    )
