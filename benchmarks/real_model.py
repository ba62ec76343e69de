"""The real-model tables (issue 15): zero-shot, the recipes' own runs, and trained adapters in each mode.

    python benchmarks/real_model.py zero-shot                      # Gemma 3 270M, both datasets, every mode
    python benchmarks/real_model.py zero-shot --rows 8 --datasets tweets       # a quick look (8 rows, classes in turn)
    python benchmarks/real_model.py collect outputs/prompt_tuning_tweets outputs/p_tuning_tweets ...
    python benchmarks/real_model.py eval-modes outputs/prompt_tuning_tweets/adapter ...

Three subcommands, each printing markdown tables (``--json PATH`` also writes the raw figures):

- ``zero-shot``: the base model, untrained, scored on each dataset's validation rows exactly as the recipes score
  them (the Gemma recipe config's data, split, template, label boundary, ``max_length`` cut and eval batch size:
  the config is read by the recipes' own parser and the steps ``recipes/train.py`` calls), with
  ``GenerationMetrics(...).evaluate(model)`` in every mode of ``softprompt_hf.inference.labels.MODES``, for two
  templates: the config's, and the same preceded by the instruction that the prompt-tuning config uses as
  ``prompt_tuning_init_text``. rows/s: wall time of ``evaluate`` alone (model loaded, after a warm-up on two rows).
- ``collect``: a table of finished recipe runs from their output folders: per-epoch validation scores (the last
  checkpoint's ``trainer_state.json``), the final (best adapter) scores (``eval_results.json``), seconds per epoch
  (``train_runtime`` from the run's log), the recipe's own eval rows/s, and the peak RSS and wall time from
  ``/usr/bin/time -v``. Logs are found next to each folder ``D``: the files named ``D.<anything>`` (``D.log``,
  ``D.time.log``); ``--logs`` adds files kept elsewhere, named the same way.
- ``eval-modes``: a trained adapter folder (``D/adapter``) loaded with ``softprompt_hf.load_adapter`` and scored on
  its recipe's validation rows in every mode, timed as in ``zero-shot``.

The recipe runs that ``collect`` reads, e.g. (one at a time; ``/usr/bin/time -v`` gives the peak RSS)::

    D=outputs/prompt_tuning_tweets
    /usr/bin/time -v -o $D.time.log python recipes/prompt_tuning.py \\
        --config recipes/configs/prompt_tuning_gemma-3-270m_tweets.yaml --model_name_or_path M --use_cpu true \\
        --output_dir $D > $D.log 2>&1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402
import torch  # noqa: E402

from softprompt_hf.constants import MODES  # noqa: E402
from softprompt_hf.data.chat import ChatTemplate  # noqa: E402
from softprompt_hf.evaluation.compute_metrics import GenerationMetrics  # noqa: E402
from softprompt_hf.real import BBC_NEWS_TOPICS, GEMMA_FOLDER_NAME, SMOLLM2_FOLDER_NAME, default_cache_dir  # noqa: E402
from softprompt_hf.steps import ADAPTER_DIRNAME, RESULTS_NAME, build_metrics, load_run_data, load_run_tokenizer  # noqa: E402
from softprompt_hf.training.arguments import RecipeArguments, parse_recipe_args  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "recipes" / "configs"
# The dataset names of the tables, and the suffix of their Gemma recipe configs.
DATASETS = {"tweets": "tweets", "bbc_news": "bbc-news"}
WARM_UP_ROWS = 2


def default_model_path() -> str:
    """Where ``softprompt-hf prepare-real`` puts Gemma 3 270M by default."""
    return str(default_cache_dir() / GEMMA_FOLDER_NAME)


#: The models with recipe configs, by the name in their configs' file names.
CONFIG_MODELS = {"gemma-3-270m": GEMMA_FOLDER_NAME, "smollm2-135m-instruct": SMOLLM2_FOLDER_NAME}
#: The plain template of each dataset, scored beside a chat config's chat template (the configs name it).
PLAIN_TEMPLATES = {"tweets": "{text_column} : {text} Label : ", "bbc_news": "Article : {text} Topic : "}


def config_path(method: str, dataset: str, model: str = "gemma-3-270m") -> Path:
    return CONFIGS / f"{method}_{model}_{DATASETS[dataset]}.yaml"


# -- The recipes' data and metrics ------------------------------------------------------------------------
@dataclasses.dataclass
class RecipeEval:
    """A recipe config's validation rows and metrics, built by the recipes' own code."""

    args: RecipeArguments
    tokenizer: Any
    data: Any
    metrics: GenerationMetrics


def recipe_eval(config: Path, model_path: str, method: str = "prompt_tuning") -> RecipeEval:
    """What ``recipes/train.py`` builds for ``config`` with ``--model_name_or_path model_path``: the data (split,
    text choice, seed), the tokenizer, and ``GenerationMetrics`` (template, label boundary, prompt cut for
    ``max_length``, eval batch size). The recipe's own steps are called, so that nothing here can drift from what a
    recipe scores."""
    with tempfile.TemporaryDirectory() as output_dir:
        args = parse_recipe_args(
            method, ["--config", str(config), "--model_name_or_path", model_path, "--output_dir", output_dir]
        )
    data = load_run_data(args.data, seed=args.training.seed)
    tokenizer = load_run_tokenizer(args.model, chat_template=args.data.chat_template)
    metrics = build_metrics(tokenizer, data, args.data, args.training)
    return RecipeEval(args, tokenizer, data, metrics)


def dataset_of(labels: list[str], text_column: str) -> str:
    """The table's dataset name for a run with these labels (BBC News' topics or the tweets' labels)."""
    if sorted(labels) == sorted(BBC_NEWS_TOPICS):
        return "bbc_news"
    if text_column == "Tweet text":
        return "tweets"
    raise ValueError(f"Labels {labels} with text column {text_column!r} are neither BBC News nor the tweets.")


