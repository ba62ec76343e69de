"""The library on a CUDA GPU: the stock Trainer trains each method there, and the labels evaluated there equal the
CPU's.

Run with ``python -m pytest -m gpu`` on a machine with a CUDA GPU (about a minute); everywhere else these tests
are collected and skipped, and the default run (``-m 'not slow and not gpu'``) deselects them.
"""

from __future__ import annotations

import pytest
import torch
from conftest import METHODS
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

from softprompt_hf import GenerationMetrics, SoftPromptDataCollator, build_soft_prompt_model, load_raft
from softprompt_hf.embedded import EMBEDDED_DATA_FILES, EMBEDDED_MODEL_PATH

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"),
]


@pytest.fixture(scope="module")
def data():
    return load_raft(data_files=EMBEDDED_DATA_FILES)


@pytest.mark.parametrize("method", METHODS)
def test_trainer_trains_on_cuda_and_its_labels_equal_the_cpu_labels(method, data, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(EMBEDDED_MODEL_PATH)
    base = AutoModelForCausalLM.from_pretrained(EMBEDDED_MODEL_PATH)
    frozen = {name: weight.detach().clone() for name, weight in base.named_parameters()}
    # A random prompt, as in the quick start, so that the learning shows (TEXT init is right before training).
    options = {"prompt_tuning_init": "RANDOM"} if method == "prompt_tuning" else {}
    model = build_soft_prompt_model(base, method=method, tokenizer=tokenizer, **options)
    prompt_before = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    args = TrainingArguments(
        output_dir=str(tmp_path),
        num_train_epochs=3,
        per_device_train_batch_size=16,
        learning_rate=3e-2,
        lr_scheduler_type="linear",
        remove_unused_columns=False,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=data.train,
        data_collator=SoftPromptDataCollator(tokenizer),
    )
    assert trainer.args.device.type == "cuda"
    trainer.train()

    trained = dict(model.named_parameters())
    assert {p.device.type for p in trained.values()} == {"cuda"}
    assert all(not torch.equal(trained[name].detach().cpu(), before) for name, before in prompt_before.items())
    assert all(torch.equal(trained[f"base_model.{name}"].detach().cpu(), w) for name, w in frozen.items())

    by_device = {}
    for device in ("cuda", "cpu"):
        model.to(device)
        generated = GenerationMetrics(tokenizer, data.classes, data.validation)
        ranked = GenerationMetrics(tokenizer, data.classes, data.validation, mode="rank")
        scores = generated.evaluate(model), ranked.evaluate(model)
        labels = [p.predicted for p in generated.last_predictions], [p.predicted for p in ranked.last_predictions]
        by_device[device] = scores, labels
    (cuda_scores, cuda_labels), (cpu_scores, cpu_labels) = by_device["cuda"], by_device["cpu"]
    assert cuda_scores[0]["accuracy"] >= 0.9 and cuda_scores[1]["accuracy"] >= 0.9, cuda_scores
    assert cuda_labels == cpu_labels
    assert cuda_scores == cpu_scores
