"""An evaluation epoch in the stock Trainer with its loss pass, and without it (``metrics.skip_loss_pass``).

    python benchmarks/eval_loss_pass.py                          # the embedded model, labels and free text, 64 rows
    python benchmarks/eval_loss_pass.py --model_name_or_path M --tasks labels aclsum --threads 2   # e.g. Gemma
    python benchmarks/eval_loss_pass.py --models tiny --rows 8 --repeats 1 --methods prompt_tuning   # smoke test

``trainer.evaluate()`` over the same eval rows and soft-prompt model (untrained), as the recipes evaluate: the
recipes' eval batch size (32), their exact eval-loss speed-ups (logits only at the target positions, the virtual
tokens run once per batch), and generation-based metrics. Two Trainers share the model:

- ``with the loss pass``: the stock evaluation, a forward of every eval row with its labels (``eval_loss``), then
  ``compute_metrics`` decodes the rows;
- ``decode only``: the same after ``metrics.skip_loss_pass(trainer)``, the recipes' default.

Tasks: ``labels`` (``GenerationMetrics``, generate mode, the tweets' label texts), ``text``
(``TextGenerationMetrics`` on the tweets, each row's reference its own text: a long free-text target, so
decoding runs up to ``--max_new_tokens`` per row) and ``aclsum`` (the Gemma ACLSum configs' data: the 50
validation papers' outcome summaries from their abstracts, prompts capped as the configs cap them; needs the
``[real]`` extra). Before any timing both Trainers' metrics are compared; the script exits 1 if they differ.
Figures: eval rows/s (medians over ``--repeats`` runs of each path, interleaved) and their ratio, which is what to
read on a shared machine.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM, PrinterCallback, Trainer, TrainingArguments  # noqa: E402

from softprompt_hf import (  # noqa: E402
    GenerationMetrics,
    SoftPromptDataCollator,
    TextGenerationMetrics,
    enable_label_only_logits,
    enable_shared_prompt,
)
from softprompt_hf.embedded import EMBEDDED_MODEL_PATH  # noqa: E402
from softprompt_hf.real import load_aclsum  # noqa: E402
from softprompt_hf.training.arguments import ACLSUM_TEMPLATE  # noqa: E402

MODELS = ("embedded", "tiny")
TASKS = ("labels", "text", "aclsum")
TWEETS_TEMPLATE = "Tweet text : {text} Label : "
ACLSUM = {"aspect": "outcome", "sources": ["abstract"], "max_length": 320, "max_target_length": 48}
HEADERS = [
    "model",
    "task",
    "method",
    "rows",
    "same metrics",
    "with the loss pass, rows/s",
    "decode only, rows/s",
    "decode only / with",
]


def load(args: argparse.Namespace, name: str) -> tuple[Any, Any, str]:
    """The base model, its tokenizer and its name in the table, for ``--models`` name or a local folder."""
    if name == "embedded":
        path = str(EMBEDDED_MODEL_PATH)
        return AutoModelForCausalLM.from_pretrained(path).to(args.device), c.pretrained_tokenizer(path), name
    if name == "tiny":
        return c.base_model(c.TINY_SIZE, device=args.device), c.tokenizer(), name
    return c.pretrained_model(name, device=args.device), c.pretrained_tokenizer(name), Path(name).name


def eval_set(task: str, tok: Any, rows: int) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """The eval rows of ``task``, the collator's options and the metrics' options."""
    if task == "aclsum":
        data = load_aclsum(ACLSUM["aspect"], ACLSUM["sources"])
        validation = data.validation.select(range(min(rows, len(data.validation))))
        columns = {"template": ACLSUM_TEMPLATE, "text_column": "text", "target_column": data.target_column}
        collator = {**columns, "max_length": ACLSUM["max_length"], "max_target_length": ACLSUM["max_target_length"]}
        budget = ACLSUM["max_target_length"]
        metrics = {**columns, "max_new_tokens": budget, "max_prompt_tokens": ACLSUM["max_length"] - budget}
        return validation, collator, metrics
    records = c.labelled_rows(rows)
    if task == "labels":
        columns = {"template": TWEETS_TEMPLATE, "text_column": c.TEXT_COLUMN, "target_column": "text_label"}
        return Dataset.from_list(records), columns, columns
    # text: the reference is the tweet itself, a free-text target of 5 to 60 words.
    records = [{**row, "reference": row[c.TEXT_COLUMN]} for row in records]
    columns = {"template": TWEETS_TEMPLATE, "text_column": c.TEXT_COLUMN, "target_column": "reference"}
    return Dataset.from_list(records), columns, columns


def build_metrics(task: str, tok: Any, rows: Any, options: dict[str, Any], args: argparse.Namespace) -> Any:
    if task == "labels":
        labels = sorted(set(rows["text_label"]))
        return GenerationMetrics(tok, labels, rows, batch_size=args.batch_size, **options)
    if task == "text" and "max_new_tokens" not in options:
        options = {**options, "max_new_tokens": args.max_new_tokens}
    return TextGenerationMetrics(tok, rows, batch_size=args.batch_size, **options)


def run(args: argparse.Namespace, name: str, task: str, method: str, out_dir: str) -> list[Any]:
    base, tok, shown = load(args, name)
    model = c.soft_prompt_model(base, method, tok)
    enable_label_only_logits(model, in_eval=True)  # the recipes' exact eval-loss speed-ups
    enable_shared_prompt(model, in_eval=True)
    rows, collator_options, metric_options = eval_set(task, tok, args.rows)
    trainers = {}
    for path in ("with", "without"):
        metrics = build_metrics(task, tok, rows, metric_options, args)
        metrics.show_progress = False
        trainer = Trainer(
            model=model,
            args=TrainingArguments(
                output_dir=out_dir,
                per_device_eval_batch_size=args.batch_size,
                remove_unused_columns=False,
                report_to=[],
                disable_tqdm=True,
                use_cpu=args.device == "cpu",
            ),
            eval_dataset=rows,
            data_collator=SoftPromptDataCollator(tok, **collator_options),
            **metrics.trainer_kwargs(),
        )
        trainer.remove_callback(PrinterCallback)  # the table is the output, not each evaluation's dict
        if path == "without":
            metrics.skip_loss_pass(trainer)
        trainers[path] = trainer
    first = {path: trainer.evaluate() for path, trainer in trainers.items()}
    keys = [k for k in first["without"] if not k.endswith(("_runtime", "_per_second", "_model_preparation_time"))]
    same = all(first["with"][k] == first["without"][k] for k in keys if k != "epoch")
    assert "eval_loss" in first["with"] and "eval_loss" not in first["without"]
    times = c.interleaved_times({p: t.evaluate for p, t in trainers.items()}, args.repeats, args.device)
    rows_per_s = {path: len(rows) / c.median(values) for path, values in times.items()}
    return [
        shown,
        task,
        method,
        len(rows),
        "yes" if same else "NO",
        rows_per_s["with"],
        rows_per_s["without"],
        rows_per_s["without"] / rows_per_s["with"],
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["embedded"], choices=MODELS)
    parser.add_argument("--model_name_or_path", help="A local model folder, measured instead of --models.")
    parser.add_argument("--tasks", nargs="+", default=["labels", "text"], choices=TASKS)
    parser.add_argument("--methods", nargs="+", default=list(c.METHODS), choices=c.METHODS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rows", type=int, default=64, help="Eval rows (aclsum: at most its 50 validation papers).")
    parser.add_argument("--max_new_tokens", type=int, default=32, help="Task text: what decoding may generate.")
    parser.add_argument("--batch_size", type=int, default=32, help="Eval rows per batch (the recipes' default).")
    parser.add_argument("--repeats", type=int, default=3, help="Runs per path; figures are medians.")
    parser.add_argument("--json", help="Also write the results to this JSON file.")
    c.add_threads_argument(parser)
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> int:
    c.quiet()
    c.set_threads(args.threads)
    names = [args.model_name_or_path] if args.model_name_or_path else args.models
    print(c.header("An evaluation epoch with and without the Trainer's loss pass", _command(args)))
    print(f"Eval batch {args.batch_size}; task text decodes up to {args.max_new_tokens} tokens; runs: {args.repeats}\n")
    print(c.table(HEADERS, []))
    results = []
    with tempfile.TemporaryDirectory() as out_dir:
        for name in names:
            for task in args.tasks:
                for method in args.methods:
                    results.append(run(args, name, task, method, out_dir))
                    print(c.table(HEADERS, results[-1:]).splitlines()[-1], flush=True)
    print()
    c.dump_json(args.json, results)
    differing = [f"{row[0]} {row[1]} {row[2]}" for row in results if row[4] != "yes"]
    if differing:
        print(f"The metrics differ with and without the loss pass: {', '.join(differing)}", file=sys.stderr)
        return 1
    return 0


def _command(args: argparse.Namespace) -> str:
    return "python benchmarks/eval_loss_pass.py" + c.flags(args)


if __name__ == "__main__":
    sys.exit(main(parse_args()))
