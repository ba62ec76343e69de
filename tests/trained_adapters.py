"""Tiny soft-prompt adapters trained with the stock Trainer, for the push, card and predict tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import labelled_rows
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

from softprompt_hf import GenerationMetrics, SoftPromptDataCollator, build_soft_prompt_model
from softprompt_hf.hub import HubPushCallback

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
        AutoModelForCausalLM.from_pretrained(base_dir), method=method, prompt_tuning_init="RANDOM", num_virtual_tokens=4
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
