"""Peak memory of a full evaluation (``Trainer.evaluate`` with ``GenerationMetrics``) at two eval-set sizes.

    python benchmarks/eval_memory.py                    # 512 and 4,096 rows, both modes
    python benchmarks/eval_memory.py --size tiny --rows 64 256
    python benchmarks/eval_memory.py --size bloomz-560m --device cuda --bf16 --batch_size 32   # on a GPU

Each evaluation runs in a fresh process, which samples its resident memory every few milliseconds; the
figure is the peak during ``trainer.evaluate()`` minus the resident memory just before it (model, data and
Trainer already built). Nothing should grow with the number of eval rows: the Trainer keeps one number per
row (``preprocess_logits_for_metrics`` drops the logits) and generation works batch by batch.

The model keeps bloomz' 250,880-token vocabulary (so a kept logit tensor would be hundreds of MB) but is
narrow and shallow (``--size mem``: hidden 128, 2 layers) so that 4,096 rows evaluate in minutes on a CPU.
The eval loss uses ``enable_label_only_logits(model, in_eval=True)``. The evaluating processes run with
``MALLOC_MMAP_THRESHOLD_=65536`` so that resident memory follows live memory (``--glibc_default_allocator``
turns that off).

With ``--device cuda`` the figure is the GPU memory instead: torch's peak allocated CUDA memory during
``trainer.evaluate()`` minus what was allocated just before it (the model's weights).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402

MEM_SIZE = c.ModelSize(hidden_size=128, n_layer=2, n_head=4)
SIZES = {**c.SIZES, "mem": MEM_SIZE}
HEADERS = ["mode", "rows", "peak during evaluate (MiB)", "seconds", "peak ratio to the smallest set"]


def _memory_kind(device: str) -> str:
    return "GPU memory allocated by torch" if device.startswith("cuda") else "resident memory of the process"


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One evaluation in this process; returns its peak memory above the pre-evaluation baseline."""
    import tempfile

    import torch
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    from softprompt_hf import GenerationMetrics, SoftPromptDataCollator
    from softprompt_hf.modeling.label_logits import enable_label_only_logits

    c.quiet()
    c.set_threads(args.threads)
    rows, mode, cuda = args.rows[0], args.modes[0], args.device.startswith("cuda")
    tok = c.tokenizer()
    eval_rows = Dataset.from_list(c.labelled_rows(rows))
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    model = c.soft_prompt_model(c.base_model(SIZES[args.size], dtype=dtype, device=args.device), "prompt_tuning", tok)
    enable_label_only_logits(model, in_eval=True)
    metrics = GenerationMetrics(tok, ["complaint", "no complaint"], eval_rows, mode=mode, batch_size=args.batch_size)
    with tempfile.TemporaryDirectory() as output_dir:
        training_args = TrainingArguments(
            output_dir=output_dir,
            per_device_eval_batch_size=args.batch_size,
            use_cpu=not cuda,
            remove_unused_columns=False,
            report_to=[],
            disable_tqdm=True,
        )
        trainer = Trainer(
            model=model,
            args=training_args,
            eval_dataset=eval_rows,
            data_collator=SoftPromptDataCollator(tok),
            **metrics.trainer_kwargs(),
        )
        with c.PeakMemory(args.device) as memory:
            start = time.perf_counter()
            result = trainer.evaluate()
            c.sync(args.device)
            seconds = time.perf_counter() - start
    return {
        "rows": rows,
        "mode": mode,
        "peak_mib": memory.bytes / 2**20,
        "seconds": seconds,
        "eval_loss": result["eval_loss"],
    }


def main(args: argparse.Namespace) -> list[list[Any]]:
    command = "python benchmarks/eval_memory.py" + c.flags(args)
    print(c.header("Peak memory of a full evaluation", command))
    dtype = "bfloat16" if args.bf16 else "float32"
    print(
        f"Model: {SIZES[args.size].describe()}, {dtype}, on {args.device}; prompt tuning; batch {args.batch_size}; "
        f"memory: {_memory_kind(args.device)}\n"
    )
    print(c.table(HEADERS, []))
    results = []
    for mode in args.modes:
        measured = []
        for rows in args.rows:
            out = subprocess.run(
                [sys.executable, __file__, "--child", "--size", args.size, "--batch_size", str(args.batch_size)]
                + ["--rows", str(rows), "--modes", mode, "--device", args.device]
                + (["--bf16"] if args.bf16 else [])
                + (["--threads", str(args.threads)] if args.threads else []),
                check=True,
                capture_output=True,
                text=True,
                env=c.low_mmap_threshold_environment(args.glibc_default_allocator),
            ).stdout
            measured.append(json.loads(out.strip().splitlines()[-1]))
        smallest = measured[0]["peak_mib"]
        for m in measured:
            results.append([mode, m["rows"], m["peak_mib"], m["seconds"], m["peak_mib"] / smallest])
            print(c.table(HEADERS, results[-1:]).splitlines()[-1], flush=True)
    print()
    c.dump_json(args.json, results)
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="mem")
    parser.add_argument("--rows", type=int, nargs="+", default=[512, 4096])
    parser.add_argument("--modes", nargs="+", default=["generate", "rank"], choices=["generate", "rank"])
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda: then the GPU memory is measured.")
    parser.add_argument("--bf16", action="store_true", help="Run the model in bfloat16.")
    parser.add_argument(
        "--glibc_default_allocator",
        action="store_true",
        help="Keep glibc's default mmap threshold in the evaluating processes "
        "(see _common.low_mmap_threshold_environment).",
    )
    parser.add_argument("--json", help="Also write the results to this JSON file.")
    c.add_threads_argument(parser)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    parsed = parse_args()
    if parsed.child:
        print(json.dumps(child(parsed)))
    else:
        main(parsed)
