"""Many soft prompts on one base model (issue 30): each row labelled with its own adapter, rows of different adapters
in the same forward batches (``batching="mixed"``) against one adapter's rows after the other (``"per_adapter"``).

    python benchmarks/multi_adapters.py --threads 1              # the embedded model, N = 1, 4, 16, 256 rows
    python benchmarks/multi_adapters.py --model_name_or_path ~/.cache/softprompt_hf/gemma-3-270m-q4_k_m-float32 \\
        --rows 96 --repeats 2 --threads 1 --json multi_gemma.json          # Gemma 3 270M (softprompt-hf prepare-real)
    python benchmarks/multi_adapters.py --adapters 1 2 --rows 8 --repeats 1   # smoke test

The adapters are built on the base model (``--model_name_or_path``) and saved with ``save_adapter``, as many as the
largest N of ``--adapters``: the methods in turn (prompt tuning, P-tuning, prefix tuning), 8, 12, 16 and 20 virtual
tokens in turn, random initialisations (seed = the adapter's index), all classifying the tweets as ``complaint`` /
``no complaint`` with one template. Nothing is trained: only throughput and memory are measured, and both batchings
must give the same results whatever the prompts are. For each N, ``load_adapters`` loads the first N on one base
model, and the same ``--rows`` tweets are shared out among them, N equal shares in a seeded random order.

For each mode (``--modes``), ``predict_adapters(loaded, texts, adapter_names, mode=..., batch_size=...)`` runs once
per batching as a warm-up, then ``--repeats`` times per batching, the two interleaved and their order swapped every
repeat (use an even number); rows/s is the rows over the median seconds. A row differs if its label or its output
text is not the same under both batchings (from the warm-up calls), or in rank mode a label's score differs by more
than 1e-3; it should never happen, and the script exits 1 if it does (after the table).

Peak memory: each (N, mode, batching) runs once more in a fresh process, which loads the adapters, labels one row of
each adapter (so that what a process loads once, lazy imports and kernels, is not counted), then samples its resident
memory every 5 ms during one ``predict_adapters`` call on all the rows; the figure is the peak minus the resident
memory just before that call. Those processes run with ``MALLOC_MMAP_THRESHOLD_=65536`` (as in
eval_memory.py), so that resident memory follows live memory. With ``--device cuda`` it is torch's peak allocated
GPU memory during the call minus what was allocated before it. ``--no_memory`` skips these processes.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402
import torch  # noqa: E402

from softprompt_hf import build_soft_prompt_model, load_adapters, save_adapter  # noqa: E402
from softprompt_hf.constants import MODES  # noqa: E402
from softprompt_hf.embedded import EMBEDDED_MODEL_PATH, label_tokenization_for  # noqa: E402
from softprompt_hf.serving.multi import predict_adapters  # noqa: E402

LABELS = ["complaint", "no complaint"]
TEMPLATE = "{text_column} : {text} Label : "
VIRTUAL_TOKENS = (8, 12, 16, 20)
BATCHINGS = ("mixed", "per_adapter")
# Rank scores (log-likelihoods) of one row in batches of other shapes agree to float32 rounding, far below this; a
# row scored with another adapter's prompt is off by far more.
SCORE_TOLERANCE = 1e-3
# Each method's random initialisation (prompt tuning's default is the seed's text).
INIT_OPTIONS: dict[str, dict[str, Any]] = {
    "prompt_tuning": {"prompt_tuning_init": "RANDOM"},
    "p_tuning": {},
    "prefix_tuning": {"prefix_tuning_init": "RANDOM"},
}
HEADERS = [
    "model",
    "adapters",
    "mode",
    "rows",
    "rows/s mixed",
    "rows/s per adapter",
    "mixed / per adapter",
    "peak MiB mixed",
    "peak MiB per adapter",
    "rows differing",
]


def adapter_specs(count: int) -> list[tuple[str, str, int]]:
    """The first ``count`` adapters' names, methods and virtual-token counts."""
    specs = []
    for i in range(count):
        method, tokens = c.METHODS[i % len(c.METHODS)], VIRTUAL_TOKENS[i % len(VIRTUAL_TOKENS)]
        specs.append((f"a{i:02d}-{method}-{tokens}", method, tokens))
    return specs


