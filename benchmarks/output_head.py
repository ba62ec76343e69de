"""The vocabulary projection of decoding: one matrix product against the package's chunked head.

    python benchmarks/output_head.py --threads 1      # three real output-layer shapes, 32 and 128 rows
    python benchmarks/output_head.py --shapes 32x4096 --rows 4 --repeats 1   # smoke test

For each output layer (hidden size x vocabulary) and number of rows, in one process with the runs interleaved:
what decoding needs from the projection (each row's argmax) and what rank mode needs (two tokens' log-softmax),
computed the stock way (``layer(hidden)``, then ``argmax`` / ``log_softmax`` + ``gather``, the whole logits
tensor in memory) and by ``softprompt_hf.inference.output_head.ChunkedOutputHead`` (a chunk of the vocabulary at a
time). Both must give the same argmax and the same log-probabilities (within 1e-4) before anything is timed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402
import torch  # noqa: E402

from softprompt_hf.inference.output_head import ChunkedOutputHead  # noqa: E402

# GPT-2's, a Llama-1B-like and table 4's (bloomz' vocabulary at hidden 512).
SHAPES = ["768x50257", "2048x32000", "512x250880"]

HEADERS = [
    "hidden x vocabulary",
    "rows",
    "argmax, one product (ms)",
    "argmax, chunked (ms)",
    "**speed-up**",
    "log-probs, one product (ms)",
    "log-probs, chunked (ms)",
    "**speed-up**",
]


def run_shape(args: argparse.Namespace, shape: str, rows: int) -> list[Any]:
    hidden_size, vocab = (int(part) for part in shape.split("x"))
    torch.manual_seed(0)
    layer = torch.nn.Linear(hidden_size, vocab, bias=False, device=args.device)
    head = ChunkedOutputHead(layer)
    hidden = torch.randn(rows, hidden_size, device=args.device)
    tokens = torch.randint(0, vocab, (rows, 2), device=args.device)
    paths = {
        "argmax_one": lambda: layer(hidden).argmax(dim=-1),
        "argmax_chunked": lambda: head.argmax(hidden),
        "log_probs_one": lambda: torch.log_softmax(layer(hidden).float(), dim=-1).gather(-1, tokens),
        "log_probs_chunked": lambda: head.log_probs(hidden, tokens),
    }
    with torch.no_grad():
        if not torch.equal(paths["argmax_one"](), paths["argmax_chunked"]()):
            raise AssertionError(f"{shape}, {rows} rows: the chunked argmax differs from the one-product argmax")
        difference = (paths["log_probs_one"]() - paths["log_probs_chunked"]()).abs().max().item()
        if difference > 1e-4:
            raise AssertionError(f"{shape}, {rows} rows: log-probabilities differ by {difference}")
        times = c.interleaved_times(paths, args.repeats, args.device)
    ms = {name: 1e3 * c.median(values) for name, values in times.items()}
    return [
        f"{hidden_size} x {vocab:,}",
        rows,
        ms["argmax_one"],
        ms["argmax_chunked"],
        ms["argmax_one"] / ms["argmax_chunked"],
        ms["log_probs_one"],
        ms["log_probs_chunked"],
        ms["log_probs_one"] / ms["log_probs_chunked"],
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shapes", nargs="+", default=SHAPES, help="Output layers as HIDDENxVOCAB.")
    parser.add_argument("--rows", type=int, nargs="+", default=[32, 128], help="Positions projected at once.")
    parser.add_argument("--repeats", type=int, default=5, help="Timings per path; figures are medians.")
    parser.add_argument("--json", help="Also write the results to this JSON file.")
    c.add_threads_argument(parser)
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> list[list[Any]]:
    c.quiet()
    c.set_threads(args.threads)
    print(
        c.header(
            "The vocabulary projection: one product vs chunked", "python benchmarks/output_head.py" + c.flags(args)
        )
    )
    print(c.table(HEADERS, []))
    results = []
    for shape in args.shapes:
        for rows in args.rows:
            results.append(run_shape(args, shape, rows))
            print(c.table(HEADERS, results[-1:]).splitlines()[-1], flush=True)
    print()
    c.dump_json(args.json, results)
    return results


if __name__ == "__main__":
    main(parse_args())
