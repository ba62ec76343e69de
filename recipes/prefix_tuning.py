"""Prefix tuning (Li & Liang, 2021) of a causal LM with the stock Trainer:

    python recipes/prefix_tuning.py
    accelerate launch recipes/prefix_tuning.py --config recipes/configs/prefix_tuning_bloomz-560m.yaml
    python recipes/prefix_tuning.py --prefix_projection true --encoder_hidden_size 256
    python recipes/prefix_tuning.py --help     # every flag, with the recipes' defaults

Learns a key/value prefix for every attention layer (optionally through a projection MLP,
``--prefix_projection``); the model stays frozen. Gradient checkpointing is refused: peft cannot combine it
with prefixes. With no arguments it trains on the package's embedded model and data, offline, in about a
minute on a CPU. Copy this file to change what the steps do; recipes/README.md says what a run writes and
how errors look.
"""

from __future__ import annotations

import sys

from peft import PrefixTuningConfig, TaskType

from softprompt_hf.runner import build_trainer, finish_recipe, run_recipe, start_run
from softprompt_hf.training.arguments import parse_recipe_args


def main(argv: list[str] | None = None) -> dict[str, float]:
    # 1. Arguments (--config file, then flags), then the checks, the seed, the data and the tokenizer.
    args = parse_recipe_args("prefix_tuning", argv)
    run = start_run(args)

    # 2. peft's config: a prefix of 20 key/value positions (--num_virtual_tokens) per layer; with
    #    --prefix_projection, produced by a two-layer MLP of --encoder_hidden_size (checkpoints keep the MLP,
    #    so --resume_from_checkpoint is exact). Where the prefix starts (--prefix_tuning_init): peft's RANDOM, or
    #    TEXT, the key/values the frozen model computes for --prefix_tuning_init_text (as many positions as its
    #    tokens, when --num_virtual_tokens is not set).
    projection = args.prompt.prefix_projection
    peft_config = PrefixTuningConfig(
        task_type=TaskType.CAUSAL_LM,
        prefix_projection=projection,
        encoder_hidden_size=args.prompt.encoder_hidden_size if projection else None,
        num_virtual_tokens=args.prompt.num_virtual_tokens_for(run.tokenizer),
    )

    # 3. Model and Trainer: the frozen base model with the prefix; our collator, generation-based metrics,
    #    checkpoints that resume exactly, refusals, sample predictions.
    trainer = build_trainer(run, peft_config, init=args.prompt.initialization())

    # 4. Train (from the last complete checkpoint with --resume_from_checkpoint last).
    trainer.train(resume_from_checkpoint=run.resume_from_checkpoint)

    # 5. Evaluate the best adapter, save it with its tokenizer and card, predictions, submission; push.
    return finish_recipe(trainer, run)


if __name__ == "__main__":
    sys.exit(run_recipe(main))  # input errors: one "error: ..." line and exit code 1
