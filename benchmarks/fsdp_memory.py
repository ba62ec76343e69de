"""Per-process parameter memory of a soft-prompt run with the frozen base sharded by FSDP2, at 1 and 2 processes.

    python benchmarks/fsdp_memory.py                 # Bloom with bloomz' 250,880-token vocabulary, 4 layers (minutes)
    python benchmarks/fsdp_memory.py --size tiny     # seconds

Each process count runs the same short training (2 steps of prompt tuning, the stock Trainer) and one evaluation
by generation (GenerationMetrics) under ``accelerate launch --use_fsdp --fsdp_version 2`` on CPU processes (gloo;
through tests/scripts/cpu_fsdp.py, as the FSDP tests do). One process is the run without sharding. Reported per
process: the bytes of the frozen base's parameters it holds after a training step (its shards), and after the
evaluation (the root unit, which holds the embeddings and the output layer, stays gathered after a forward until
the next backward), the trainable parameters' bytes after a step, and the process's peak resident memory. Bytes
are counted from the tensors themselves (each storage once): the figures do not depend on the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _common import (
    SIZES,
    base_model,
    dump_json,
    flags,
    header,
    labelled_rows,
    quiet,
    soft_prompt_model,
    table,
    tokenizer,
)

from softprompt_hf.core.upstream import exit_without_gloo_teardown  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LAUNCHER = REPO / "tests" / "scripts" / "cpu_fsdp.py"
MIB = 1 << 20


def worker(out: Path, size: str) -> None:
    """One process of a run: trains 2 steps and evaluates once, then writes what it holds."""
    from accelerate import PartialState
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from softprompt_hf import GenerationMetrics, SoftPromptDataCollator
    from softprompt_hf.core.sharding import local_parameter_bytes
    from softprompt_hf.training.callbacks import check_trainer

    quiet()
    tok = tokenizer()
    model = soft_prompt_model(base_model(SIZES[size]), "prompt_tuning", tok)
    rows = labelled_rows(16)
    held: list[tuple[int, int]] = []

    class Held(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            held.append((local_parameter_bytes(model), local_parameter_bytes(model, trainable=True)))

    metrics = GenerationMetrics(tok, ["complaint", "no complaint"], rows[:8], batch_size=8)
    args = TrainingArguments(
        output_dir=str(out / "run"), max_steps=2, per_device_train_batch_size=2, learning_rate=3e-2, use_cpu=True,
        save_strategy="no", report_to=[], remove_unused_columns=False, disable_tqdm=True,
    )  # fmt: skip
    trainer = Trainer(
        model=model, args=args, train_dataset=rows, data_collator=SoftPromptDataCollator(tok),
        callbacks=[Held(), metrics],
    )  # fmt: skip
    check_trainer(trainer)
    trainer.train()
    metrics.evaluate(trainer.model)
    state = PartialState()
    report = {
        "processes": state.num_processes,
        "base_after_step": max(frozen for frozen, _ in held),
        "base_after_eval": local_parameter_bytes(trainer.model),
        "trainable": max(trainable for _, trainable in held),
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }
    (out / f"process_{state.process_index}.json").write_text(json.dumps(report))
    state.wait_for_everyone()
    exit_without_gloo_teardown(0)  # not Trainer.end(): torch 2.13's gloo teardown can hang (core.upstream entry 32)


def launch(processes: int, size: str, out: Path) -> list[dict]:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(processes)]
    command += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    command += ["--use_fsdp", "--fsdp_version", "2", "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP"]
    command += [str(LAUNCHER), __file__, "--worker", str(out), "--size", size]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{processes}-process run failed:\n{result.stderr[-4000:]}")
    return [json.loads(path.read_text()) for path in sorted(out.glob("process_*.json"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="cpu")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--json", help="also write the figures as JSON")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.worker, args.size)
        return
    runs: dict[int, list[dict]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for processes in args.processes:
            folder = Path(scratch) / str(processes)
            folder.mkdir()
            runs[processes] = launch(processes, args.size, folder)
    whole = max(report["base_after_step"] for reports in runs.values() for report in reports)
    rows = []
    for processes, reports in runs.items():
        rows.append([
            processes,
            max(r["base_after_step"] for r in reports) / MIB,
            f"{max(r['base_after_step'] for r in reports) / whole:.2f}",
            max(r["base_after_eval"] for r in reports) / MIB,
            max(r["trainable"] for r in reports) / 1024,
            max(r["peak_rss"] for r in reports) / MIB,
        ])  # fmt: skip
    print(header("FSDP2: parameter memory per process", f"python benchmarks/fsdp_memory.py{flags(args)}"))
    print(f"Base model: {SIZES[args.size].describe()}, float32; prompt tuning, 2 training steps and one evaluation.\n")
    print(table(
        ["processes", "base held per process after a step (MiB)", "share of the base",
         "after an evaluation, root unit gathered (MiB)", "trainable per process after a step (KiB)",
         "peak RSS per process (MiB)"],
        rows,
    ))  # fmt: skip
    dump_json(args.json, {str(k): v for k, v in runs.items()})


if __name__ == "__main__":
    main()
