"""The compute-bound ceiling of evaluation on this device: how many rows/s the FLOPs alone allow.

    python benchmarks/eval_ceiling.py --threads 1     # the CPU model of RESULTS.md, the rows of table 4
    python benchmarks/eval_ceiling.py --size tiny     # smoke test

Counts the model FLOPs per validation row of each evaluation path (the layers' matrix products over the
positions a path runs, and the projections onto the vocabulary it computes; attention scores, norms and
activations are left out, so the counts are a floor) and measures this device's matrix-product rate on the
model's own two shapes: a layer's linear over a batch of prompts, and the vocabulary projection of a batch's
last positions, both as one matrix product and as the package computes it for decoding (a chunk of the
vocabulary at a time, reduced to the argmax, ``softprompt_hf.inference.output_head.ChunkedOutputHead``; on a CPU for the
rows of several batches decoded in step, 128 rows). Dividing gives
the rows/s a path would reach if it did nothing but those products at those rates; and, as a bound for any
implementation on this device, if every FLOP ran at the best of the measured rates. Table 4's measured rows/s
read against these.

Per row, for the method's virtual tokens v, the prompt's tokens p (of which s are the opening every prompt
shares), the labels' tokens (with EOS) l_1..l_k, n = max l_j new tokens, and 24 h^2 FLOPs per token per layer:

- the seed's one-by-one generation: (v + p + n - 1) tokens through the layers, n vocabulary projections;
- ``generate`` mode: (p - s + n - 1) tokens (the virtual tokens and the shared opening run once per call),
  n projections;
- ``rank`` mode: (p - s) + sum_j (l_j - 1) tokens, 1 + sum_j (l_j - 1) projections.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402
import torch  # noqa: E402
from eval_throughput import LABELS  # noqa: E402

from softprompt_hf.data.prompt import PromptTemplate
from softprompt_hf.inference.engine import PROJECTION_ROWS, common_prefix  # noqa: E402
from softprompt_hf.inference.output_head import ChunkedOutputHead  # noqa: E402

HEADERS = [
    "path",
    "tokens through the layers per row",
    "vocabulary projections per row",
    "GFLOP per row",
    "ceiling, rows/s (one-product projection)",
    "ceiling, rows/s (chunked projection)",
    "bound, rows/s (every FLOP at the best rate)",
]


def matmul_rate(rows: int, inner: int, cols: int, device: str, dtype: torch.dtype, repeats: int) -> float:
    """GFLOP/s of ``(rows, inner) @ (inner, cols)`` on ``device``, median of ``repeats`` timings."""
    a = torch.randn(rows, inner, device=device, dtype=dtype)
    b = torch.randn(inner, cols, device=device, dtype=dtype)
    torch.mm(a, b)  # warm-up
    seconds = c.median([c.timed(lambda: torch.mm(a, b), device) for _ in range(repeats)])
    return 2 * rows * inner * cols / seconds / 1e9


def chunked_head_rate(rows: int, hidden: int, vocab: int, device: str, dtype: torch.dtype, repeats: int) -> float:
    """GFLOP/s of the package's decoding projection: ``rows`` positions onto the vocabulary, chunk by chunk,
    reduced to each row's argmax."""
    head = ChunkedOutputHead(torch.nn.Linear(hidden, vocab, bias=False, device=device, dtype=dtype))
    states = torch.randn(rows, hidden, device=device, dtype=dtype)
    with torch.no_grad():
        head.argmax(states)  # warm-up
        seconds = c.median([c.timed(lambda: head.argmax(states), device) for _ in range(repeats)])
    return 2 * rows * hidden * vocab / seconds / 1e9


def per_row_counts(args: argparse.Namespace, tok: Any, virtual: int) -> dict[str, tuple[float, float]]:
    """Mean tokens through the layers and vocabulary projections per row, for each path."""
    texts = [row[c.TEXT_COLUMN] for row in c.labelled_rows(args.rows)]
    prompts = [PromptTemplate().encode(tok, text) for text in texts]
    prompt = sum(len(ids) for ids in prompts) / len(prompts)
    shared = len(common_prefix(prompts))
    labels = [len(PromptTemplate().encode_target(tok, label)) for label in LABELS]
    new_tokens = max(labels)  # the longest label + EOS: what generation decodes
    continuations = sum(length - 1 for length in labels)
    return {
        "one by one (the seed)": (virtual + prompt + new_tokens - 1, new_tokens),
        "`generate` mode": (prompt - shared + new_tokens - 1, new_tokens),
        "`rank` mode": (prompt - shared + continuations, 1 + continuations),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(c.SIZES), default="cpu")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--batch_size", type=int, default=32, help="Rows per batch, as in table 4.")
    parser.add_argument("--virtual_tokens", type=int, default=8, help="Prompt tuning's, as in table 4.")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", help="Also write the results to this JSON file.")
    c.add_threads_argument(parser)
    args = parser.parse_args(argv)
    args.model_size = c.SIZES[args.size]
    return args


def main(args: argparse.Namespace) -> list[list[Any]]:
    c.quiet()
    c.set_threads(args.threads)
    tok = c.tokenizer()
    size = args.model_size
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    print(c.header("Evaluation: the compute-bound ceiling", "python benchmarks/eval_ceiling.py" + c.flags(args)))
    counts = per_row_counts(args, tok, args.virtual_tokens)
    prompt_tokens = round(counts["`generate` mode"][0]) * args.batch_size
    layer_rate = matmul_rate(prompt_tokens, size.hidden_size, 4 * size.hidden_size, args.device, dtype, args.repeats)
    head_shape = (size.hidden_size, size.vocab_size, args.device, dtype, args.repeats)
    head_rate = matmul_rate(args.batch_size, *head_shape)
    # What the package projects at once: on a CPU the rows of the batches it decodes in step.
    grouped = args.batch_size * max(1, PROJECTION_ROWS // args.batch_size) if args.device == "cpu" else args.batch_size
    chunked_rate = chunked_head_rate(grouped, *head_shape)
    best_rate = max(layer_rate, head_rate, chunked_rate)
    print(
        f"Model: {size.describe()}. Matrix products on this device: a layer's linear over a batch's prompts "
        f"({prompt_tokens} x {size.hidden_size} @ {size.hidden_size} x {4 * size.hidden_size}) "
        f"{layer_rate:.1f} GFLOP/s; the vocabulary projection of {args.batch_size} rows "
        f"({args.batch_size} x {size.hidden_size} @ {size.hidden_size} x {size.vocab_size:,}) {head_rate:.1f} GFLOP/s "
        f"as one product; {grouped} rows chunked with the argmax (ChunkedOutputHead) {chunked_rate:.1f} GFLOP/s\n"
    )
    layer_flops = 24 * size.hidden_size**2 * size.n_layer
    head_flops = 2 * size.hidden_size * size.vocab_size
    results = []
    for path, (tokens, projections) in counts.items():
        flops = tokens * layer_flops + projections * head_flops
        ceilings = [
            1 / (tokens * layer_flops / (layer_rate * 1e9) + projections * head_flops / (rate * 1e9))
            for rate in (head_rate, chunked_rate)
        ]
        results.append([path, tokens, projections, flops / 1e9, *ceilings, best_rate * 1e9 / flops])
    print(c.table(HEADERS, results))
    print()
    c.dump_json(
        args.json,
        {"layer_gflops": layer_rate, "head_gflops": head_rate, "chunked_head_gflops": chunked_rate, "paths": results},
    )
    return results


if __name__ == "__main__":
    main(parse_args())
