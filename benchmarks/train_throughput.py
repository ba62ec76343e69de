"""Training throughput: our path against the seed guide's loop, and against the frozen model's own cost.

    python benchmarks/train_throughput.py                # the CPU model of RESULTS.md (a few minutes per method)
    python benchmarks/train_throughput.py --size tiny    # smoke test
    python benchmarks/train_throughput.py --model_name_or_path M   # a local pretrained model and its tokenizer

Two measurements per method, each in one process, with the runs of the paths interleaved:

1. End to end (samples/s, non-pad tokens/s): the stock ``Trainer`` with ``SoftPromptDataCollator``,
   ``enable_label_only_logits`` and ``enable_shared_prompt`` (what the recipes run; with and without
   length-grouped batches) against the seed guide's loop
   (``preprocess_function`` padding to 64, ``default_data_collator``, ``DataLoader(shuffle=True)``, AdamW,
   linear schedule). Same model, rows, batch size and number of steps; timed from the end of a warm-up
   step, data loading included.
2. Where the time goes, and the floor: one training step on fixed batches of the same rows (forward,
   backward, optimizer step), for the seed's batches and ours, with logits at every position or at the
   supervised positions only, with the virtual tokens run per row (peft) or once per batch
   (``enable_shared_prompt``), against the frozen base model's forward + backward (to the input embeddings)
   on our batches' real tokens with no soft prompt: the least any soft-prompt method can cost.

The model is a randomly initialised Bloom with bloomz' vocabulary (``--size``), tokenized with the embedded
miniature bloomz tokenizer, or a local model folder (``--model_name_or_path``, e.g. Gemma 3 270M as
``softprompt-hf prepare-real`` saves it) with its own tokenizer and vocabulary. The rows are the embedded tweets
either way.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from transformers import (  # noqa: E402
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    default_data_collator,
    get_linear_schedule_with_warmup,
)

from softprompt_hf import SoftPromptDataCollator
from softprompt_hf.data.prompt import PromptTemplate
from softprompt_hf.modeling.label_logits import enable_label_only_logits  # noqa: E402
from softprompt_hf.modeling.shared_prompt import enable_shared_prompt  # noqa: E402


@contextlib.contextmanager
def speed_ups(model: Any, label_only: bool, shared: bool) -> Iterator[None]:
    """The library's exact training speed-ups, switched on for the ``with`` block."""
    handles = [enable_label_only_logits(model) if label_only else None, enable_shared_prompt(model) if shared else None]
    try:
        yield
    finally:
        for handle in handles:
            if handle is not None:
                handle.remove()


class _StepClock(TrainerCallback):
    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        import time

        self.ends.append(time.perf_counter())


def seed_loop_step_times(
    model: Any, rows: list[dict], tok: Any, steps: int, batch_size: int, device: str
) -> list[float]:
    """The seed guide's training loop for ``1 + steps`` steps; seconds of each step but the first, loading
    the batch included."""
    import time

    processed = c.seed_preprocess(rows, tok)
    loader = DataLoader(processed, shuffle=True, collate_fn=default_data_collator, batch_size=batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=c.SEED_LR)
    scheduler = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=0, num_training_steps=len(loader) * 50)
    model.train()
    ends = []
    for step, batch in enumerate(loader):
        batch = {k: v.to(device) for k, v in batch.items()}
        outputs = model(**batch)
        loss = outputs.loss
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        c.sync(device)
        ends.append(time.perf_counter())
        if step == steps:
            break
    return [end - start for start, end in zip(ends, ends[1:], strict=False)]


def trainer_step_times(
    model: Any, rows: list[dict], tok: Any, steps: int, batch_size: int, group_by_length: bool, bf16: bool
) -> list[float]:
    """Our path, the stock Trainer, for ``1 + steps`` steps; seconds of each step but the first (from the
    end of one step to the end of the next: loading and collating the batch included)."""
    template = PromptTemplate()
    dataset = Dataset.from_list(
        [
            {
                c.TEXT_COLUMN: row[c.TEXT_COLUMN],
                "text_label": row["text_label"],
                "length": len(template.encode(tok, row[c.TEXT_COLUMN]))
                + len(template.encode_target(tok, row["text_label"])),
            }
            for row in rows
        ]
    )
    clock = _StepClock()
    with tempfile.TemporaryDirectory() as output_dir:
        args = TrainingArguments(
            output_dir=output_dir,
            per_device_train_batch_size=batch_size,
            learning_rate=c.SEED_LR,
            lr_scheduler_type="linear",
            max_steps=steps + 1,
            remove_unused_columns=False,
            report_to=[],
            save_strategy="no",
            logging_strategy="no",
            disable_tqdm=True,
            bf16=bf16,
            use_cpu=not torch.cuda.is_available(),
            train_sampling_strategy="group_by_length" if group_by_length else "random",
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=dataset,
            data_collator=SoftPromptDataCollator(tok),
            callbacks=[clock],
        )
        trainer.remove_callback(PrinterCallback)
        with speed_ups(model, label_only=True, shared=True):
            trainer.train()
    return [end - start for start, end in zip(clock.ends, clock.ends[1:], strict=False)]


