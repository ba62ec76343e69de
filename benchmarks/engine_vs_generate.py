"""Label generation: the package's decoder against the model's own ``generate()`` made right for soft prompts.

    python benchmarks/engine_vs_generate.py                  # the embedded model and the CPU Bloom, 160 rows
    python benchmarks/engine_vs_generate.py --models tiny --rows 12 --repeats 1   # smoke test

Both paths are ``generate_labels`` as ``GenerationMetrics(mode="generate")`` calls it (labels
``complaint`` / ``no complaint``, so up to 4 new tokens, batches of 32), on the same rows and soft-prompt model:

- ``engine``: the default, the package's decoder (prompt cache shared by all rows, right padding with each row's own
  positions, the output layer applied a chunk of the vocabulary at a time at the label positions only);
- ``generate()``: ``use_generate=True``, ``model.generate()`` with ``enable_soft_prompt_generate`` on for the call
  (left-padded batches, greedy), what ``predict`` runs.

Before any timing the two paths' token ids are compared on every row; the script exits 1 if any row differs.
Models: ``embedded`` (the package's 4 MB model, vocabulary 2,048), ``cpu`` (RESULTS.md's CPU Bloom, bloomz'
vocabulary of 250,880), ``tiny`` (a Bloom with a 4,096-token vocabulary, for the smoke test).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from softprompt_hf import generate_labels  # noqa: E402
from softprompt_hf.embedded import EMBEDDED_MODEL_PATH  # noqa: E402
from softprompt_hf.inference.labels import generate_label_ids  # noqa: E402

LABELS = ["complaint", "no complaint"]
MODELS = ("embedded", "cpu", "tiny")

HEADERS = ["model", "method", "rows", "same labels", "engine, rows/s", "generate(), rows/s", "engine / generate()"]


def base_model(name: str, device: str) -> Any:
    if name == "embedded":
        return AutoModelForCausalLM.from_pretrained(EMBEDDED_MODEL_PATH).to(device)
    return c.base_model(c.SIZES[name], device=device)


def describe(name: str) -> str:
    if name == "embedded":
        config = AutoModelForCausalLM.from_pretrained(EMBEDDED_MODEL_PATH).config
        return f"embedded ({config.model_type}, vocab {config.vocab_size:,}, hidden {config.hidden_size})"
    return f"{name} ({c.SIZES[name].describe()})"


def run(args: argparse.Namespace, model_name: str, method: str, tok: Any, texts: list[str]) -> list[Any]:
    model = c.soft_prompt_model(base_model(model_name, args.device), method, tok).eval()
    common = {"batch_size": args.batch_size, "show_progress": False}
    # The labels' token budget, as GenerationMetrics sets it: EOS or one token past the longest label.
    budget = max(len(tok(label, add_special_tokens=False)["input_ids"]) for label in LABELS) + 1
    engine_ids = generate_label_ids(model, tok, texts, max_new_tokens=budget, **common)
    generate_ids = generate_label_ids(model, tok, texts, max_new_tokens=budget, use_generate=True, **common)
    same = sum(a == b for a, b in zip(engine_ids, generate_ids, strict=True))
    paths = {
        "engine": lambda: generate_labels(model, tok, texts, LABELS, **common),
        "generate": lambda: generate_labels(model, tok, texts, LABELS, use_generate=True, **common),
    }
    times = c.interleaved_times(paths, args.repeats, args.device)
    speed = {name: len(texts) / c.median(values) for name, values in times.items()}
    return [
        model_name,
        method,
        len(texts),
        f"{same}/{len(texts)}",
        speed["engine"],
        speed["generate"],
        speed["engine"] / speed["generate"],
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["embedded", "cpu"], choices=MODELS)
    parser.add_argument("--methods", nargs="+", default=list(c.METHODS), choices=c.METHODS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rows", type=int, default=160)
    parser.add_argument("--batch_size", type=int, default=32, help="Prompts per forward pass (GenerationMetrics').")
    parser.add_argument("--repeats", type=int, default=3, help="Runs per path; figures are medians.")
    parser.add_argument("--json", help="Also write the results to this JSON file.")
    c.add_threads_argument(parser)
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    c.quiet()
    c.set_threads(args.threads)
    tok = c.tokenizer()
    texts = [row[c.TEXT_COLUMN] for row in c.labelled_rows(args.rows)]
    print(c.header(f"Label generation: the package's decoder vs generate(), {len(texts)} rows", _command(args)))
    print(
        f"Models: {'; '.join(describe(name) for name in args.models)}. Labels {LABELS}; batch {args.batch_size}; "
        f"runs: {args.repeats}\n"
    )
    print(c.table(HEADERS, []))
    results = []
    for model_name in args.models:
        for method in args.methods:
            results.append(run(args, model_name, method, tok, texts))
            print(c.table(HEADERS, results[-1:]).splitlines()[-1], flush=True)
    print()
    c.dump_json(args.json, results)
    differing = [f"{row[0]} {row[1]}" for row in results if row[3] != f"{row[2]}/{row[2]}"]
    if differing:
        print(f"generate() gave other labels than the package's decoder: {', '.join(differing)}", file=sys.stderr)
        return 1
    return 0


def _command(args: argparse.Namespace) -> str:
    return "python benchmarks/engine_vs_generate.py" + c.flags(args)


if __name__ == "__main__":
    sys.exit(main(parse_args()))
