"""Tiny soft-prompt adapters trained with the stock Trainer, for the push, card and predict tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import labelled_rows, method_options
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

from softprompt_hf import GenerationMetrics, SoftPromptDataCollator, build_soft_prompt_model
from softprompt_hf.adapter.hub_callback import HubPushCallback

LABELS = ["complaint", "no complaint"]


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Tiny models run fastest on one thread; two threads on two busy cores are up to 80 times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def one_thread():
    with single_thread():
        yield


def train_tiny_adapter(base_dir: Path, method: str, output_dir: Path, callbacks=(), **overrides) -> Trainer:
    """Trains a 4-token soft prompt of ``method`` on the tiny model in ``base_dir`` for a few epochs, evaluating
    generated labels each epoch; returns the Trainer (``trainer.model``, ``trainer.metrics_callback``)."""
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    torch.manual_seed(0)
    model = build_soft_prompt_model(
        AutoModelForCausalLM.from_pretrained(base_dir),
        **method_options(method, prompt_tuning_init="RANDOM", num_virtual_tokens=4),
    )
    rows = labelled_rows(24)
    metrics = GenerationMetrics(tokenizer, LABELS, rows[:8], batch_size=8)
    values = {
        "output_dir": str(output_dir),
        "per_device_train_batch_size": 8,
        "num_train_epochs": 3,
        "learning_rate": 3e-2,
        "eval_strategy": "epoch",
        "save_strategy": "no",
        "remove_unused_columns": False,
        "report_to": [],
        "logging_steps": 1,
        "seed": 0,
        "use_cpu": True,
        "disable_tqdm": True,
    }
    values.update(overrides)
    for callback in callbacks:
        if isinstance(callback, HubPushCallback) and callback.metrics is None:
            callback.metrics = metrics  # labels, template and confusion matrix for the card
    kwargs = metrics.trainer_kwargs()
    trainer = Trainer(
        model=model,
        args=TrainingArguments(**values),
        train_dataset=Dataset.from_list(rows),
        eval_dataset=Dataset.from_list(rows[:8]),
        data_collator=SoftPromptDataCollator(tokenizer),
        processing_class=tokenizer,
        compute_metrics=kwargs["compute_metrics"],
        preprocess_logits_for_metrics=kwargs["preprocess_logits_for_metrics"],
        callbacks=[*kwargs["callbacks"], *callbacks],
    )
    trainer.metrics_callback = metrics  # type: ignore[attr-defined]
    trainer.train()
    return trainer


# The embedded model answers one of its pretraining tasks after the prompt: the complaint task when prompt
# tuning starts from its instruction, and, with a random prompt, whichever task the prompt happens to select (the
# sentiment task's answers among others). Each adapter's label set is answers it gives, so that its predictions
# are varied labels, and some outputs that name none of them.
EMBEDDED_ADAPTERS = {
    "prompt_tuning": ({"prompt_tuning_init": "TEXT"}, ["complaint", "no complaint"]),
    "p_tuning": ({}, ["positive", "negative", "neutral"]),
    "prefix_tuning": ({}, ["positive", "negative", "neutral"]),
}
EMBEDDED_TEMPLATE = "{text_column} : {text} Label : "


def embedded_texts(n: int = 16) -> list[str]:
    """The first ``n`` tweets of the embedded data's labelled split."""
    import pandas as pd

    from softprompt_hf.embedded import EMBEDDED_DATA_FILES, TEXT_COLUMN

    return pd.read_parquet(EMBEDDED_DATA_FILES["train"])[TEXT_COLUMN].head(n).tolist()


def embedded_adapter(method: str, output_dir: Path):
    """An untrained 8-token soft prompt of ``method`` on the embedded model (seeded), saved with its labels and
    template to ``output_dir``: returns (model, tokenizer, saved folder, labels)."""
    from softprompt_hf.adapter.saving import save_adapter
    from softprompt_hf.embedded import EMBEDDED_MODEL_PATH, TEXT_COLUMN

    options, labels = EMBEDDED_ADAPTERS[method]
    tokenizer = AutoTokenizer.from_pretrained(EMBEDDED_MODEL_PATH)
    torch.manual_seed(0)
    model = build_soft_prompt_model(
        AutoModelForCausalLM.from_pretrained(EMBEDDED_MODEL_PATH),
        method=method,
        tokenizer=tokenizer,
        num_virtual_tokens=8,
        **options,
    )
    folder = save_adapter(
        model, output_dir, tokenizer=tokenizer, labels=labels, template=EMBEDDED_TEMPLATE, text_column=TEXT_COLUMN
    )
    return model, tokenizer, folder, labels


def generation_metrics_predictions(model, tokenizer, labels, texts, template=EMBEDDED_TEMPLATE):
    """GenerationMetrics' predictions (generate mode) on ``texts``: its outputs and matched labels."""
    # Every row's gold label is the first label: only the predictions are compared, not the scores.
    rows = [{"Tweet text": text, "text_label": labels[0]} for text in texts]
    metrics = GenerationMetrics(tokenizer, labels, rows, template=template, batch_size=4)
    metrics.evaluate(model)
    return metrics.last_predictions