def mean_real_tokens(rows: list[dict], tok: Any) -> tuple[float, float]:
    """Non-pad input tokens per row: the seed's (prompt only, cut at 64) and ours (prompt + label + EOS)."""
    seed = [int(r["attention_mask"].sum()) for r in c.seed_preprocess(rows, tok)]
    ours = [int(b["attention_mask"].sum()) for b in [SoftPromptDataCollator(tok)(rows)]]
    return sum(seed) / len(seed), ours[0] / len(rows)


def end_to_end(args: argparse.Namespace, tok: Any, rows: list[dict]) -> list[list[Any]]:
    seed_tokens, our_tokens = mean_real_tokens(rows, tok)
    results = []
    for method in args.methods:
        model = c.soft_prompt_model(load_base(args), method, tok)
        times: dict[str, list[float]] = {"seed": [], "ours": [], "ours_grouped": []}
        for _ in range(args.repeats):
            times["seed"] += seed_loop_step_times(model, rows, tok, args.steps, args.batch_size, args.device)
            times["ours"] += trainer_step_times(model, rows, tok, args.steps, args.batch_size, False, args.bf16)
            times["ours_grouped"] += trainer_step_times(model, rows, tok, args.steps, args.batch_size, True, args.bf16)
        # Medians of single steps: robust to bursts of load from other processes on a shared machine.
        speed = {name: args.batch_size / c.median(values) for name, values in times.items()}
        results.append(
            [
                method,
                speed["seed"],
                speed["seed"] * seed_tokens,
                speed["ours"],
                speed["ours"] * our_tokens,
                speed["ours"] / speed["seed"],
                speed["ours_grouped"],
                speed["ours_grouped"] / speed["seed"],
            ]
        )
        print(c.table(END_TO_END_HEADERS, results[-1:]).splitlines()[-1], flush=True)
        del model
    return results


END_TO_END_HEADERS = [
    "method",
    "seed samples/s",
    "seed tokens/s",
    "ours samples/s",
    "ours tokens/s",
    "ours / seed",
    "ours, length-grouped, samples/s",
    "length-grouped / seed",
]


def step_breakdown(args: argparse.Namespace, tok: Any, rows: list[dict]) -> list[list[Any]]:
    """Median seconds per training step on fixed batches, and the ratios to the frozen model's floor."""
    random.Random(0).shuffle(rows)
    chunks = [rows[i * args.batch_size : (i + 1) * args.batch_size] for i in range(args.batches)]
    collator = SoftPromptDataCollator(tok)

    def to_device(batch: dict) -> dict:
        return {k: v.to(args.device) for k, v in batch.items()}

    ours = [to_device(collator(chunk)) for chunk in chunks]
    seed = [to_device(default_data_collator(c.seed_preprocess(chunk, tok))) for chunk in chunks]
    results = []
    for method in args.methods:
        results.append(_breakdown_one(args, method, tok, seed, ours))
        print(c.table(BREAKDOWN_HEADERS, results[-1:]).splitlines()[-1], flush=True)
    return results


def _breakdown_one(args: argparse.Namespace, method: str, tok: Any, seed: list[dict], ours: list[dict]) -> list[Any]:
    base = load_base(args)
    model = c.soft_prompt_model(base, method, tok)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=c.SEED_LR)
    embeddings = base.get_input_embeddings()

    def train_step(batch: dict, label_only: bool, shared: bool = False) -> None:
        model.train()
        with speed_ups(model, label_only, shared), _autocast(args):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    def floor_step(batch: dict, label_only: bool) -> None:
        base.train()
        inputs_embeds = embeddings(batch["input_ids"]).detach().requires_grad_()
        extra: dict[str, Any] = {}
        if label_only:
            shifted = torch.nn.functional.pad(batch["labels"][:, 1:], (0, 1), value=-100)
            extra = {"logits_to_keep": shifted != -100, "shift_labels": shifted[shifted != -100]}
        with _autocast(args):
            loss = base(
                inputs_embeds=inputs_embeds, attention_mask=batch["attention_mask"], labels=batch["labels"], **extra
            ).loss
        loss.backward()

    variants = {
        "ours": lambda i: train_step(ours[i], True, shared=True),
        "ours_per_row": lambda i: train_step(ours[i], True),
        "floor": lambda i: floor_step(ours[i], False),
        "floor_label_only": lambda i: floor_step(ours[i], True),
    }
    if method in args.ablation_methods:
        variants.update(
            {
                "seed": lambda i: train_step(seed[i], False),
                "seed_label_only": lambda i: train_step(seed[i], True),
                "ours_full_logits": lambda i: train_step(ours[i], False),
            }
        )
    for fn in variants.values():  # warm-up
        fn(0)
    totals: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            totals[name] += [c.timed(lambda fn=fn, i=i: fn(i), args.device) for i in range(len(ours))]
    step = {name: c.median(values) for name, values in totals.items()}
    if args.profile and method == args.methods[0]:
        _profile(lambda: train_step(seed[0], False), "the seed's step (64-padded batch, all logits)")
        _profile(
            lambda: train_step(ours[0], True, shared=True), "our step (dynamic padding, label logits, shared prompt)"
        )
    return [
        method,
        step.get("seed", "-"),
        step.get("seed_label_only", "-"),
        step.get("ours_full_logits", "-"),
        step["ours_per_row"],
        step["ours"],
        step["floor"],
        step["floor_label_only"],
        step["ours"] / step["floor"],
        step["ours"] / step["floor_label_only"],
    ]