def save_adapters(model_name_or_path: str, count: int, root: Path) -> dict[str, str]:
    """Builds and saves ``count`` randomly initialised adapters on the base model; their folders by name."""
    tokenizer = c.pretrained_tokenizer(model_name_or_path)
    folders = {}
    for seed, (name, method, tokens) in enumerate(adapter_specs(count)):
        torch.manual_seed(seed)
        # A fresh base model for each: peft wraps (and softprompt_hf patches) the model it is given.
        model = build_soft_prompt_model(
            c.pretrained_model(model_name_or_path), method=method, num_virtual_tokens=tokens, **INIT_OPTIONS[method]
        )
        folder = save_adapter(
            model,
            root / name,
            tokenizer=tokenizer,
            labels=LABELS,
            template=TEMPLATE,
            text_column=c.TEXT_COLUMN,
            label_tokenization=label_tokenization_for(model_name_or_path),
        )
        folders[name] = str(folder)
    return folders


def saved_folders(root: Path, count: int) -> dict[str, str]:
    """The first ``count`` adapters of ``save_adapters`` that are in ``root``."""
    return {name: str(root / name) for name, _, _ in adapter_specs(count)}


def row_adapters(names: list[str], rows: int, seed: int = 0) -> list[str]:
    """Each row's adapter: every adapter gets an equal share of the rows (to one row), in a seeded random order."""
    assigned = [names[i % len(names)] for i in range(rows)]
    random.Random(seed).shuffle(assigned)
    return assigned


def texts(rows: int) -> list[str]:
    return [row[c.TEXT_COLUMN] for row in c.labelled_rows(rows)]


def model_label(path: str) -> str:
    return "embedded" if Path(path).resolve() == Path(EMBEDDED_MODEL_PATH).resolve() else Path(path).name


def differing_rows(first: list[Any], second: list[Any]) -> int:
    """Rows whose label or output text differ between two runs, or (rank mode) a label's score by more than
    ``SCORE_TOLERANCE``."""
    return sum(not _same(a, b) for a, b in zip(first, second, strict=True))


def _same(a: Any, b: Any) -> bool:
    if (a.predicted, a.output) != (b.predicted, b.output):
        return False
    if a.scores is None or b.scores is None:
        return a.scores is b.scores
    return a.scores.keys() == b.scores.keys() and all(
        abs(a.scores[label] - b.scores[label]) <= SCORE_TOLERANCE for label in a.scores
    )


def measure_speed(loaded: Any, args: argparse.Namespace, mode: str) -> dict[str, Any]:
    """Rows/s of both batchings on the loaded adapters (warm-up, then interleaved repeats), and the rows whose
    results differ between them."""
    rows = texts(args.rows)
    names = row_adapters(list(loaded), len(rows))

    def call(batching: str) -> list[Any]:
        return predict_adapters(loaded, rows, names, mode=mode, batch_size=args.batch_size, batching=batching)

    first = {batching: call(batching) for batching in BATCHINGS}
    # Interleaved, the order swapped every repeat: on a loaded machine the first call of a pair was 6-16% slower
    # than the second (the two ran the same code, with one adapter), whichever batching it was.
    times: dict[str, list[float]] = {batching: [] for batching in BATCHINGS}
    for repeat in range(args.repeats):
        for batching in BATCHINGS if repeat % 2 == 0 else BATCHINGS[::-1]:
            times[batching].append(c.timed(lambda batching=batching: call(batching), args.device))
    return {
        "seconds": times,
        "rows_per_s": {batching: len(rows) / c.median(values) for batching, values in times.items()},
        "rows_differing": differing_rows(first["mixed"], first["per_adapter"]),
    }


