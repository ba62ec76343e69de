"""Soft-prompt fine-tuning of a causal LM with the stock Trainer, every step in this file:

    python recipes/train.py                                  # prompt tuning on the embedded model and data
    python recipes/train.py --method prefix_tuning --num_train_epochs 5
    accelerate launch recipes/train.py --config recipes/configs/p_tuning_bloomz-560m.yaml
    python recipes/train.py --help                           # every flag, with the recipes' defaults

The method comes from ``--method``, else the config's ``method``, else prompt tuning. ``recipes/prompt_tuning.py``,
``p_tuning.py`` and ``prefix_tuning.py`` run this file for their own method and say what each one learns. Copy
this file to change what a step does: each step is a call into ``softprompt_hf`` that you can replace with your own
code. recipes/README.md says what a run writes and how errors look.
"""

from __future__ import annotations

import sys
from typing import Any

from transformers import AutoModelForCausalLM, Trainer, set_seed

from softprompt_hf.data.loading import ClassificationData
from softprompt_hf.modeling.methods import build_peft_config, build_soft_prompt_model
from softprompt_hf.steps import (
    build_collator,
    build_metrics,
    check_output_dir,
    enable_speed_ups,
    end_run,
    load_run_data,
    load_run_tokenizer,
    push_run,
    recipe_callbacks,
    resolve_resume_checkpoint,
    run_recipe,
    save_run_outputs,
    setup_logging,
    summary_line,
    take_over_hub_push,
)
from softprompt_hf.training.arguments import parse_recipe_args
from softprompt_hf.training.callbacks import check_trainer


def main(argv: list[str] | None = None, method: str | None = None) -> dict[str, Any]:
    # 1. Arguments: a --config YAML file, then flags (every field of ModelArguments, DataArguments,
    #    SoftPromptArguments and TrainingArguments). A method's own recipe passes its method.
    args = parse_recipe_args(method, argv)
    training_args = args.training

    # 2. Before anything loads: show the run's progress on the main process; take the Hub push over from the
    #    Trainer (checked now: no token, no write access or a local base model fail here, not after training;
    #    the token leaves training_args, which every checkpoint pickles); make sure --output_dir can be written;
    #    find the checkpoint to resume from (--resume_from_checkpoint last: the newest complete one).
    setup_logging(training_args)
    hub_target = take_over_hub_push(training_args, args.model)
    check_output_dir(training_args)
    resume_from = resolve_resume_checkpoint(training_args)
    set_seed(training_args.seed)

    # 3. Data: the rows (--dataset, --task) with a seeded validation split, stratified by label for a
    #    classification task; --max_train_samples cuts the training rows.
    data = load_run_data(args.data, seed=training_args.seed)
    class_labels = list(data.classes) if isinstance(data, ClassificationData) else None

    # 4. Load: the tokenizer (EOS ends every target and pads), then the frozen base model.
    tokenizer = load_run_tokenizer(args.model, chat_template=args.data.chat_template)
    base_model = AutoModelForCausalLM.from_pretrained(args.model.model_name_or_path)

    # 5. Wrap: peft's config for the method (built in one place: build_peft_config), and where the soft prompt
    #    starts (--prompt_tuning_init, --prefix_tuning_init; CLASS_LABELS takes the data's labels). The base
    #    model's weights are frozen; only the prompt (and its encoder) trains.
    peft_config = build_peft_config(args.prompt, tokenizer=tokenizer)
    init = args.prompt.initialization(class_labels=class_labels)
    model = build_soft_prompt_model(
        base_model, peft_config, tokenizer=tokenizer, training_args=training_args, init=init
    )
    enable_speed_ups(model, training_args)  # --label_only_logits, --shared_prompt: the same loss, sooner

    # 6. The stock Trainer with our collator (the template, the label boundary, the length caps), the
    #    generation-based metrics on the validation rows, and the callbacks: refusals of settings that cannot
    #    work, checkpoints that resume exactly, the parameter summary, sample predictions, early stopping.
    metrics = build_metrics(tokenizer, data, args.data, training_args)
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=data.train,
        eval_dataset=data.validation,
        data_collator=build_collator(tokenizer, data, args.data),
        processing_class=tokenizer,
        compute_metrics=metrics,
        preprocess_logits_for_metrics=metrics.trainer_kwargs()["preprocess_logits_for_metrics"],
        callbacks=recipe_callbacks(metrics, training_args),
    )
    check_trainer(trainer)
    if not training_args.eval_loss:
        metrics.skip_loss_pass(trainer)  # evaluations decode only; --eval_loss keeps the loss pass

    # 7. Train.
    trainer.train(resume_from_checkpoint=resume_from)

    # 8. Evaluate the final adapter (the best one with --load_best_model_at_end) by generation.
    results = trainer.evaluate()

    # 9. Save: eval_results.json, predictions.csv, adapter/ (the adapter with its model card and
    #    softprompt_hf.json, loadable with AutoPeftModelForCausalLM) and, for unlabelled rows, the RAFT submission.
    #    Saved locally before any push, so that a failed push loses nothing.
    repo_id = hub_target.repo_id if hub_target is not None else None
    save_run_outputs(trainer, results, data=data, metrics=metrics, args=args, repo_id=repo_id)

    # 10. Push the saved adapter/ folder (--push_to_hub); a failure says how to push the folder later.
    if hub_target is not None:
        push_run(trainer, hub_target, args.model)

    # 11. The one line a run prints, then every process waits and the Trainer ends.
    if trainer.is_world_process_zero():
        print(summary_line(args.prompt.method, results, data, str(training_args.output_dir)))
    end_run(trainer)
    return results


if __name__ == "__main__":
    sys.exit(run_recipe(main))  # input errors: one "error: ..." line and exit code 1
