"""Run by tests/test_callbacks.py under torchrun with 2 CPU processes (gloo): checkpoints while one process is late.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/scripts/ddp_checkpoints.py OUTPUT_DIR

Every process writes its own ``rng_state_<rank>.pth`` into each checkpoint, and nothing in the Trainer waits for
them before the main process's ``on_save``. Here process 1 writes its RNG state late (a sleep before the
Trainer's own ``_save_rng_state``), so a marker written without waiting for it misses or mis-hashes that file.
The script trains 3 steps with a checkpoint every step, then resumes (both processes) from the last complete
checkpoint up to step 5, and writes ``report.json`` (the global steps reached) from the main process.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

from accelerate import PartialState
from transformers import Trainer

from softprompt_hf.core.upstream import exit_without_gloo_teardown

sys.path.insert(0, str(Path(__file__).parent))
from resumable_run import run  # noqa: E402

LATE_PROCESS = 1
FIRST_STEPS = 3
RESUMED_STEPS = 5
_save_rng_state = Trainer._save_rng_state


def _late_rng_state(self: Trainer, output_dir: str) -> None:
    if self.args.process_index == LATE_PROCESS:
        time.sleep(1.5)  # long enough for the main process to reach on_save first if nothing waits
    _save_rng_state(self, output_dir)


def main(output_dir: str) -> None:
    Trainer._save_rng_state = _late_rng_state  # type: ignore[method-assign]
    common = {"save_steps": 1, "per_device_train_batch_size": 4, "ddp_find_unused_parameters": False}
    first = run(output_dir, "p_tuning", max_steps=FIRST_STEPS, **common)
    # Resuming checks the marker on every process (the checkpoint loader) and loads each process's RNG state.
    resumed = run(output_dir, "p_tuning", resume=True, max_steps=RESUMED_STEPS, **common)
    state = PartialState()
    if state.is_main_process:
        report = {
            "num_processes": state.num_processes,
            "first_steps": first.state.global_step,
            "resumed_steps": resumed.state.global_step,
        }
        Path(output_dir, "report.json").write_text(json.dumps(report), encoding="utf-8")
    resumed.accelerator.wait_for_everyone()  # rank 0 may still be writing the report
    exit_without_gloo_teardown(0)  # not Trainer.end(): torch 2.13's gloo teardown can hang (core.upstream entry 32)


if __name__ == "__main__":
    main(sys.argv[1])