def _rows(recipe: RecipeEval, rows: int | None) -> Any:
    """The validation rows, or ``rows`` of them taken in turn from each label (in split order within each), so
    that a subset keeps every class: BBC News' validation split lists its topics one after the other."""
    validation = recipe.data.validation
    if rows is None or rows >= len(validation):
        return validation
    by_label: dict[str, list[int]] = {}
    for index, label in enumerate(validation[recipe.data.target_column]):
        by_label.setdefault(label, []).append(index)
    queues = list(by_label.values())
    picked: list[int] = []
    while len(picked) < rows:
        for queue in queues:
            if queue and len(picked) < rows:
                picked.append(queue.pop(0))
    return validation.select(sorted(picked))


def _quiet_copy(metrics: GenerationMetrics, **changes: Any) -> GenerationMetrics:
    copy = dataclasses.replace(metrics, **changes)
    copy.show_progress = False  # progress bars would break the tables up
    return copy


def score_modes(
    model: torch.nn.Module, metrics: GenerationMetrics, modes: list[str], warm_up: bool = True
) -> list[dict[str, Any]]:
    """``metrics`` evaluated in each of ``modes`` on ``model``: scores, seconds, rows/s, and how many rows get the
    same label as in the first mode."""
    results: list[dict[str, Any]] = []
    first: list[str | None] | None = None
    for mode in modes:
        scored = _quiet_copy(metrics, mode=mode)
        if warm_up:
            _quiet_copy(scored, eval_rows=scored.eval_rows.select(range(WARM_UP_ROWS))).evaluate(model)
        start = time.perf_counter()
        scores = scored.evaluate(model)
        seconds = time.perf_counter() - start
        predicted = [p.predicted for p in scored.last_predictions]
        if first is None:
            first = predicted
        invalid = Counter(p.output.strip()[:24] for p in scored.last_predictions if p.predicted is None)
        results.append(
            {
                "mode": mode,
                "rows": len(predicted),
                "accuracy": scores["accuracy"],
                "f1": scores["f1"],
                "invalid_rate": scores["invalid_rate"],
                "seconds": seconds,
                "rows_per_s": len(predicted) / seconds,
                "same_as_first_mode": sum(a == b for a, b in zip(predicted, first, strict=True)) / len(predicted),
                "top_invalid_outputs": invalid.most_common(3),
            }
        )
    return results


