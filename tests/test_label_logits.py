"""Logits only at the supervised positions: the same loss and gradients as the stock forward."""

from __future__ import annotations

import pytest
import torch
from conftest import ARCHS, METHODS, labelled_rows, model_config, tiny_soft_prompt_model, train_a_few_steps
from transformers import AutoModelForCausalLM

from softprompt_hf import SoftPromptDataCollator
from softprompt_hf.modeling.label_logits import enable_label_only_logits


def _loss_and_grads(model, batch, **extra):
    torch.manual_seed(1)  # the same dropout masks (GPT-2) for both forwards
    outputs = model(**batch, **extra)
    outputs.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    return outputs, grads


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", METHODS)
def test_same_loss_and_gradients_as_all_logits(tokenizer, arch, method):
    model = tiny_soft_prompt_model(tokenizer, arch, method).train()
    batch = SoftPromptDataCollator(tokenizer)(labelled_rows(6))
    for extra in ({}, {"num_items_in_batch": torch.tensor(11)}):
        full, full_grads = _loss_and_grads(model, batch, **extra)
        handle = enable_label_only_logits(model)
        trimmed, trimmed_grads = _loss_and_grads(model, batch, **extra)
        handle.remove()
        assert trimmed.loss.item() == pytest.approx(full.loss.item(), abs=1e-5)
        for name, grad in full_grads.items():
            torch.testing.assert_close(trimmed_grads[name], grad, atol=1e-5, rtol=1e-4)
    supervised = int((batch["labels"] != -100).sum())
    assert trimmed.logits.shape == (supervised, len(tokenizer))
    assert full.logits.dim() == 3


def test_eval_calls_and_calls_without_labels_keep_all_logits(tokenizer):
    model = tiny_soft_prompt_model(tokenizer, "llama", "prompt_tuning")
    enable_label_only_logits(model)
    batch = SoftPromptDataCollator(tokenizer)(labelled_rows(3))
    length = 4 + batch["input_ids"].shape[1]
    model.train()
    assert model(input_ids=batch["input_ids"]).logits.shape == (3, length, len(tokenizer))
    model.eval()
    assert model(**batch).logits.shape == (3, length, len(tokenizer))


def test_in_eval_trims_eval_calls_too(tokenizer):
    model = tiny_soft_prompt_model(tokenizer, "bloom", "prefix_tuning").eval()
    batch = SoftPromptDataCollator(tokenizer)(labelled_rows(3))
    with torch.no_grad():
        full = model(**batch).loss
        handle = enable_label_only_logits(model, in_eval=True)
        trimmed = model(**batch)
    handle.remove()
    assert trimmed.logits.dim() == 2
    assert trimmed.loss.item() == pytest.approx(full.item(), abs=1e-5)


@pytest.mark.parametrize("method", METHODS)
def test_trainer_runs_the_same_training(tmp_path, tokenizer, method):
    """The stock Trainer, with and without the hook: the same losses at every step and the same prompt."""

    def train(label_only: bool):
        model = tiny_soft_prompt_model(tokenizer, "gpt2", method)
        if label_only:
            assert enable_label_only_logits(model) is not None
        return train_a_few_steps(model, tokenizer, tmp_path / str(label_only))

    full_losses, full_params = train(False)
    trimmed_losses, trimmed_params = train(True)
    assert trimmed_losses == pytest.approx(full_losses, abs=1e-4)
    for trimmed, full in zip(trimmed_params, full_params, strict=True):
        torch.testing.assert_close(trimmed, full, atol=1e-4, rtol=1e-3)


def test_model_without_logits_to_keep_is_left_alone(tokenizer, caplog):
    class NoKeep(torch.nn.Module):
        def forward(self, input_ids=None, labels=None):
            return input_ids

    assert enable_label_only_logits(NoKeep()) is None


def test_plain_causal_lm(tokenizer):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(model_config("llama", len(tokenizer))).train()
    batch = SoftPromptDataCollator(tokenizer)(labelled_rows(4))
    full, _ = _loss_and_grads(model, batch)
    enable_label_only_logits(model)
    trimmed, _ = _loss_and_grads(model, batch)
    assert trimmed.loss.item() == pytest.approx(full.loss.item(), abs=1e-5)
    assert trimmed.logits.dim() == 2
