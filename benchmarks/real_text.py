"""The free-text tables on the real model (issue 28): Gemma 3 270M summarising the outcome of ACL papers (ACLSum).

    python benchmarks/real_text.py zero-shot --model_name_or_path M --threads 2     # the untrained base model
    python benchmarks/real_text.py collect outputs/prompt_tuning_aclsum outputs/prefix_tuning_aclsum ...

Two subcommands, each printing a markdown table (``--json PATH`` also writes the raw figures):

- ``zero-shot``: the base model, untrained, scored on the 50 validation papers exactly as the recipes score them
  (the Gemma ACLSum config's data, template, prompt cut for ``max_length``, generation budget and eval batch size:
  the config is read by the recipes' own parser and the steps ``recipes/train.py`` calls, through
  ``benchmarks/real_model.py``'s ``recipe_eval``) with ``TextGenerationMetrics(...).evaluate(model)``, for two
  templates: the config's, and the same preceded by the instruction the prompt-tuning config starts its soft prompt
  from (``prompt_tuning_init_text``). rows/s: wall time of ``evaluate`` alone (model loaded).
- ``collect``: finished recipe runs from their output folders: ROUGE-L by epoch (the last checkpoint's
  ``trainer_state.json``; with ``--eval_on_start``, the first is the untrained soft prompt's), the final (best
  adapter's) ROUGE-1/2/L, chrF and generated length (``eval_results.json``), seconds per epoch, the recipe's own eval
  rows/s, peak RSS and wall time from ``/usr/bin/time -v`` (logs found as ``real_model.py collect`` finds them).

The runs ``collect`` reads, one at a time::

    D=outputs/prompt_tuning_aclsum
    /usr/bin/time -v -o $D.time.log python recipes/prompt_tuning.py \\
        --config recipes/configs/prompt_tuning_gemma-3-270m_aclsum.yaml --model_name_or_path M --use_cpu true \\
        --output_dir $D > $D.log 2>&1
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402
import real_model  # noqa: E402

from softprompt_hf.steps import ADAPTER_DIRNAME, RESULTS_NAME  # noqa: E402

NAMES = ("rouge1", "rouge2", "rougeL", "chrf", "gen_len")
HEADERS = ["ROUGE-1", "ROUGE-2", "ROUGE-L", "chrF", "generated tokens"]


def config_path(method: str) -> Path:
    return real_model.CONFIGS / f"{method}_gemma-3-270m_aclsum.yaml"


def zero_shot(args: argparse.Namespace) -> list[dict[str, Any]]:
    print(c.header("ACLSum zero-shot: the untrained base model", "python benchmarks/real_text.py" + c.flags(args)))
    recipe = real_model.recipe_eval(config_path("prompt_tuning"), args.model_name_or_path)
    model = real_model._load_base(args.model_name_or_path, args.device)
    metrics = recipe.metrics
    rows = metrics.eval_rows if args.rows is None else metrics.eval_rows.select(range(args.rows))
    print(f"Model: {Path(args.model_name_or_path).name}; {len(rows)} validation papers\n")
    headers = ["template", "rows", *HEADERS, "rows/s"]
    print(c.table(headers, []))
    instruction = recipe.args.prompt.prompt_tuning_init_text or ""
    escaped = instruction.replace("{", "{{").replace("}", "}}")  # plain text: its braces are no fields
    templates = {"recipe's": metrics.template, "instruction + recipe's": escaped + metrics.template}
    results = []
    for name, template in templates.items():
        scored = dataclasses.replace(metrics, eval_rows=rows, template=template)
        scored.show_progress = False
        start = time.perf_counter()
        values = scored.evaluate(model)
        seconds = time.perf_counter() - start
        result = {"template": name, "template_text": template, "rows": len(rows), "seconds": seconds, **values}
        result["examples"] = [p.output for p in scored.last_predictions[:3]]
        results.append(result)
        cells = [name, len(rows), *(values[key] for key in NAMES), len(rows) / seconds]
        print(c.table(headers, [cells]).splitlines()[-1], flush=True)
    print("\nTemplates and the first outputs:")
    for result in results:
        print(f"- `{result['template_text']!r}`: {result['examples'][0]!r}")
    print()
    c.dump_json(args.json, results)
    return results


def collect_run(output_dir: Path, logs: list[str]) -> dict[str, Any]:
    settings = real_model._read_json(output_dir / ADAPTER_DIRNAME / "softprompt_hf.json")
    final = real_model._read_json(output_dir / RESULTS_NAME)
    state = real_model._trainer_state(output_dir)
    evaluations = [entry for entry in state["log_history"] if "eval_rougeL" in entry]
    epochs = float(state.get("epoch") or 0)
    figures: dict[str, Any] = {
        "output_dir": str(output_dir),
        "method": settings["method"],
        "epochs": epochs,
        "rougeL_by_epoch": [(entry["epoch"], entry["eval_rougeL"]) for entry in evaluations],
        "best_epoch": next((e["epoch"] for e in evaluations if e.get("step") == state.get("best_global_step")), None),
        "final": {key: final.get(f"eval_{key}") for key in NAMES},
        "final_eval_rows_per_s": final.get("eval_samples_per_second"),
        "eval_rows_per_s_by_epoch": [entry.get("eval_samples_per_second") for entry in evaluations],
        "train_runtime": next((e["train_runtime"] for e in state["log_history"] if "train_runtime" in e), None),
        "max_rss_kib": None,
        "wall_seconds": None,
    }
    for path in real_model._log_files(output_dir, logs):
        text = path.read_text(errors="replace")
        runtime, rss = real_model._TRAIN_RUNTIME.findall(text), real_model._MAX_RSS.findall(text)
        elapsed = real_model._ELAPSED.findall(text)
        if runtime and figures["train_runtime"] is None:  # no checkpoint holds it: the run's log does
            figures["train_runtime"] = float(runtime[-1])
        if rss:
            figures["max_rss_kib"] = int(rss[-1])
        if elapsed:
            figures["wall_seconds"] = real_model._seconds(elapsed[-1])
    runtime = figures["train_runtime"]
    # train_runtime includes every evaluation made inside train(), --eval_on_start's at step 0 too: an epoch "with
    # its eval" leaves that one out, training alone leaves them all out.
    eval_seconds = sum(entry.get("eval_runtime", 0.0) for entry in evaluations)
    start_seconds = sum(entry.get("eval_runtime", 0.0) for entry in evaluations if entry.get("step", 0) == 0)
    figures["seconds_per_epoch"] = (runtime - start_seconds) / epochs if runtime and epochs else None
    figures["train_seconds_per_epoch"] = (runtime - eval_seconds) / epochs if runtime and epochs else None
    return figures


COLLECT_HEADERS = [
    "method",
    "ROUGE-L by epoch",
    "final (best epoch)",
    *[f"final {h}" for h in HEADERS[:2]],
    "final chrF",
    "generated tokens",
    "s/epoch (with its eval)",
    "s/epoch, training only",
    "eval rows/s (final; by epoch)",
    "peak RSS, GiB",
    "wall time, min",
]


def _cells(f: dict[str, Any]) -> list[Any]:
    def maybe(value: Any, scale: float = 1.0) -> Any:
        return "-" if value is None else value / scale

    by_epoch = " / ".join(f"{value:.3f}" for _, value in f["rougeL_by_epoch"]) or "-"
    best = f" ({f['best_epoch']:.3g})" if f["best_epoch"] is not None else ""
    final_l = "-" if f["final"]["rougeL"] is None else f"{f['final']['rougeL']:.3f}{best}"
    rates = " / ".join(f"{v:.3g}" for v in f["eval_rows_per_s_by_epoch"] if v is not None)
    final_rate = "-" if f["final_eval_rows_per_s"] is None else f"{f['final_eval_rows_per_s']:.3g}"
    return [
        f["method"],
        by_epoch,
        final_l,
        maybe(f["final"]["rouge1"]),
        maybe(f["final"]["rouge2"]),
        maybe(f["final"]["chrf"]),
        maybe(f["final"]["gen_len"]),
        maybe(f["seconds_per_epoch"]),
        maybe(f["train_seconds_per_epoch"]),
        f"{final_rate} ({rates or '-'})",
        maybe(f["max_rss_kib"], 1024**2),
        maybe(f["wall_seconds"], 60),
    ]


def collect(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = [collect_run(Path(d), args.logs) for d in args.output_dirs]
    print(c.header("The ACLSum recipes on the real model", "python benchmarks/real_text.py" + c.flags(args)))
    print(c.table(COLLECT_HEADERS, [_cells(f) for f in results]))
    print()
    c.dump_json(args.json, results)
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    zero = commands.add_parser("zero-shot", help="The untrained base model on the validation papers.")
    zero.add_argument("--model_name_or_path", default=real_model.default_model_path(), help="Base model folder.")
    zero.add_argument("--rows", type=int, help="Score only the first ROWS validation papers (default: all 50).")
    zero.add_argument("--device", default="cpu")
    zero.add_argument("--json", help="Also write the figures to this JSON file.")
    c.add_threads_argument(zero)
    runs = commands.add_parser("collect", help="A table of finished recipe runs.")
    runs.add_argument("output_dirs", nargs="+", help="The runs' --output_dir folders.")
    runs.add_argument("--logs", nargs="*", default=[], help="Log files (matched to a run by name prefix).")
    runs.add_argument("--json", help="Also write the figures to this JSON file.")
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    c.quiet()
    if args.command == "zero-shot":
        c.set_threads(args.threads)
        return zero_shot(args)
    return collect(args)


if __name__ == "__main__":
    main(parse_args())