def mode_headers(modes: list[str]) -> list[str]:
    """The score columns; speed and labels are compared with the first mode's (generate's, unless left out)."""
    first = modes[0]
    return [
        "accuracy",
        "macro-F1",
        "invalid rate",
        "rows/s",
        f"x {first}'s rows/s",
        f"same label as {first}",
        "most common invalid outputs",
    ]


def _mode_cells(result: dict[str, Any], reference: dict[str, Any]) -> list[Any]:
    outputs = ", ".join(f"{text!r} ({count})" for text, count in result["top_invalid_outputs"]) or "-"
    outputs = outputs.replace("|", "\\|")  # a model's output must not end the table's cell
    return [
        result["accuracy"],
        result["f1"],
        result["invalid_rate"],
        result["rows_per_s"],
        result["rows_per_s"] / reference["rows_per_s"],
        f"{round(result['same_as_first_mode'] * result['rows'])}/{result['rows']}",
        outputs,
    ]


def _modes(requested: list[str] | None) -> list[str]:
    # "generate" first: the other modes' speed and labels are given relative to it.
    modes = list(requested or MODES)
    unknown = [mode for mode in modes if mode not in MODES]
    if unknown:
        raise SystemExit(f"--modes {' '.join(unknown)}: this softprompt_hf has the modes {', '.join(MODES)}.")
    return sorted(modes, key=lambda mode: mode != "generate")


def _load_base(model_path: str, device: str) -> Any:
    from transformers import AutoModelForCausalLM

    # As recipes/train.py loads it.
    return AutoModelForCausalLM.from_pretrained(model_path).to(device).eval()


# -- zero-shot --------------------------------------------------------------------------------------------
def zero_shot(args: argparse.Namespace) -> list[dict[str, Any]]:
    modes = _modes(args.modes)
    print(c.header("Zero-shot: the untrained base model", "python benchmarks/real_model.py" + c.flags(args)))
    model_path = args.model_name_or_path or str(default_cache_dir() / CONFIG_MODELS[args.configs_of])
    model = _load_base(model_path, args.device)
    print(f"Model: {model_path} ({type(model).__name__}); configs {args.configs_of}; modes {', '.join(modes)}\n")
    headers = ["dataset", "template", "mode", "rows", *mode_headers(modes)]
    print(c.table(headers, []))
    results = []
    for dataset in args.datasets:
        recipe = recipe_eval(config_path("prompt_tuning", dataset, args.configs_of), model_path)
        base = dataclasses.replace(
            recipe.metrics, eval_rows=_rows(recipe, args.rows), batch_size=args.batch_size or recipe.metrics.batch_size
        )
        instruction = recipe.args.prompt.prompt_tuning_init_text
        # The instruction is plain text in front of a template: its braces must not read as fields.
        escaped = (instruction or "").replace("{", "{{").replace("}", "}}")
        templates: dict[str, Any] = {}
        if isinstance(base.template, ChatTemplate):
            # A chat config: its chat template (the instruction in the user turn), against the plain prompt of
            # the dataset with and without the same instruction in front.
            templates["chat, instruction in the user turn"] = base.template
            templates["plain"] = PLAIN_TEMPLATES[dataset]
            if instruction:
                templates["instruction + plain"] = escaped + PLAIN_TEMPLATES[dataset]
        else:
            templates["recipe's"] = base.template
            if instruction:
                templates["instruction + recipe's"] = escaped + base.template
        for name, template in templates.items():
            scored = score_modes(model, dataclasses.replace(base, template=template), modes)
            for result in scored:
                result.update(dataset=dataset, template=name, template_text=template)
                row = [dataset, name, result["mode"], result["rows"], *_mode_cells(result, scored[0])]
                print(c.table(headers, [row]).splitlines()[-1], flush=True)
            results += scored
    print("\nTemplates:")
    for text in dict.fromkeys(r["template_text"] for r in results):
        print(f"- `{text!r}`")
    for result in results:  # JSON-ready: a chat template as its messages
        if isinstance(result["template_text"], ChatTemplate):
            chat = result["template_text"]
            result["template_text"] = {"chat": {"user": chat.user, "system": chat.system}}
    print()
    c.dump_json(args.json, results)
    return results


