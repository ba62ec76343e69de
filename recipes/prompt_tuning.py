"""Prompt tuning (Lester et al., 2021) of a causal LM with the stock Trainer.

Learns ``num_virtual_tokens`` input embeddings put in front of every prompt; the model stays frozen. With no
arguments it trains on the package's embedded model and data, offline, in about a minute on a CPU:

    python recipes/prompt_tuning.py
    accelerate launch recipes/prompt_tuning.py --config recipes/configs/prompt_tuning_bloomz-560m.yaml
    python recipes/prompt_tuning.py --prompt_tuning_init RANDOM --num_virtual_tokens 16 --num_train_epochs 5

Every TrainingArguments flag is accepted, and every option of SoftPromptArguments, ModelArguments,
DataArguments and RunArguments (``--help`` lists them); ``--config file.yaml`` sets flags from a file and the
command line overrides it. The run ends with the validation metrics of the best adapter, and in
``output_dir``: ``adapter/`` (adapter, tokenizer, model card), ``predictions.csv``, ``eval_results.json`` and,
for data with unlabelled rows, ``raft_submission.csv``. Bad input ends the run with one ``error: ...`` line and
exit code 1 (``SOFTPROMPT_HF_TRACEBACK=1`` shows the traceback; the README's Troubleshooting lists the cases).
"""

from __future__ import annotations

import sys

from transformers import AutoModelForCausalLM, Trainer, set_seed

from softprompt_hf import build_soft_prompt_model
from softprompt_hf.callbacks import check_trainer
from softprompt_hf.runner import (
    build_collator,
    build_metrics,
    check_output_dir,
    enable_speed_ups,
    finish_run,
    load_recipe_data,
    load_recipe_tokenizer,
    parse_recipe_args,
    push_run,
    recipe_callbacks,
    resolve_resume_checkpoint,
    run_recipe,
    setup_logging,
    summary_line,
    take_over_hub_push,
)

METHOD = "prompt_tuning"


def main(argv: list[str] | None = None) -> dict[str, float]:
    model_args, data_args, run_args, prompt_args, training_args = parse_recipe_args(METHOD, argv)
    setup_logging(training_args)
    hub_repo = take_over_hub_push(training_args, model_args, run_args)  # pushed in step 6 by us, not the Trainer
    check_output_dir(training_args)  # writable now, not only when the first checkpoint is due
    set_seed(training_args.seed)

    # 1. Data: labelled rows with a stratified, seeded validation split; unlabelled rows for predictions.
    data = load_recipe_data(data_args, seed=training_args.seed)

    # 2. Model: the frozen base model with a prompt of trainable virtual-token embeddings (TEXT init from the
    #    tokenizer's embeddings of --prompt_tuning_init_text, RANDOM or SAMPLE_VOCAB).
    tokenizer = load_recipe_tokenizer(model_args)
    base_model = AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path)
    model = build_soft_prompt_model(base_model, prompt_args, tokenizer=tokenizer, training_args=training_args)
    enable_speed_ups(model, run_args, training_args)  # exact: logits at labels only, virtual tokens once

    # 3. Trainer: our collator, generation-based metrics, exact checkpoints, refusals, sample predictions.
    metrics = build_metrics(tokenizer, data, data_args, run_args, training_args)
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=data.train,
        eval_dataset=data.validation,
        data_collator=build_collator(tokenizer, data, data_args),
        processing_class=tokenizer,
        compute_metrics=metrics,
        preprocess_logits_for_metrics=metrics.trainer_kwargs()["preprocess_logits_for_metrics"],
        callbacks=recipe_callbacks(metrics, run_args),
    )
    check_trainer(trainer)

    # 4. Train (from the last complete checkpoint with --resume_from_checkpoint last).
    trainer.train(resume_from_checkpoint=resolve_resume_checkpoint(training_args))

    # 5. Evaluate the best adapter; save it (atomically) with its tokenizer, card, predictions, submission.
    results = finish_run(
        trainer, metrics, data, model_args=model_args, data_args=data_args, run_args=run_args, repo_id=hub_repo
    )

    # 6. Push the saved folder to the Hub (--push_to_hub --hub_model_id); the local copy is already complete.
    if hub_repo is not None:
        push_run(trainer, hub_repo, model_args)
    if trainer.is_world_process_zero():
        print(summary_line(METHOD, results, data, training_args.output_dir))
    return results


if __name__ == "__main__":
    sys.exit(run_recipe(main))  # input errors: one "error: ..." line and exit code 1