def _profile(step: Any, title: str) -> None:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=activities) as prof:
        step()
    print(f"\nTop operators of {title}:\n")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8, max_name_column_width=40))


BREAKDOWN_HEADERS = [
    "method",
    "seed batches, all logits (s/step)",
    "seed batches, label logits",
    "our batches, all logits",
    "our batches, label logits",
    "ours: + virtual tokens once per batch",
    "floor: frozen base, all logits",
    "floor, label logits",
    "ours / floor",
    "ours / floor with label logits",
]


def load_base(args: argparse.Namespace) -> Any:
    """The frozen base model of this run: the local ``--model_name_or_path``, else a Bloom of ``--size``."""
    if args.model_name_or_path:
        return c.pretrained_model(args.model_name_or_path, dtype=args.dtype, device=args.device)
    return c.base_model(args.model_size, dtype=args.dtype, device=args.device)


def describe_model(args: argparse.Namespace) -> str:
    if not args.model_name_or_path:
        return args.model_size.describe()
    return c.describe_pretrained(args.model_name_or_path)


def _autocast(args: argparse.Namespace) -> Any:
    if args.bf16:
        return torch.autocast(device_type=args.device.split(":")[0], dtype=torch.bfloat16)
    return contextlib.nullcontext()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(c.SIZES), default="cpu")
    parser.add_argument(
        "--model_name_or_path",
        help="A local model folder to measure instead of the built --size (its own tokenizer and vocabulary).",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="Run the model in bfloat16 (and the Trainer with bf16).")
    parser.add_argument("--methods", nargs="+", default=list(c.METHODS), choices=c.METHODS)
    parser.add_argument("--batch_size", type=int, default=c.SEED_BATCH_SIZE)
    parser.add_argument("--steps", type=int, default=3, help="Timed steps per end-to-end run (after one warm-up).")
    parser.add_argument("--batches", type=int, default=2, help="Fixed batches per step-breakdown run.")
    parser.add_argument("--repeats", type=int, default=3, help="Runs per path; figures are medians.")
    parser.add_argument(
        "--ablation_methods",
        nargs="*",
        default=["prompt_tuning"],
        help="Methods whose step breakdown also times the seed's batches and our batches with all logits.",
    )
    parser.add_argument("--profile", action="store_true", help="Print the top operators of one step of each path.")
    parser.add_argument("--skip", nargs="*", default=[], choices=["end_to_end", "breakdown"])
    parser.add_argument("--json", help="Also write the results to this JSON file.")
    c.add_threads_argument(parser)
    args = parser.parse_args(argv)
    args.model_size = c.SIZES[args.size]
    args.dtype = torch.bfloat16 if args.bf16 else torch.float32
    return args


def main(args: argparse.Namespace) -> dict[str, Any]:
    c.quiet()
    c.set_threads(args.threads)
    tok = c.pretrained_tokenizer(args.model_name_or_path) if args.model_name_or_path else c.tokenizer()
    rows = c.labelled_rows()
    command = "python benchmarks/train_throughput.py" + c.flags(args)
    print(c.header("Training throughput", command))
    print(f"Model: {describe_model(args)}; batch {args.batch_size}; {len(rows)} tweet rows\n")
    results: dict[str, Any] = {}
    if "end_to_end" not in args.skip:
        print(c.table(END_TO_END_HEADERS, []))
        results["end_to_end"] = end_to_end(args, tok, list(rows))
        print()
    if "breakdown" not in args.skip:
        print(c.table(BREAKDOWN_HEADERS, []))
        results["breakdown"] = step_breakdown(args, tok, list(rows))
        print()
    c.dump_json(args.json, results)
    return results


if __name__ == "__main__":
    main(parse_args())