# -- eval-modes -------------------------------------------------------------------------------------------
def eval_modes(args: argparse.Namespace) -> list[dict[str, Any]]:
    from softprompt_hf.serving.predict import load_adapter

    modes = _modes(args.modes)
    print(c.header("A trained adapter in each mode", "python benchmarks/real_model.py" + c.flags(args)))
    headers = ["method", "dataset", "mode", "rows", *mode_headers(modes)]
    print(c.table(headers, []))
    results = []
    for adapter in args.adapters:
        loaded = load_adapter(adapter, base_model=args.model_name_or_path, device=args.device)
        settings = loaded.settings
        method = settings["method"]
        base_path = args.model_name_or_path or loaded.model.peft_config["default"].base_model_name_or_path
        dataset = dataset_of(list(settings["labels"]), settings["text_column"])
        config = Path(args.config) if args.config else config_path(method, dataset)
        recipe = recipe_eval(config, base_path, method)
        # The adapter is scored as it was trained: its own template and label boundary (softprompt_hf.json).
        metrics = dataclasses.replace(
            recipe.metrics,
            eval_rows=_rows(recipe, args.rows),
            template=settings.get("template", recipe.metrics.template),
            label_tokenization=settings.get("label_tokenization", "separate"),
            batch_size=args.batch_size or recipe.metrics.batch_size,
        )
        scored = score_modes(loaded.model, metrics, modes)
        for result in scored:
            result.update(adapter=str(adapter), method=method, dataset=dataset)
            row = [method, dataset, result["mode"], result["rows"], *_mode_cells(result, scored[0])]
            print(c.table(headers, [row]).splitlines()[-1], flush=True)
        results += scored
        del loaded
    print()
    c.dump_json(args.json, results)
    return results


# -- collect ----------------------------------------------------------------------------------------------
def _read_json(path: Path) -> Any:
    with open(path) as f:
        return json.load(f)


def _trainer_state(output_dir: Path) -> dict[str, Any]:
    """The Trainer state of a finished run: ``output_dir/trainer_state.json`` if the run saved one, else the last
    checkpoint's (the one ``last_complete_checkpoint.json`` names, else the highest step)."""
    if (output_dir / "trainer_state.json").is_file():
        return _read_json(output_dir / "trainer_state.json")
    marker = output_dir / "last_complete_checkpoint.json"
    checkpoint = output_dir / _read_json(marker)["checkpoint"] if marker.is_file() else None
    if checkpoint is None or not (checkpoint / "trainer_state.json").is_file():
        steps = [
            (int(p.name.removeprefix("checkpoint-")), p)
            for p in output_dir.glob("checkpoint-*")
            if p.name.removeprefix("checkpoint-").isdigit() and (p / "trainer_state.json").is_file()
        ]
        if not steps:
            raise SystemExit(f"{output_dir}: no trainer_state.json in it or in a checkpoint-* folder.")
        checkpoint = max(steps)[1]
    return _read_json(checkpoint / "trainer_state.json")


