"""Soft-prompt initialisations compared (issue 27): the loss before training, and the scores after a recipe's epochs.

    python benchmarks/init_table.py                                   # Gemma 3 270M, the tweets, every init, 3 seeds
    python benchmarks/init_table.py --dataset bbc-news --seeds 0 1 2 3 4 --epochs 1
    python benchmarks/init_table.py --model_name_or_path softprompt_hf/embedded/model --methods prompt_tuning \\
        --seeds 0 1 -- --validation_size 32 --max_train_samples 64       # the embedded model, in a minute

For a model folder and a dataset (the Gemma recipe configs ``recipes/configs/<method>_gemma-3-270m_<dataset>.yaml``
give the data, template, split and training settings of each method; ``--configs`` names others), every
initialisation of every method it applies to (``softprompt_hf.modeling.initialization``: prompt tuning's TEXT,
TEXT_WITHOUT_SPECIAL_TOKENS, CLASS_LABELS, SAMPLE_VOCAB and RANDOM; prefix tuning's RANDOM and TEXT; P-tuning's
peft RANDOM, for reference) is trained once per seed with the steps of ``recipes/train.py`` (the data, the tokenizer,
``build_peft_config``, the wrapped model and its speed-ups, the stock Trainer with the recipes' collator, metrics
and callbacks, ``trainer.train()``), without checkpoints or evaluations in between:

- loss before: the mean eval loss on the validation rows before any training (``trainer.evaluate()``);
- accuracy / macro-F1 before and after: the recipe's generation-based scores on the same rows, before training
  and after ``--epochs`` epochs (default: the config's ``num_train_epochs``).

Each cell is the mean over the seeds with the sample standard deviation (``mean ± sd``). The validation split is the
config's own (its ``seed``), the same for every run: a seed changes the initialisation's random draws and the
training order only. Flags after ``--`` go to the recipes' parser for every run (e.g. ``--num_virtual_tokens 16
--use_cpu true``); the prompt length is each init's own default unless set there (TEXT: the init text's tokens,
the others 20), and the table says it. ``--json PATH`` also writes every run's figures, after each run;
``--resume`` keeps the runs already there and runs only the missing ones (one seed per call, or what a stopped call
left undone).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402
from transformers import AutoModelForCausalLM, PrinterCallback, Trainer, set_seed  # noqa: E402

from softprompt_hf.modeling.initialization import PREFIX_TUNING_INITS, PROMPT_TUNING_INITS  # noqa: E402
from softprompt_hf.modeling.methods import build_peft_config, build_soft_prompt_model  # noqa: E402
from softprompt_hf.real import GEMMA_FOLDER_NAME, default_cache_dir  # noqa: E402
from softprompt_hf.steps import (  # noqa: E402
    build_collator,
    build_metrics,
    enable_speed_ups,
    load_run_data,
    load_run_tokenizer,
    recipe_callbacks,
)
from softprompt_hf.training.arguments import parse_recipe_args  # noqa: E402
from softprompt_hf.training.callbacks import check_trainer  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "recipes" / "configs"
DATASETS = ("tweets", "bbc-news")
# Each method's initialisations and the flag that chooses them (P-tuning has peft's only: no flag).
INITS: dict[str, tuple[tuple[str, ...], str | None]] = {
    "prompt_tuning": (PROMPT_TUNING_INITS, "--prompt_tuning_init"),
    "prefix_tuning": (PREFIX_TUNING_INITS, "--prefix_tuning_init"),
    "p_tuning": (("RANDOM",), None),
}
# A run trains and is scored twice, nothing else: no evaluation, checkpoint, sample or submission in between.
RUN_FLAGS = [
    "--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false",
    "--num_sample_predictions", "0", "--predict_unlabeled", "false", "--report_to", "none",
    "--disable_tqdm", "true", "--logging_strategy", "no",
    "--eval_loss", "true",  # the table reports the validation loss before and after training
]  # fmt: skip
HEADERS = [
    "method",
    "init",
    "virtual tokens",
    "seeds",
    "loss before",
    "accuracy before",
    "accuracy after",
    "macro-F1 after",
    "loss after",
]
_FIGURES = ("loss_before", "accuracy_before", "accuracy_after", "f1_after", "loss_after")


def default_model_path() -> str:
    """Where ``softprompt-hf prepare-real`` puts Gemma 3 270M by default."""
    return str(default_cache_dir() / GEMMA_FOLDER_NAME)


def config_for(method: str, dataset: str, configs: list[str] | None) -> Path:
    """The recipe config of ``method``: the one of ``--configs`` whose ``method`` it is, else the Gemma one."""
    for path in configs or []:
        if Path(path).name.startswith(f"{method}_"):
            return Path(path)
    return CONFIGS / f"{method}_gemma-3-270m_{dataset}.yaml"


def run_one(method: str, init: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """One recipe run of ``method`` started from ``init`` with ``seed``: its scores before and after training."""
    flag = INITS[method][1]
    with tempfile.TemporaryDirectory() as output_dir:
        argv = ["--config", str(config_for(method, args.dataset, args.configs)), "--output_dir", output_dir]
        argv += ["--model_name_or_path", args.model_name_or_path, *RUN_FLAGS]
        if args.epochs is not None:
            argv += ["--num_train_epochs", str(args.epochs)]
        argv += [*args.recipe_flags, *([flag, init] if flag else [])]
        recipe = parse_recipe_args(method, argv)
        data_args, training_args = recipe.data, recipe.training
        data = load_run_data(data_args, seed=training_args.seed)  # the config's seed: one validation split for all
        tokenizer = load_run_tokenizer(recipe.model, chat_template=data_args.chat_template)
        metrics = build_metrics(tokenizer, data, data_args, training_args)
        training_args.seed = seed  # the Trainer's data order
        set_seed(seed)  # the initialisation's random draws
        peft_config = build_peft_config(recipe.prompt, tokenizer=tokenizer)
        start = recipe.prompt.initialization(class_labels=list(data.classes))
        base_model = AutoModelForCausalLM.from_pretrained(recipe.model.model_name_or_path)
        model = build_soft_prompt_model(
            base_model, peft_config, tokenizer=tokenizer, training_args=training_args, init=start
        )
        enable_speed_ups(model, training_args)
        trainer = Trainer(  # as recipes/train.py builds it
            model=model,
            args=training_args,
            train_dataset=data.train,
            eval_dataset=data.validation,
            data_collator=build_collator(tokenizer, data, data_args),
            processing_class=tokenizer,
            compute_metrics=metrics,
            preprocess_logits_for_metrics=metrics.trainer_kwargs()["preprocess_logits_for_metrics"],
            callbacks=recipe_callbacks(metrics, training_args),
        )
        check_trainer(trainer)
        trainer.remove_callback(PrinterCallback)  # each evaluation's dict would break the table up
        before = trainer.evaluate()
        trainer.train()
        after = trainer.evaluate()
    return {
        "method": method,
        "init": init,
        "seed": seed,
        "num_virtual_tokens": peft_config.num_virtual_tokens,
        "validation_rows": len(data.validation),
        "epochs": trainer.state.epoch,
        "loss_before": before["eval_loss"],
        "accuracy_before": before["eval_accuracy"],
        "accuracy_after": after["eval_accuracy"],
        "f1_after": after["eval_f1"],
        "loss_after": after["eval_loss"],
    }


def spread(values: list[float], spec: str = ".3f") -> str:
    """``mean ± sd`` over the seeds (the sample standard deviation), or the one value."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:{spec}}"
    return f"{mean:{spec}} ± {statistics.stdev(values):{spec}}"


