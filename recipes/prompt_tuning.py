"""Prompt tuning (Lester et al., 2021) of a causal LM with the stock Trainer:

    python recipes/prompt_tuning.py
    accelerate launch recipes/prompt_tuning.py --config recipes/configs/prompt_tuning_bloomz-560m.yaml
    python recipes/prompt_tuning.py --prompt_tuning_init RANDOM --num_virtual_tokens 16 --num_train_epochs 5
    python recipes/prompt_tuning.py --prompt_tuning_init CLASS_LABELS --num_virtual_tokens 8
    python recipes/prompt_tuning.py --help     # every flag, with the recipes' defaults

Learns ``num_virtual_tokens`` input embeddings put in front of every prompt; the model stays frozen. With no
arguments it trains on the package's embedded model and data, offline, in about a minute on a CPU. Copy this
file to change what the steps do; recipes/README.md says what a run writes and how errors look.
"""

from __future__ import annotations

import sys

from softprompt_hf.modeling.methods import build_peft_config
from softprompt_hf.runner import build_trainer, finish_recipe, run_recipe, start_run
from softprompt_hf.training.arguments import parse_recipe_args


def main(argv: list[str] | None = None) -> dict[str, float]:
    # 1. Arguments (--config file, then flags), then the checks, the seed, the data and the tokenizer.
    args = parse_recipe_args("prompt_tuning", argv)
    run = start_run(args)

    # 2. peft's config, and where the prompt starts (--prompt_tuning_init): TEXT, the input embeddings of the init
    #    text's tokens as the tokenizer encodes any input (peft's TEXT: a BOS first if the tokenizer adds one; 8
    #    tokens with bloomz-560m, when --num_virtual_tokens is not set); TEXT_WITHOUT_SPECIAL_TOKENS, the text's own
    #    tokens; CLASS_LABELS, one virtual token per label of the data, the others sampled from the vocabulary;
    #    SAMPLE_VOCAB; RANDOM. The values are set once peft has built the prompt.
    peft_config = build_peft_config(args.prompt, tokenizer=run.tokenizer)
    init = args.prompt.initialization(class_labels=run.class_labels)

    # 3. Model and Trainer: the frozen base model with the prompt; our collator, generation-based metrics,
    #    checkpoints that resume exactly, refusals, sample predictions.
    trainer = build_trainer(run, peft_config, init=init)

    # 4. Train (from the last complete checkpoint with --resume_from_checkpoint last).
    trainer.train(resume_from_checkpoint=run.resume_from_checkpoint)

    # 5. Evaluate the best adapter, save it with its tokenizer and card, predictions, submission; push.
    return finish_recipe(trainer, run)


if __name__ == "__main__":
    sys.exit(run_recipe(main))  # input errors: one "error: ..." line and exit code 1
