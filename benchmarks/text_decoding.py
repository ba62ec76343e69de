"""Free-text decoding: ``generate_texts`` on the package's engine against one-by-one ``model.generate()``.

    python benchmarks/text_decoding.py                                  # the embedded model, 64 rows, 32 new tokens
    python benchmarks/text_decoding.py --model_name_or_path M --rows 32 --threads 2   # a local model, e.g. Gemma
    python benchmarks/text_decoding.py --models tiny --rows 6 --max_new_tokens 8 --repeats 1   # smoke test

What ``TextGenerationMetrics`` runs for a free-text task, on the same rows and soft-prompt model (the Gemma tweets
template, ``Tweet text : {text} Label : ``; the soft prompt untrained, so no row stops early unless the model writes
its EOS; greedy):

- ``engine``: ``generate_texts`` as the metrics call it (batches of ``--batch_size``, right padding with each row's
  own positions, a key/value cache, the vocabulary projected a chunk at a time);
- ``generate(), one by one``: the fixed ``model.generate()`` (``enable_soft_prompt_generate``), one row per call:
  what a user writes without batching;
- ``generate(), batched``: the same, left-padded batches of ``--batch_size``.

Before any timing the engine's token ids are compared with one-by-one ``generate()``'s on every row; the script
exits 1 if any row differs. Figures: rows/s and new tokens/s (EOS included), medians over ``--repeats`` runs of
each path, interleaved; the ratios are what to read on a shared machine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from softprompt_hf.embedded import EMBEDDED_MODEL_PATH  # noqa: E402
from softprompt_hf.inference.labels import generate_label_ids  # noqa: E402

MODELS = ("embedded", "tiny")
HEADERS = [
    "model",
    "method",
    "rows",
    "same tokens",
    "new tokens",
    "engine, rows/s",
    "engine, tokens/s",
    "generate() 1 by 1, rows/s",
    "generate() batched, rows/s",
    "engine / 1 by 1",
    "engine / batched",
]


def load(args: argparse.Namespace, name: str) -> tuple[Any, Any, str]:
    """The base model, its tokenizer and a description, for ``--models`` name or ``--model_name_or_path``."""
    if name == "embedded":
        tok = c.pretrained_tokenizer(str(EMBEDDED_MODEL_PATH))
        base = AutoModelForCausalLM.from_pretrained(EMBEDDED_MODEL_PATH).to(args.device)
        return base, tok, c.describe_pretrained(str(EMBEDDED_MODEL_PATH))
    if name == "tiny":
        return c.base_model(c.TINY_SIZE, device=args.device), c.tokenizer(), f"tiny ({c.TINY_SIZE.describe()})"
    return c.pretrained_model(name, device=args.device), c.pretrained_tokenizer(name), c.describe_pretrained(name)


def run(args: argparse.Namespace, name: str, method: str, texts: list[str]) -> list[Any]:
    base, tok, _ = load(args, name)
    model = c.soft_prompt_model(base, method, tok).eval()
    common = {"max_new_tokens": args.max_new_tokens, "show_progress": False, "description": "Generating texts"}
    engine = generate_label_ids(model, tok, texts, batch_size=args.batch_size, **common)
    one_by_one = [generate_label_ids(model, tok, [t], batch_size=1, use_generate=True, **common)[0] for t in texts]
    same = sum(a == b for a, b in zip(engine, one_by_one, strict=True))
    new_tokens = sum(len(ids) for ids in engine)
    paths = {
        "engine": lambda: generate_label_ids(model, tok, texts, batch_size=args.batch_size, **common),
        "one": lambda: [generate_label_ids(model, tok, [t], batch_size=1, use_generate=True, **common) for t in texts],
        "batched": lambda: generate_label_ids(
            model, tok, texts, batch_size=args.batch_size, use_generate=True, **common
        ),
    }
    times = c.interleaved_times(paths, args.repeats, args.device)
    rows_per_s = {path: len(texts) / c.median(values) for path, values in times.items()}
    return [
        Path(name).name if name not in MODELS else name,
        method,
        len(texts),
        f"{same}/{len(texts)}",
        new_tokens,
        rows_per_s["engine"],
        rows_per_s["engine"] * new_tokens / len(texts),
        rows_per_s["one"],
        rows_per_s["batched"],
        rows_per_s["engine"] / rows_per_s["one"],
        rows_per_s["engine"] / rows_per_s["batched"],
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["embedded"], choices=MODELS)
    parser.add_argument("--model_name_or_path", help="A local model folder, measured instead of --models.")
    parser.add_argument("--methods", nargs="+", default=list(c.METHODS), choices=c.METHODS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=32, help="Prompts per forward pass (the metrics').")
    parser.add_argument("--repeats", type=int, default=3, help="Runs per path; figures are medians.")
    parser.add_argument("--json", help="Also write the results to this JSON file.")
    c.add_threads_argument(parser)
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    c.quiet()
    c.set_threads(args.threads)
    names = [args.model_name_or_path] if args.model_name_or_path else args.models
    texts = [row[c.TEXT_COLUMN] for row in c.labelled_rows(args.rows)]
    print(c.header(f"Free-text decoding: generate_texts vs generate(), {len(texts)} rows", _command(args)))
    print(
        f"Models: {'; '.join(load(args, name)[2] for name in names)}. Up to {args.max_new_tokens} new tokens; "
        f"batch {args.batch_size}; runs: {args.repeats}\n"
    )
    print(c.table(HEADERS, []))
    results = []
    for name in names:
        for method in args.methods:
            results.append(run(args, name, method, texts))
            print(c.table(HEADERS, results[-1:]).splitlines()[-1], flush=True)
    print()
    c.dump_json(args.json, results)
    differing = [f"{row[0]} {row[1]}" for row in results if row[3] != f"{row[2]}/{row[2]}"]
    if differing:
        print(f"generate() gave other tokens than the engine: {', '.join(differing)}", file=sys.stderr)
        return 1
    return 0


def _command(args: argparse.Namespace) -> str:
    return "python benchmarks/text_decoding.py" + c.flags(args)


if __name__ == "__main__":
    sys.exit(main(parse_args()))
