"""The benchmarks on a GPU: bloomz-560m's full architecture (random weights, nothing downloaded), bfloat16.

    python benchmarks/gpu.py                         # on a CUDA machine (never run yet; minutes)
    python benchmarks/gpu.py --smoke                 # the same code on a tiny model on the CPU (smoke test)
    python benchmarks/gpu.py --json_dir "$OUT"       # also each table as a JSON file (train, mfu, eval, ...)
    python benchmarks/gpu.py --parts eval memory     # only some of the tables

Runs ``train_throughput.py``, ``eval_throughput.py``, ``eval_ceiling.py`` and ``eval_memory.py`` with ``--size
bloomz-560m --device cuda --bf16`` (in that order; each part prints its table, and writes its JSON file, as soon
as it is done) and adds, for our training path, real (non-pad) tokens/s and the model FLOPs utilisation (MFU):

    MFU = samples/s x model FLOPs per sample / peak bf16 FLOP/s of the device

where a sample's model FLOPs are those that any soft-prompt method must spend on it: ``4 x P_body`` per real
token (forward, and the backward to the activations; the frozen weights need no weight gradients; P_body =
12 x hidden^2 x layers, attention scores ignored at these lengths) plus ``4 x hidden x vocab`` per supervised
position (the LM head, forward and backward). Padding, virtual tokens and logits at unsupervised positions
count as waste, not as useful FLOPs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402
import eval_ceiling  # noqa: E402
import eval_memory  # noqa: E402
import eval_throughput  # noqa: E402
import torch  # noqa: E402
import train_throughput  # noqa: E402

from softprompt_hf import SoftPromptDataCollator  # noqa: E402

# Dense bf16 peak (no sparsity) by device name, TFLOP/s.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0}

MFU_HEADERS = ["method", "ours samples/s", "ours real tokens/s", "model TFLOP/s", "MFU", "seed samples/s"]
PARTS = ("train", "eval", "ceiling", "memory")


def peak_tflops(device: str, given: float | None) -> float | None:
    if given is not None:
        return given
    if not device.startswith("cuda") or not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((value for key, value in PEAK_TFLOPS.items() if key in name), None)


def flops_per_sample(size: c.ModelSize, tok: Any, rows: list[dict]) -> tuple[float, float]:
    """Mean model FLOPs and real tokens per training sample of ``rows`` (see the module docstring)."""
    batch = SoftPromptDataCollator(tok)(rows)
    tokens = float(batch["attention_mask"].sum()) / len(rows)
    supervised = float((batch["labels"] != -100).sum()) / len(rows)
    body = 12 * size.hidden_size**2 * size.n_layer
    return 4 * body * tokens + 4 * size.hidden_size * size.vocab_size * supervised, tokens


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="Tiny model on the CPU, a few steps: checks the code.")
    parser.add_argument("--peak_tflops", type=float, help="The device's dense bf16 peak (default: by device name).")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json_dir", help="Also write each table's figures as JSON files into this folder.")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="Which tables to run.")
    args = parser.parse_args(argv)
    json_path = (lambda name: str(Path(args.json_dir) / f"{name}.json")) if args.json_dir else (lambda name: None)
    if args.json_dir:
        Path(args.json_dir).mkdir(parents=True, exist_ok=True)
    if args.smoke:
        common = ["--size", "tiny", "--device", "cpu", "--bf16", "--repeats", "1", "--methods", "prompt_tuning"]
        train_extra = ["--steps", "1", "--batches", "1"]
        eval_extra = ["--rows", "16", "--seed_repeats", "1", "--check_rows", "8"]
        memory_argv = ["--size", "tiny", "--device", "cpu", "--bf16", "--rows", "16", "32", "--modes", "generate"]
    else:
        if not torch.cuda.is_available():
            parser.error("no CUDA device: run with --smoke to check the code on the CPU")
        common = ["--size", "bloomz-560m", "--device", "cuda", "--bf16", "--repeats", str(args.repeats)]
        train_extra = ["--steps", "8", "--batches", "4", "--profile"]
        eval_extra = ["--rows", "512", "--seed_repeats", "2"]
        memory_argv = ["--size", "bloomz-560m", "--device", "cuda", "--bf16", "--batch_size", "32"]

    c.quiet()
    if "train" in args.parts:
        train_and_mfu(args, common + train_extra, json_path)
    if "eval" in args.parts:
        eval_args = eval_throughput.parse_args(common + eval_extra)
        eval_args.argv = common + eval_extra
        eval_args.json = json_path("eval")
        eval_throughput.main(eval_args)
    if "ceiling" in args.parts:
        ceiling_argv = common[: common.index("--repeats")] + (["--rows", "16", "--repeats", "1"] if args.smoke else [])
        ceiling_args = eval_ceiling.parse_args(ceiling_argv)
        ceiling_args.argv = ceiling_argv
        ceiling_args.json = json_path("ceiling")
        eval_ceiling.main(ceiling_args)
    if "memory" in args.parts:
        memory_args = eval_memory.parse_args(memory_argv)
        memory_args.argv = memory_argv
        memory_args.json = json_path("memory")
        eval_memory.main(memory_args)


def train_and_mfu(args: argparse.Namespace, train_argv: list[str], json_path: Any) -> None:
    train_args = train_throughput.parse_args(train_argv)
    train_args.argv = train_argv
    train_args.json = json_path("train")
    results = train_throughput.main(train_args)

    tok = c.tokenizer()
    flops, tokens = flops_per_sample(train_args.model_size, tok, c.labelled_rows())
    peak = peak_tflops(train_args.device, args.peak_tflops)
    rows = []
    for method, seed_speed, _, ours_speed, *_ in results.get("end_to_end", []):
        achieved = ours_speed * flops / 1e12
        rows.append(
            [method, ours_speed, ours_speed * tokens, achieved, f"{achieved / peak:.1%}" if peak else "-", seed_speed]
        )
    print("## Tokens/s and model FLOPs utilisation (our path)\n")
    print(f"Model FLOPs per sample {flops / 1e9:.2f} GFLOP ({tokens:.1f} real tokens); peak {peak} TFLOP/s\n")
    print(c.table(MFU_HEADERS, rows))
    print()
    c.dump_json(json_path("mfu"), {"flops_per_sample": flops, "real_tokens_per_sample": tokens, "rows": rows})


if __name__ == "__main__":
    main()