def table_rows(results: list[dict[str, Any]]) -> list[list[Any]]:
    """One row per method and init, in the order they ran."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for result in results:
        groups.setdefault((result["method"], result["init"]), []).append(result)
    rows = []
    for (method, init), runs in groups.items():
        tokens = sorted({run["num_virtual_tokens"] for run in runs})
        # Losses to 3 significant digits (a good init's can be tiny), scores to 3 decimals.
        figures = [spread([run[name] for run in runs], ".3g" if "loss" in name else ".3f") for name in _FIGURES]
        rows.append([method, init, "/".join(map(str, tokens)), len(runs), *figures])
    return rows


def previous_runs(path: str | None) -> list[dict[str, Any]]:
    """The runs an earlier call wrote to ``--json`` (``--resume``): they are kept, and not run again."""
    if not path or not Path(path).exists():
        return []
    with open(path) as f:
        return list(json.load(f))


def selected(method: str, requested: list[str] | None) -> list[str]:
    inits = INITS[method][0]
    return [init for init in inits if requested is None or init in requested]


def main(args: argparse.Namespace) -> list[dict[str, Any]]:
    c.quiet()
    c.set_threads(args.threads)
    print(c.header("Soft-prompt initialisations", "python benchmarks/init_table.py" + c.flags(args)))
    print(f"Model: {c.describe_pretrained(args.model_name_or_path)}")
    configs = {method: config_for(method, args.dataset, args.configs) for method in args.methods}
    print(
        "Configs: "
        + ", ".join(f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}" for path in configs.values())
    )
    results = previous_runs(args.json) if args.resume else []
    done = {(run["method"], run["init"], run["seed"]) for run in results}
    for method in args.methods:
        for init in selected(method, args.inits):
            for seed in args.seeds:
                if (method, init, seed) in done:
                    continue
                results.append(run_one(method, init, seed, args))
                c.quiet()  # the libraries' logging as the runs left it
                c.dump_json(args.json, results)  # after every run: a stopped table keeps the runs it finished
    first = results[0] if results else {}
    print(
        f"Validation rows: {first.get('validation_rows')}; epochs trained: {first.get('epochs')}; seeds: "
        f"{' '.join(map(str, args.seeds))}; mean ± sample standard deviation over the seeds.\n"
    )
    print(c.table(HEADERS, table_rows(results)))
    print()
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else argv
    ours, recipe_flags = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", default=default_model_path(), help="Base model folder.")
    parser.add_argument("--dataset", default="tweets", choices=DATASETS, help="The Gemma configs' dataset.")
    parser.add_argument("--configs", nargs="+", help="Recipe configs to use instead (<method>_*.yaml).")
    parser.add_argument("--methods", nargs="+", default=list(INITS), choices=list(INITS))
    known = sorted(set(PROMPT_TUNING_INITS + PREFIX_TUNING_INITS))
    parser.add_argument("--inits", nargs="+", choices=known, help="Only these inits (default: every one).")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=float, help="Training epochs (default: each config's num_train_epochs).")
    parser.add_argument("--json", help="Also write every run's figures to this JSON file (after each run).")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="Keep the runs already in --json and run only the others (the table covers them all).",
    )
    c.add_threads_argument(parser)
    args = parser.parse_args(ours)
    if args.resume and not args.json:
        parser.error("--resume reads the runs already done from --json: name that file")
    args.recipe_flags = recipe_flags
    args.argv = argv
    return args


if __name__ == "__main__":
    main(parse_args())
