"""P-tuning (Liu et al., 2021) of a causal LM with the stock Trainer:

    python recipes/p_tuning.py
    accelerate launch recipes/p_tuning.py --config recipes/configs/p_tuning_bloomz-560m.yaml
    python recipes/p_tuning.py --encoder_reparameterization_type LSTM --encoder_hidden_size 256
    python recipes/p_tuning.py --help     # every flag, with the recipes' defaults

Learns virtual-token embeddings passed through a small prompt encoder (an MLP, or an LSTM + MLP) and put in
front of every prompt; the model stays frozen. With no arguments it trains on the package's embedded model
and data, offline, in about a minute on a CPU. Copy this file to change what the steps do; recipes/README.md
says what a run writes and how errors look.
"""

from __future__ import annotations

import sys

from peft import PromptEncoderConfig, PromptEncoderReparameterizationType, TaskType

from softprompt_hf.runner import build_trainer, finish_recipe, run_recipe, start_run
from softprompt_hf.training.arguments import parse_recipe_args


def main(argv: list[str] | None = None) -> dict[str, float]:
    # 1. Arguments (--config file, then flags), then the checks, the seed, the data and the tokenizer.
    args = parse_recipe_args("p_tuning", argv)
    run = start_run(args)

    # 2. peft's config: 20 virtual tokens (--num_virtual_tokens) through the prompt encoder, whose hidden size
    #    is the seed's 128. Checkpoints keep the encoder itself, so --resume_from_checkpoint is exact.
    options = args.prompt
    encoder = PromptEncoderReparameterizationType(options.encoder_reparameterization_type)
    peft_config = PromptEncoderConfig(
        task_type=TaskType.CAUSAL_LM,
        encoder_reparameterization_type=encoder,
        encoder_hidden_size=options.encoder_hidden_size,  # None: the base model's hidden size
        encoder_num_layers=options.encoder_num_layers,
        encoder_dropout=options.encoder_dropout,
        num_virtual_tokens=options.num_virtual_tokens_for(),
    )

    # 3. Model and Trainer: the frozen base model with the prompt encoder; our collator, generation-based
    #    metrics, checkpoints that resume exactly, refusals, sample predictions.
    trainer = build_trainer(run, peft_config)

    # 4. Train (from the last complete checkpoint with --resume_from_checkpoint last).
    trainer.train(resume_from_checkpoint=run.resume_from_checkpoint)

    # 5. Evaluate the best adapter, save it with its tokenizer and card, predictions, submission; push.
    return finish_recipe(trainer, run)


if __name__ == "__main__":
    sys.exit(run_recipe(main))  # input errors: one "error: ..." line and exit code 1