def peak_memory(root: Path, count: int, mode: str, batching: str, args: argparse.Namespace) -> float:
    """MiB: the peak memory of one ``predict_adapters`` call in a fresh process (see the module docstring)."""
    command = [sys.executable, __file__, "--child", str(root), "--adapters", str(count), "--modes", mode]
    command += ["--batching", batching, "--rows", str(args.rows), "--batch_size", str(args.batch_size)]
    command += ["--device", args.device] + (["--threads", str(args.threads)] if args.threads else [])
    out = subprocess.run(
        command, check=True, capture_output=True, text=True, env=c.low_mmap_threshold_environment()
    ).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mib"]


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One ``predict_adapters`` call in this process; its peak memory above the memory just before it."""
    c.quiet()
    c.set_threads(args.threads)
    count, mode = args.adapters[0], args.modes[0]
    loaded = load_adapters(saved_folders(Path(args.child), count), device=args.device)
    rows = texts(args.rows)
    names = row_adapters(list(loaded), len(rows))
    # One row per adapter first: what the first call of a process loads once (lazy imports, kernels) is not
    # memory that the call holds.
    warm = sorted(names.index(name) for name in loaded)
    predict_adapters(
        loaded,
        [rows[i] for i in warm],
        [names[i] for i in warm],
        mode=mode,
        batch_size=args.batch_size,
        batching=args.batching,
    )
    with c.PeakMemory(args.device) as memory:
        start = time.perf_counter()
        predict_adapters(loaded, rows, names, mode=mode, batch_size=args.batch_size, batching=args.batching)
        c.sync(args.device)
        seconds = time.perf_counter() - start
    return {"peak_mib": memory.bytes / 2**20, "seconds": seconds}


def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    c.quiet()
    c.set_threads(args.threads)
    command = "python benchmarks/multi_adapters.py" + c.flags(args)
    print(c.header("Many adapters on one base model: mixed batches against one pass per adapter", command))
    memory = (
        "not measured"
        if args.no_memory
        else ("GPU memory allocated by torch" if "cuda" in args.device else "resident memory of a fresh process")
    )
    print(
        f"Model: {c.describe_pretrained(args.model_name_or_path)}, on {args.device}. Adapters: prompt tuning, "
        f"P-tuning, prefix tuning in turn, {'/'.join(map(str, VIRTUAL_TOKENS))} virtual tokens in turn, random "
        f"inits; labels {LABELS}; batch {args.batch_size}; runs: {args.repeats} (medians); peak memory: {memory}\n"
    )
    print(c.table(HEADERS, []))
    results = []
    label = model_label(args.model_name_or_path)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        save_adapters(args.model_name_or_path, max(args.adapters), root)
        for count in args.adapters:
            loaded = load_adapters(saved_folders(root, count), device=args.device)
            for mode in args.modes:
                speed = measure_speed(loaded, args, mode)
                peaks = {
                    batching: None if args.no_memory else peak_memory(root, count, mode, batching, args)
                    for batching in BATCHINGS
                }
                result = {"model": label, "adapters": count, "mode": mode, "rows": args.rows, **speed}
                result.update(batch_size=args.batch_size, peak_mib=peaks)
                results.append(result)
                print(c.table(HEADERS, [table_row(result)]).splitlines()[-1], flush=True)
            del loaded
            gc.collect()
    print()
    c.dump_json(
        args.json,
        {
            "command": command,
            "machine": c.machine(),
            "versions": c.versions(),
            "device": args.device,
            "results": results,
        },
    )
    return results


def table_row(result: dict[str, Any]) -> list[Any]:
    speed, peaks = result["rows_per_s"], result["peak_mib"]
    return [
        result["model"],
        result["adapters"],
        result["mode"],
        result["rows"],
        speed["mixed"],
        speed["per_adapter"],
        speed["mixed"] / speed["per_adapter"],
        *("-" if peaks[batching] is None else peaks[batching] for batching in BATCHINGS),
        result["rows_differing"],
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", default=str(EMBEDDED_MODEL_PATH), help="Base model folder.")
    parser.add_argument("--adapters", type=int, nargs="+", default=[1, 4, 16], help="Numbers of adapters (N).")
    parser.add_argument("--rows", type=int, default=256, help="Rows per call, shared out among the N adapters.")
    parser.add_argument("--modes", nargs="+", default=["generate", "rank"], choices=MODES)
    parser.add_argument("--batch_size", type=int, default=32, help="predict_adapters' batch_size.")
    parser.add_argument("--repeats", type=int, default=4, help="Timed runs per batching; figures are medians.")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no_memory", action="store_true", help="Skip the peak-memory processes.")
    parser.add_argument("--json", help="Also write the figures to this JSON file.")
    c.add_threads_argument(parser)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--batching", choices=BATCHINGS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.adapters) < 1 or args.rows < max(args.adapters):
        parser.error(
            f"--adapters must be at least 1 and --rows ({args.rows}) at least the largest, so that every "
            "adapter has rows"
        )
    args.argv = sys.argv[1:] if argv is None else argv
    return args


if __name__ == "__main__":
    parsed = parse_args()
    if parsed.child:
        print(json.dumps(child(parsed)))
    else:
        differing = [f"N={r['adapters']} {r['mode']}" for r in main(parsed) if r["rows_differing"]]
        if differing:
            print(f"The two batchings gave different results on some rows: {', '.join(differing)}", file=sys.stderr)
        sys.exit(1 if differing else 0)
