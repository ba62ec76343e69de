"""Train a soft prompt on the embedded model and data, offline, and print the accuracy before and after.

    python -m softprompt_hf.quickstart                          # prompt tuning, under a minute on a CPU
    python -m softprompt_hf.quickstart --method p_tuning
    python -m softprompt_hf.quickstart --method prefix_tuning --num_train_epochs 5
    python -m softprompt_hf.quickstart --prompt_tuning_init TEXT   # starts from the task's instruction

Every ``SoftPromptArguments`` and ``TrainingArguments`` flag is accepted. The accuracy is that of greedy
generation of the label text on the held-out validation split. Prompt tuning starts from a random prompt
here (``prompt_tuning_init=RANDOM``) so that the learning shows: initialised from the seed's text, which
is the embedded model's own instruction for the task, it is right before any training.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer, HfArgumentParser, Trainer, TrainingArguments, set_seed

from .card import ModelCardCallback
from .collator import SoftPromptDataCollator
from .data import load_raft
from .embedded import EMBEDDED_DATA_FILES, EMBEDDED_MODEL_PATH, label_tokenization_for
from .evaluation import GenerationMetrics
from .methods import SoftPromptArguments, build_soft_prompt_model
from .saving import save_adapter

_TRAINING_DEFAULTS = {
    "output_dir": "outputs/quickstart",
    "learning_rate": 3e-2,
    "num_train_epochs": 3,
    "per_device_train_batch_size": 16,
    "lr_scheduler_type": "linear",
    "warmup_steps": 0,
    "remove_unused_columns": False,
    "save_strategy": "no",
    "report_to": "none",
    "logging_steps": 10,
    "seed": 42,
}


@dataclass
class DataArguments:
    model_name_or_path: str = field(default=str(EMBEDDED_MODEL_PATH), metadata={"help": "Base model."})
    validation_size: float = field(default=0.2, metadata={"help": "Fraction of labelled rows held out."})


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = HfArgumentParser([DataArguments, SoftPromptArguments, TrainingArguments])  # type: ignore[list-item]
    parser.set_defaults(**_TRAINING_DEFAULTS)
    method = argparse.ArgumentParser(add_help=False)
    method.add_argument("--method", default="prompt_tuning")
    if method.parse_known_args(argv)[0].method == "prompt_tuning":
        # Only prompt tuning takes the option: SoftPromptArguments refuses it for the other methods.
        parser.set_defaults(prompt_tuning_init="RANDOM")
    data_args, prompt_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    set_seed(training_args.seed)

    # 1. Load the embedded data (RAFT twitter_complaints' schema) with an honest validation split.
    data = load_raft(data_files=EMBEDDED_DATA_FILES, validation_size=data_args.validation_size, seed=training_args.seed)
    if data.validation is None:
        raise ValueError("The quick start needs a validation split: set --validation_size above 0.")
    validation = data.validation
    # 2. Load the frozen base model and wrap it with the soft prompt.
    tokenizer = AutoTokenizer.from_pretrained(data_args.model_name_or_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = build_soft_prompt_model(
        AutoModelForCausalLM.from_pretrained(data_args.model_name_or_path),
        prompt_args,
        tokenizer=tokenizer,
        training_args=training_args,
        class_labels=data.classes,  # for --prompt_tuning_init CLASS_LABELS
    )
    model.print_trainable_parameters()
    # Where the prompt ends and the label begins: the tokenizer's joint boundary, or the embedded model's own.
    boundary = label_tokenization_for(data_args.model_name_or_path)
    metrics = GenerationMetrics(
        tokenizer, data.classes, validation, text_column=data.text_column, label_tokenization=boundary
    )
    before = metrics.evaluate(model)["accuracy"]
    # 3. Train with the stock Trainer and our collator.
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=data.train,
        data_collator=SoftPromptDataCollator(tokenizer, text_column=data.text_column, label_tokenization=boundary),
        processing_class=tokenizer,
    )
    trainer.train()
    after = metrics.evaluate(model)["accuracy"]
    # 4. Save the adapter folder (adapter, card, softprompt_hf.json; no copy of the tokenizer, the base model's own),
    # as the recipes do: it loads with AutoPeftModelForCausalLM, and `softprompt-hf predict <folder>` knows its
    # labels, template, text column and where its tokenizer is.
    collected = ModelCardCallback.of(
        trainer, base_model=data_args.model_name_or_path, metrics=metrics, allow_local_base=True
    )
    card_data = collected.card_data(model, metrics={"accuracy": after})
    folder = save_adapter(model, Path(training_args.output_dir) / "adapter", tokenizer=tokenizer, card=card_data)
    print(
        f"{prompt_args.method}: validation accuracy {before:.3f} before training, {after:.3f} after "
        f"({len(validation)} rows); adapter saved to {folder}"
    )
    return {"accuracy_before": before, "accuracy_after": after}


if __name__ == "__main__":
    main(sys.argv[1:])