_TRAIN_RUNTIME = re.compile(r"['\"]train_runtime['\"]:\s*['\"]?([0-9.]+)")
_MAX_RSS = re.compile(r"Maximum resident set size \(kbytes\):\s*(\d+)")
_ELAPSED = re.compile(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\):\s*([0-9:.]+)")


def _log_files(output_dir: Path, extra: list[str]) -> list[Path]:
    """The logs of a run: the files next to its folder named ``<folder name>.<anything>`` (``D.log``,
    ``D.time.log``), the ``*.log`` files inside it, and the ``--logs`` files named ``<folder name>.<anything>``."""
    name = output_dir.name
    found = [p for p in output_dir.parent.glob(f"{name}.*") if p.is_file()]
    found += [p for p in output_dir.glob("*.log") if p.is_file()]
    found += [Path(p) for p in extra if Path(p).name.startswith(f"{name}.")]
    return sorted(set(found))


def _seconds(clock: str) -> float:
    seconds = 0.0
    for part in clock.split(":"):
        seconds = seconds * 60 + float(part)
    return seconds


def collect_run(output_dir: Path, logs: list[str]) -> dict[str, Any]:
    """The figures of one finished recipe run (see the module docstring)."""
    settings = _read_json(output_dir / ADAPTER_DIRNAME / "softprompt_hf.json")
    final = _read_json(output_dir / RESULTS_NAME)
    state = _trainer_state(output_dir)
    evaluations = [entry for entry in state["log_history"] if "eval_accuracy" in entry]
    epochs = float(state.get("epoch") or state.get("num_train_epochs") or 0)
    figures: dict[str, Any] = {
        "output_dir": str(output_dir),
        "method": settings["method"],
        "dataset": dataset_of(list(settings["labels"]), settings["text_column"]),
        "epochs": epochs,
        "eval_accuracy_by_epoch": [entry["eval_accuracy"] for entry in evaluations],
        "eval_f1_by_epoch": [entry["eval_f1"] for entry in evaluations],
        "eval_rows_per_s_by_epoch": [entry.get("eval_samples_per_second") for entry in evaluations],
        "best_epoch": next((e["epoch"] for e in evaluations if e.get("step") == state.get("best_global_step")), None),
        "final_accuracy": final.get("eval_accuracy"),
        "final_f1": final.get("eval_f1"),
        "final_invalid_rate": final.get("eval_invalid_rate"),
        "final_eval_rows_per_s": final.get("eval_samples_per_second"),
        "train_runtime": next((e["train_runtime"] for e in state["log_history"] if "train_runtime" in e), None),
        "max_rss_kib": None,
        "wall_seconds": None,
        "logs": [],
    }
    for path in _log_files(output_dir, logs):
        text = path.read_text(errors="replace")
        runtime, rss, elapsed = _TRAIN_RUNTIME.findall(text), _MAX_RSS.findall(text), _ELAPSED.findall(text)
        if runtime or rss:
            figures["logs"].append(str(path))
        if runtime and figures["train_runtime"] is None:
            figures["train_runtime"] = float(runtime[-1])
        if rss:
            figures["max_rss_kib"] = int(rss[-1])
        if elapsed:
            figures["wall_seconds"] = _seconds(elapsed[-1])
    eval_seconds = sum(entry.get("eval_runtime", 0.0) for entry in evaluations)
    runtime = figures["train_runtime"]
    figures["seconds_per_epoch"] = runtime / epochs if runtime and epochs else None
    # train_runtime includes the evaluations at the end of each epoch; without them, training alone.
    figures["train_seconds_per_epoch"] = (runtime - eval_seconds) / epochs if runtime and epochs else None
    return figures


COLLECT_HEADERS = [
    "method",
    "dataset",
    "accuracy by epoch",
    "macro-F1 by epoch",
    "final accuracy (best epoch)",
    "final macro-F1",
    "final invalid rate",
    "s/epoch (with its eval)",
    "s/epoch, training only",
    "eval rows/s (final; by epoch)",
    "peak RSS, GiB",
    "wall time, min",
]


