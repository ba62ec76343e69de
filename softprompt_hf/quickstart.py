"""Train a soft prompt on the embedded model and data, offline, and print the score before and after.

    python -m softprompt_hf.quickstart                          # prompt tuning, under a minute on a CPU
    python -m softprompt_hf.quickstart --method p_tuning
    python -m softprompt_hf.quickstart --method prefix_tuning --num_train_epochs 5
    python -m softprompt_hf.quickstart --prompt_tuning_init TEXT   # starts from the task's instruction
    python -m softprompt_hf.quickstart --task text              # free text: describe each tweet, ROUGE-L

Every ``SoftPromptArguments`` and ``TrainingArguments`` flag is accepted. The default task labels each tweet
complaint or no complaint, scored by the accuracy of greedy generation of the label text on the held-out
validation split. ``--task text`` trains on the same tweets to write their description
(``"angry complaint to skylink about flights"``, ``EMBEDDED_TEXT_DATA_FILES``), scored by the ROUGE-L and chrF
of greedy generation against the validation rows' descriptions. Prompt tuning starts from a random prompt
here (``prompt_tuning_init=RANDOM``) so that the learning shows: initialised from the seed's text, which
is the embedded model's own instruction for the complaint task, it is right before any training.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import AutoModelForCausalLM, AutoTokenizer, HfArgumentParser, Trainer, TrainingArguments, set_seed

from .adapter.card import ModelCardCallback
from .adapter.saving import save_adapter
from .data.collator import SoftPromptDataCollator
from .data.loading import load_raft, load_text_data
from .embedded import (
    DESCRIPTION_COLUMN,
    EMBEDDED_DATA_FILES,
    EMBEDDED_MODEL_PATH,
    EMBEDDED_TEXT_DATA_FILES,
    TEXT_COLUMN,
    label_tokenization_for,
)
from .evaluation.compute_metrics import GenerationMetrics, TextGenerationMetrics
from .modeling.methods import SoftPromptArguments, build_soft_prompt_model

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
    task: str = field(
        default="classification",
        metadata={
            "help": "classification: label each tweet complaint or no complaint (accuracy); text: describe each "
            "tweet in a few words (ROUGE-L, chrF).",
            "choices": ["classification", "text"],
        },
    )
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
    text_task = data_args.task == "text"

    # 1. Load the embedded data with an honest validation split: RAFT twitter_complaints' schema, or the same
    # labelled tweets with their descriptions.
    classes: list[str] | None = None
    if text_task:
        text_data = load_text_data(
            EMBEDDED_TEXT_DATA_FILES,
            source_columns=TEXT_COLUMN,
            target_column=DESCRIPTION_COLUMN,
            id_column="ID",
            validation_size=data_args.validation_size,
            seed=training_args.seed,
        )
        train, validation = text_data.train, text_data.validation
        text_column, target_column = TEXT_COLUMN, text_data.target_column
    else:
        raft = load_raft(
            data_files=EMBEDDED_DATA_FILES, validation_size=data_args.validation_size, seed=training_args.seed
        )
        train, validation, classes = raft.train, raft.validation, raft.classes
        text_column, target_column = raft.text_column, raft.target_column
    if validation is None:
        raise ValueError("The quick start needs a validation split: set --validation_size above 0.")
    # 2. Load the frozen base model and wrap it with the soft prompt.
    tokenizer = AutoTokenizer.from_pretrained(data_args.model_name_or_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = build_soft_prompt_model(
        AutoModelForCausalLM.from_pretrained(data_args.model_name_or_path),
        prompt_args,
        tokenizer=tokenizer,
        training_args=training_args,
        class_labels=classes,  # for --prompt_tuning_init CLASS_LABELS
    )
    model.print_trainable_parameters()
    # Where the prompt ends and the label begins: the tokenizer's joint boundary, or the embedded model's own.
    boundary = label_tokenization_for(data_args.model_name_or_path)
    metrics: GenerationMetrics | TextGenerationMetrics
    if classes is None:
        metrics = TextGenerationMetrics(
            tokenizer,
            validation,
            text_column=text_column,
            target_column=target_column,
            id_column="ID",
            metrics=["rouge", "chrf"],
            label_tokenization=boundary,
        )
    else:
        metrics = GenerationMetrics(
            tokenizer, classes, validation, text_column=text_column, label_tokenization=boundary
        )
    before = metrics.evaluate(model)
    first_before = metrics.last_predictions[0]
    # 3. Train with the stock Trainer and our collator.
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train,
        data_collator=SoftPromptDataCollator(
            tokenizer, text_column=text_column, target_column=target_column, label_tokenization=boundary
        ),
        processing_class=tokenizer,
    )
    trainer.train()
    after = metrics.evaluate(model)
    # 4. Save the adapter folder (adapter, card, softprompt_hf.json; no copy of the tokenizer, the base model's own),
    # as the recipes do: it loads with AutoPeftModelForCausalLM, and `softprompt-hf predict <folder>` knows its
    # labels (or that it writes free text), template, text column and where its tokenizer is.
    collected = ModelCardCallback.of(
        trainer, base_model=data_args.model_name_or_path, metrics=metrics, allow_local_base=True
    )
    scores = {"rougeL": after["rougeL"], "chrf": after["chrf"]} if text_task else {"accuracy": after["accuracy"]}
    card_data = collected.card_data(model, metrics=scores)
    folder = save_adapter(model, Path(training_args.output_dir) / "adapter", tokenizer=tokenizer, card=card_data)
    if not isinstance(metrics, TextGenerationMetrics):
        print(
            f"{prompt_args.method}: validation accuracy {before['accuracy']:.3f} before training, "
            f"{after['accuracy']:.3f} after ({len(validation)} rows); adapter saved to {folder}"
        )
        return {"accuracy_before": before["accuracy"], "accuracy_after": after["accuracy"]}
    first_after = metrics.last_predictions[0]  # the same row: the first validation row, before and after
    print(
        f"{prompt_args.method}: validation ROUGE-L {before['rougeL']:.3f} before training, {after['rougeL']:.3f} "
        f"after; chrF {before['chrf']:.1f} before, {after['chrf']:.1f} after ({len(validation)} rows); "
        f"adapter saved to {folder}\n"
        f"  {first_after.text!r}\n  reference: {first_after.reference!r}\n"
        f"  before:    {first_before.output!r}\n  after:     {first_after.output!r}"
    )
    return {
        "rougeL_before": before["rougeL"],
        "rougeL_after": after["rougeL"],
        "chrf_before": before["chrf"],
        "chrf_after": after["chrf"],
    }


if __name__ == "__main__":
    main(sys.argv[1:])
