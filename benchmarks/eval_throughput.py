"""Evaluation throughput: batched generation and rank classification against one-by-one generation.

    python benchmarks/eval_throughput.py                 # the CPU model of RESULTS.md, 512 rows
    python benchmarks/eval_throughput.py --size tiny     # smoke test

For each method, on the same validation rows and model, in one process with the runs interleaved:

- the seed guide's inference, one ``tokenizer(prompt)`` + ``model.generate`` per row (``PeftModel.generate``,
  which returns wrong tokens with soft prompts on these versions, see docs/generation.md; it is timed, not scored),
  with the same number of new tokens as ours;
- ``generate_label_ids`` (what ``GenerationMetrics(mode="generate")`` runs): prompts of mixed lengths batched
  with masked padding, soft prompt placed as in training, key/value cache, vocabulary projected a chunk at a
  time; and ``use_cache=False`` (equal-length prompts batched, the whole sequence run at every step);
- ``rank_labels`` (``mode="rank"``): each prompt run once, the labels scored from its shared cache; and the
  previous release's one forward per prompt + label;
- ``constrained_labels`` (``mode="constrained"``): greedy decoding over the tokens that continue some label, with
  only those tokens' rows of the output layer computed; with its agreement with generate (the label generate's
  output matches, an invalid output counting as a disagreement) and with rank, on every row.

Every path's predictions are checked against the no-cache path before any timing; constrained decoding is
checked to give generate's label wherever generate produces a label's exact tokens.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402
import torch  # noqa: E402

from softprompt_hf import rank_labels  # noqa: E402
from softprompt_hf.data.prompt import PromptTemplate  # noqa: E402
from softprompt_hf.evaluation.metrics import match_label  # noqa: E402
from softprompt_hf.inference.labels import constrained_labels, generate_label_ids  # noqa: E402

LABELS = ["complaint", "no complaint"]

HEADERS = [
    "method",
    "one by one (seed), rows/s",
    "generate, no cache, rows/s",
    "generate, rows/s",
    "generate / seed",
    "rank, no cache, rows/s",
    "rank, rows/s",
    "rank / seed",
    "constrained, rows/s",
    "constrained / seed",
    "constrained = generate",
    "constrained = rank",
]


def run_method(args: argparse.Namespace, method: str, tok: Any, texts: list[str]) -> list[Any]:
    base = c.base_model(args.model_size, dtype=args.dtype, device=args.device)
    model = c.soft_prompt_model(base, method, tok).eval()
    max_new_tokens = max(len(tok(label, add_special_tokens=False)["input_ids"]) for label in LABELS) + 1
    common = {"max_new_tokens": max_new_tokens, "batch_size": args.batch_size, "show_progress": False}
    seed_texts = texts[: args.seed_rows] if args.seed_rows else texts
    paths = {
        "seed": lambda: c.seed_generate_one_by_one(model, tok, seed_texts, max_new_tokens),
        "generate_no_cache": lambda: generate_label_ids(model, tok, texts, use_cache=False, **common),
        "generate": lambda: generate_label_ids(model, tok, texts, **common),
        "rank_no_cache": lambda: rank_labels(
            model, tok, texts, LABELS, batch_size=args.batch_size, show_progress=False, use_cache=False
        ),
        "rank": lambda: rank_labels(model, tok, texts, LABELS, batch_size=args.batch_size, show_progress=False),
        "constrained": lambda: constrained_labels(
            model, tok, texts, LABELS, batch_size=args.batch_size, show_progress=False
        ),
    }
    # Same results before any timing: tokens for generation, scores for ranking. In float32 a difference is an
    # error; in bfloat16 rounding can flip near-ties, so the agreement is reported instead.
    check = texts[: args.check_rows]
    cached = generate_label_ids(model, tok, check, **common)
    full = generate_label_ids(model, tok, check, use_cache=False, **common)
    agreement = sum(a == b for a, b in zip(cached, full, strict=True)) / len(check)
    ranked = rank_labels(model, tok, check, LABELS, show_progress=False)
    reference = rank_labels(model, tok, check, LABELS, show_progress=False, use_cache=False)
    worst = max(abs(a[k] - b[k]) for a, b in zip(ranked, reference, strict=True) for k in LABELS)
    if not args.bf16 and (agreement < 1 or worst > args.score_tolerance):
        raise AssertionError(f"{method}: cached results differ from the no-cache path ({agreement=}, {worst=})")
    if args.bf16:
        print(
            f"{method}: cached vs no-cache generation agree on {agreement:.1%} of {len(check)} rows; "
            f"largest rank-score difference {worst:.3g}",
            flush=True,
        )
    # Constrained decoding gives generate's label wherever generate produced a label's exact tokens (its argmax was
    # a candidate at every step); in bfloat16 near-ties can flip, so that agreement is reported instead.
    label_ids = {tuple(PromptTemplate().encode_target(tok, label)): label for label in LABELS}
    generated = generate_label_ids(model, tok, texts, **common)
    constrained = constrained_labels(model, tok, texts, LABELS, batch_size=args.batch_size, show_progress=False)
    exact = [
        (label_ids[tuple(ids)], answer)
        for ids, answer in zip(generated, constrained, strict=True)
        if tuple(ids) in label_ids
    ]
    if not args.bf16 and any(label != answer for label, answer in exact):
        raise AssertionError(f"{method}: constrained decoding differs from generate where generate gave a label")
    generate_labels = [
        match_label(text.strip(), LABELS) for text in tok.batch_decode(generated, skip_special_tokens=True)
    ]
    best = [
        max(scores, key=scores.__getitem__) for scores in rank_labels(model, tok, texts, LABELS, show_progress=False)
    ]
    with_generate = sum(a == b for a, b in zip(constrained, generate_labels, strict=True)) / len(texts)
    with_rank = sum(a == b for a, b in zip(constrained, best, strict=True)) / len(texts)
    runs = {
        "seed": args.seed_repeats,
        "generate_no_cache": args.no_cache_repeats,
        "rank_no_cache": args.no_cache_repeats,
    }
    times = c.interleaved_times(paths, args.repeats, args.device, runs)
    speed: dict[str, Any] = {name: len(texts) / c.median(values) if values else "-" for name, values in times.items()}
    speed["seed"] = len(seed_texts) / c.median(times["seed"])
    return [
        method,
        speed["seed"],
        speed["generate_no_cache"],
        speed["generate"],
        speed["generate"] / speed["seed"],
        speed["rank_no_cache"],
        speed["rank"],
        speed["rank"] / speed["seed"],
        speed["constrained"],
        speed["constrained"] / speed["seed"],
        f"{with_generate:.1%}",
        f"{with_rank:.1%}",
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(c.SIZES), default="cpu")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="Run the model in bfloat16.")
    parser.add_argument("--methods", nargs="+", default=list(c.METHODS), choices=c.METHODS)
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--batch_size", type=int, default=32, help="Prompts per forward pass (GenerationMetrics').")
    parser.add_argument("--repeats", type=int, default=3, help="Runs per path; figures are medians.")
    parser.add_argument("--seed_repeats", type=int, default=3, help="Runs of the (slow) one-by-one path.")
    parser.add_argument(
        "--seed_rows",
        type=int,
        help="Time the one-by-one path on the first N rows only (its cost per row does not depend on the number "
        "of rows); default: all rows.",
    )
    parser.add_argument(
        "--no_cache_repeats", type=int, default=3, help="Runs of the (slow) no-cache paths; 0 skips them."
    )
    parser.add_argument("--check_rows", type=int, default=64, help="Rows whose results are compared first.")
    parser.add_argument("--score_tolerance", type=float, default=1e-3, help="float32 only.")
    parser.add_argument("--json", help="Also write the results to this JSON file.")
    c.add_threads_argument(parser)
    args = parser.parse_args(argv)
    args.model_size = c.SIZES[args.size]
    args.dtype = torch.bfloat16 if args.bf16 else torch.float32
    return args


def main(args: argparse.Namespace) -> list[list[Any]]:
    c.quiet()
    c.set_threads(args.threads)
    tok = c.tokenizer()
    texts = [row[c.TEXT_COLUMN] for row in c.labelled_rows(args.rows)]
    command = "python benchmarks/eval_throughput.py" + c.flags(args)
    print(c.header(f"Evaluation throughput, {len(texts)} rows", command))
    seed_rows = min(args.seed_rows or len(texts), len(texts))
    print(
        f"Model: {args.model_size.describe()}; labels {LABELS}; batch {args.batch_size}; runs: {args.repeats} "
        f"(one by one: {args.seed_repeats}, on the first {seed_rows} rows; no cache: {args.no_cache_repeats})\n"
    )
    print(c.table(HEADERS, []))
    results = []
    for method in args.methods:
        results.append(run_method(args, method, tok, texts))
        print(c.table(HEADERS, results[-1:]).splitlines()[-1], flush=True)
    print()
    c.dump_json(args.json, results)
    return results


if __name__ == "__main__":
    main(parse_args())
