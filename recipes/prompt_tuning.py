"""Prompt tuning (Lester et al., 2021) of a causal LM with the stock Trainer:

    python recipes/prompt_tuning.py
    accelerate launch recipes/prompt_tuning.py --config recipes/configs/prompt_tuning_bloomz-560m.yaml
    python recipes/prompt_tuning.py --prompt_tuning_init RANDOM --num_virtual_tokens 16 --num_train_epochs 5
    python recipes/prompt_tuning.py --help     # every flag, with the recipes' defaults

Learns ``num_virtual_tokens`` input embeddings put in front of every prompt; the model stays frozen. With no
arguments it trains on the package's embedded model and data, offline, in about a minute on a CPU. Copy this
file to change what the steps do; recipes/README.md says what a run writes and how errors look.
"""

from __future__ import annotations

import sys

from peft import PromptTuningConfig, PromptTuningInit, TaskType

from softprompt_hf.arguments import parse_recipe_args
from softprompt_hf.runner import build_trainer, finish_recipe, run_recipe, start_run


def main(argv: list[str] | None = None) -> dict[str, float]:
    # 1. Arguments (--config file, then flags), then the checks, the seed, the data and the tokenizer.
    args = parse_recipe_args("prompt_tuning", argv)
    run = start_run(args)

    # 2. peft's config: TEXT starts the prompt from the embeddings of the init text's tokens (the seed's
    #    instruction; 8 tokens with bloomz-560m, when --num_virtual_tokens is not set); RANDOM and SAMPLE_VOCAB
    #    need no text.
    options = args.prompt
    text_init = options.prompt_tuning_init == "TEXT"
    peft_config = PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM,
        prompt_tuning_init=PromptTuningInit(options.prompt_tuning_init),
        num_virtual_tokens=options.num_virtual_tokens_for(run.tokenizer),
        prompt_tuning_init_text=options.prompt_tuning_init_text if text_init else None,
        tokenizer_name_or_path=run.tokenizer.name_or_path if text_init else None,
    )

    # 3. Model and Trainer: the frozen base model with the prompt; our collator, generation-based metrics,
    #    checkpoints that resume exactly, refusals, sample predictions.
    trainer = build_trainer(run, peft_config)

    # 4. Train (from the last complete checkpoint with --resume_from_checkpoint last).
    trainer.train(resume_from_checkpoint=run.resume_from_checkpoint)

    # 5. Evaluate the best adapter, save it with its tokenizer and card, predictions, submission; push.
    return finish_recipe(trainer, run)


if __name__ == "__main__":
    sys.exit(run_recipe(main))  # input errors: one "error: ..." line and exit code 1
