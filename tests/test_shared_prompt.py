"""The virtual tokens computed once per batch: the same loss and gradients as peft's per-row forward."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import ARCHS, MORE_ARCHS, SLIDING_ARCHS, labelled_rows, method_options, model_config, train_a_few_steps
from transformers import AutoModelForCausalLM

from softprompt_hf import SoftPromptDataCollator, build_soft_prompt_model
from softprompt_hf.modeling.label_logits import enable_label_only_logits
from softprompt_hf.modeling.shared_prompt import enable_shared_prompt

SHARED_METHODS = ("prompt_tuning", "p_tuning")
# GPT-2's defaults are 0.1; GPT-NeoX and Phi have their own names.
NO_DROPOUT = dict.fromkeys(("resid_pdrop", "embd_pdrop", "attn_pdrop", "hidden_dropout", "attention_dropout"), 0.0)


def no_dropout_model(tokenizer, arch: str, method: str, **options):
    torch.manual_seed(0)
    config = model_config(arch, len(tokenizer))
    for name, value in NO_DROPOUT.items():
        if hasattr(config, name):
            setattr(config, name, value)
    base = AutoModelForCausalLM.from_config(config)
    options = {"prompt_tuning_init": "RANDOM", "num_virtual_tokens": 4, **options}
    return build_soft_prompt_model(base, **method_options(method, **options))


def loss_and_grads(model, batch, **extra):
    outputs = model(**batch, **extra)
    outputs.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    return outputs, grads


def count_base_calls(model):
    """Rows each base-model forward is given (to see the one-row pass over the virtual tokens)."""
    seen: list[tuple[int, int]] = []

    def record(module, args, kwargs):
        embeds = kwargs.get("inputs_embeds")
        seen.append(tuple(embeds.shape[:2]))

    return seen, model.get_base_model().register_forward_pre_hook(record, with_kwargs=True)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", SHARED_METHODS)
@pytest.mark.parametrize("label_only", [False, True])
def test_same_loss_and_gradients_as_per_row_prompts(tokenizer, arch, method, label_only):
    model = no_dropout_model(tokenizer, arch, method).train()
    if label_only:
        enable_label_only_logits(model)
    batch = SoftPromptDataCollator(tokenizer)(labelled_rows(6))
    for extra in ({}, {"num_items_in_batch": torch.tensor(11)}):
        stock, stock_grads = loss_and_grads(model, batch, **extra)
        handle = enable_shared_prompt(model)
        assert handle is not None
        seen, counter = count_base_calls(model)
        shared, shared_grads = loss_and_grads(model, batch, **extra)
        counter.remove()
        handle.remove()
        assert shared.loss.item() == pytest.approx(stock.loss.item(), abs=1e-5)
        assert set(shared_grads) == set(stock_grads) and stock_grads
        for name, grad in stock_grads.items():
            assert grad.abs().sum() > 0
            torch.testing.assert_close(shared_grads[name], grad, atol=1e-5, rtol=1e-4)
    # The record hook runs after the sharing hook: the batch's forward gets the real tokens only, and the
    # virtual tokens ran once, as one row.
    length = batch["input_ids"].shape[1]
    assert seen == [(1, 4), (6, length)]
    if not label_only:
        assert shared.logits.shape == (6, length, len(tokenizer))
        torch.testing.assert_close(shared.logits, stock.logits[:, 4:], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", SHARED_METHODS)
def test_trainer_runs_the_same_training(tmp_path, tokenizer, method):
    """The stock Trainer with and without sharing: the same losses at every step and the same prompt."""

    def train(shared: bool):
        model = no_dropout_model(tokenizer, "llama", method)
        enable_label_only_logits(model)
        if shared:
            assert enable_shared_prompt(model) is not None
        return train_a_few_steps(model, tokenizer, tmp_path / str(shared))

    stock_losses, stock_params = train(False)
    shared_losses, shared_params = train(True)
    assert len(shared_losses) == 4
    assert shared_losses == pytest.approx(stock_losses, abs=1e-4)
    for shared, stock in zip(shared_params, stock_params, strict=True):
        torch.testing.assert_close(shared, stock, atol=1e-4, rtol=1e-3)


def test_calls_it_cannot_share_exactly_run_unchanged(tokenizer):
    model = no_dropout_model(tokenizer, "llama", "prompt_tuning").train()
    handle = enable_shared_prompt(model)
    batch = SoftPromptDataCollator(tokenizer)(labelled_rows(3))
    length = 4 + batch["input_ids"].shape[1]
    full = (3, length, len(tokenizer))
    # No labels, eval mode, one row, a label on the first real token: peft's own forward.
    assert model(input_ids=batch["input_ids"]).logits.shape == full
    labelled_first = {**batch, "labels": batch["input_ids"].clone()}
    assert model(**labelled_first).logits.shape == full
    # Shifted labels of the caller's own, over the whole sequence (virtual tokens included).
    labels = torch.cat([torch.full((3, 4), -100), batch["labels"]], dim=1)
    shifted = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
    assert model(**batch, shift_labels=shifted).logits.shape == full
    one_row = {key: value[:1] for key, value in batch.items()}
    assert model(**one_row).logits.shape == (1, length, len(tokenizer))
    model.eval()
    assert model(**batch).logits.shape == full
    # Activation checkpointing (the layers would run again in backward, without the cache): peft's forward.
    model.train()
    model.get_base_model().activation_checkpointing_enable()
    assert model(**batch).logits.shape == full
    model.get_base_model().activation_checkpointing_disable()
    assert model(**batch).logits.shape == (3, length - 4, len(tokenizer))
    handle.remove()


def test_rows_with_different_virtual_tokens_are_not_shared(tokenizer):
    """The hook checks that every row starts with the same embeddings before it shares them."""
    model = no_dropout_model(tokenizer, "bloom", "prompt_tuning").train()
    enable_shared_prompt(model)
    batch = SoftPromptDataCollator(tokenizer)(labelled_rows(3))
    embeds = model.get_input_embeddings()(batch["input_ids"])
    prompt = model.get_prompt(batch_size=3).clone()
    prompt[1] += 1.0  # the second row gets another soft prompt
    inputs_embeds = torch.cat([prompt, embeds], dim=1)
    labels = torch.cat([torch.full((3, 4), -100), batch["labels"]], dim=1)
    mask = torch.cat([torch.ones(3, 4, dtype=torch.long), batch["attention_mask"]], dim=1)
    base = model.get_base_model()
    outputs = base(inputs_embeds=inputs_embeds, attention_mask=mask, labels=labels)
    assert outputs.logits.shape[1] == inputs_embeds.shape[1]  # not shared: the full sequence ran


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda tok: no_dropout_model(tok, "gpt2", "prefix_tuning"), "is not prompt tuning or P-tuning"),
        (lambda tok: AutoModelForCausalLM.from_config(model_config("llama", len(tok))), "is not a PeftModel"),
        (
            lambda tok: build_soft_prompt_model(
                AutoModelForCausalLM.from_config(model_config("gpt2", len(tok))),
                method="prompt_tuning",
                prompt_tuning_init="RANDOM",
                num_virtual_tokens=4,
            ),
            "has dropout",
        ),  # fmt: skip
    ],
)
def test_not_enabled_where_it_would_not_be_exact(tokenizer, caplog, make, reason):
    model = make(tokenizer)
    with caplog.at_level(logging.INFO, logger="softprompt_hf"):
        assert enable_shared_prompt(model) is None
    assert reason in caplog.text


@pytest.mark.parametrize("arch", MORE_ARCHS)
def test_other_architectures_get_the_same_loss_and_gradients(tokenizer, arch):
    """Rotary position models with and without a fused QKV, beyond the three of the main matrix."""
    model = no_dropout_model(tokenizer, arch, "p_tuning").train()
    batch = SoftPromptDataCollator(tokenizer)(labelled_rows(6))
    stock, stock_grads = loss_and_grads(model, batch)
    assert enable_shared_prompt(model) is not None
    shared, shared_grads = loss_and_grads(model, batch)
    assert shared.logits.shape[1] == batch["input_ids"].shape[1]  # shared: the real tokens only
    assert shared.loss.item() == pytest.approx(stock.loss.item(), abs=1e-5)
    for name, grad in stock_grads.items():
        torch.testing.assert_close(shared_grads[name], grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", SLIDING_ARCHS)
@pytest.mark.parametrize("method", SHARED_METHODS)
def test_sliding_window_models_get_the_same_loss_and_gradients(tokenizer, arch, method):
    """Mistral (a 24-token window in every layer) and Gemma 3 (a 20-token local layer next to a global one), on
    rows long enough to cross the window: the virtual tokens fall out of the window of the later real tokens in
    both forwards alike."""
    model = no_dropout_model(tokenizer, arch, method).train()
    rows = labelled_rows(4)
    rows[0]["Tweet text"] = "hi"
    rows[1]["Tweet text"] = "@Acme a much longer tweet " * 4
    batch = SoftPromptDataCollator(tokenizer)(rows)
    window = model.get_base_model().config.sliding_window
    lengths = batch["attention_mask"].sum(dim=1) + 4  # the virtual tokens come first
    assert lengths.max() > 2 * window  # the last tokens attend to none of the virtual tokens
    stock, stock_grads = loss_and_grads(model, batch)
    seen, recorder = count_base_calls(model)
    assert enable_shared_prompt(model) is not None
    shared, shared_grads = loss_and_grads(model, batch)
    recorder.remove()
    assert seen[0] == (1, 4)  # the virtual tokens alone, then the real tokens of every row
    assert seen[1] == (len(rows), batch["input_ids"].shape[1])
    assert shared.loss.item() == pytest.approx(stock.loss.item(), abs=1e-5)
    for name, grad in stock_grads.items():
        torch.testing.assert_close(shared_grads[name], grad, atol=1e-5, rtol=1e-4)


def test_not_enabled_when_the_virtual_tokens_fill_a_sliding_window(tokenizer, caplog):
    model = no_dropout_model(tokenizer, "mistral", "prompt_tuning", num_virtual_tokens=24)
    with caplog.at_level(logging.INFO, logger="softprompt_hf"):
        assert enable_shared_prompt(model) is None
    assert "its 24 virtual tokens do not fit in its 24-token sliding window" in caplog.text