def _series(values: list[Any]) -> str:
    return " / ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in values) or "-"


def _collect_cells(f: dict[str, Any]) -> list[Any]:
    def maybe(value: Any, scale: float = 1.0) -> Any:
        return "-" if value is None else value / scale

    best = f" ({f['best_epoch']:.3g})" if f["best_epoch"] is not None else ""
    final_accuracy = "-" if f["final_accuracy"] is None else f"{f['final_accuracy']:.3f}{best}"
    by_epoch = " / ".join(f"{v:.3g}" for v in f["eval_rows_per_s_by_epoch"] if v is not None)
    final_rate = "-" if f["final_eval_rows_per_s"] is None else f"{f['final_eval_rows_per_s']:.3g}"
    return [
        f["method"],
        f["dataset"],
        _series(f["eval_accuracy_by_epoch"]),
        _series(f["eval_f1_by_epoch"]),
        final_accuracy,
        maybe(f["final_f1"]),
        maybe(f["final_invalid_rate"]),
        maybe(f["seconds_per_epoch"]),
        maybe(f["train_seconds_per_epoch"]),
        f"{final_rate} ({by_epoch or '-'})",
        maybe(f["max_rss_kib"], 1024**2),
        maybe(f["wall_seconds"], 60),
    ]


def collect(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = [collect_run(Path(d), args.logs) for d in args.output_dirs]
    print(c.header("The recipes on the real model", "python benchmarks/real_model.py" + c.flags(args)))
    print(c.table(COLLECT_HEADERS, [_collect_cells(f) for f in results]))
    print("\nSources: " + "; ".join(f"{f['output_dir']} ({', '.join(f['logs']) or 'no logs'})" for f in results))
    print()
    c.dump_json(args.json, results)
    return results


# -- command line -----------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    def scoring(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--rows", type=int, help="Score N validation rows, taken in turn from each label (default: all)."
        )
        sub.add_argument("--modes", nargs="+", help=f"Modes to score (default: all of {', '.join(MODES)}).")
        sub.add_argument("--batch_size", type=int, help="Prompts per forward pass (default: the recipe config's).")
        sub.add_argument("--device", default="cpu")
        sub.add_argument("--json", help="Also write the figures to this JSON file.")
        c.add_threads_argument(sub)

    zero = commands.add_parser("zero-shot", help="The untrained base model on the recipes' validation rows.")
    zero.add_argument(
        "--model_name_or_path",
        help="Base model folder (default: where prepare-real puts the model of --configs_of).",
    )
    zero.add_argument(
        "--configs_of",
        default="gemma-3-270m",
        choices=list(CONFIG_MODELS),
        help="Whose recipe configs give the data, prompt and settings (recipes/configs/prompt_tuning_<this>_*.yaml).",
    )
    zero.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    scoring(zero)

    modes = commands.add_parser("eval-modes", help="Trained adapter folders in each mode.")
    modes.add_argument("adapters", nargs="+", help="Adapter folders (a recipe's <output_dir>/adapter).")
    modes.add_argument(
        "--model_name_or_path", help="Base model folder (default: the one the adapter names, as load_adapter)."
    )
    modes.add_argument(
        "--config", help="The recipe config the adapter was trained with (default: the Gemma config of its data)."
    )
    scoring(modes)

    runs = commands.add_parser("collect", help="A table of finished recipe runs.")
    runs.add_argument("output_dirs", nargs="+", help="The runs' --output_dir folders.")
    runs.add_argument("--logs", nargs="*", default=[], help="Log files (matched to a run by name prefix).")
    runs.add_argument("--json", help="Also write the figures to this JSON file.")
    args = parser.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    return args


def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    c.quiet()
    c.set_threads(getattr(args, "threads", None))
    commands = {"zero-shot": zero_shot, "eval-modes": eval_modes, "collect": collect}
    return commands[args.command](args)


if __name__ == "__main__":
    main(parse_args())
