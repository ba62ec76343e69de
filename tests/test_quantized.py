"""Soft prompts on a quantized frozen base (bitsandbytes 4-bit NF4, torchao int8 weight-only), on the CPU.

The soft prompt trains in float32 on top of the quantized base with the stock Trainer, ``GenerationMetrics``
scores it in both modes, and the saved adapter loads onto the unquantized base. Skipped where the optional
quantization packages (``pip install softprompt-hf[quantized]``) are not installed.
"""

from __future__ import annotations

import pytest
import torch
from conftest import METHODS, method_options
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

from softprompt_hf import (
    GenerationMetrics,
    SoftPromptDataCollator,
    build_soft_prompt_model,
    load_raft,
    predict,
    save_adapter,
)
from softprompt_hf.embedded import EMBEDDED_DATA_FILES, EMBEDDED_MODEL_PATH


def bitsandbytes_nf4():
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (pip install softprompt-hf[quantized])")
    from bitsandbytes.nn import Linear4bit
    from transformers import BitsAndBytesConfig

    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    return config, lambda module: isinstance(module, Linear4bit)


def torchao_int8():
    pytest.importorskip("torchao", reason="torchao is not installed (pip install softprompt-hf[quantized])")
    from torchao.quantization import Int8Tensor, Int8WeightOnlyConfig
    from transformers import TorchAoConfig

    config = TorchAoConfig(Int8WeightOnlyConfig())
    return config, lambda module: isinstance(getattr(module, "weight", None), Int8Tensor)


BACKENDS = {"bitsandbytes_nf4": bitsandbytes_nf4, "torchao_int8": torchao_int8}


def plain(value: torch.Tensor) -> torch.Tensor:
    """A quantized weight as float values (torchao's Int8Tensor has no ``torch.equal``); others as they are."""
    dequantize = getattr(value, "dequantize", None)
    return dequantize() if callable(dequantize) and value.__class__ is not torch.Tensor else value


def quantized_base(backend: str):
    """The embedded model with its linear layers quantized by ``backend``, and the names of those layers."""
    quantization_config, is_quantized = BACKENDS[backend]()
    base = AutoModelForCausalLM.from_pretrained(
        EMBEDDED_MODEL_PATH, quantization_config=quantization_config, dtype=torch.float32, device_map="cpu"
    )
    quantized = [name for name, module in base.named_modules() if is_quantized(module)]
    assert len(quantized) == 4 * base.config.n_layer  # the 4 linear layers of each block; embeddings stay float
    return base, quantized, is_quantized


@torch.no_grad()
def mean_loss(model, collator, rows) -> float:
    # In training mode (the embedded model has no dropout): bitsandbytes 0.50.2 repacks a Linear4bit's weight
    # for CPU inference at its first eval-mode forward without grad, and training forwards fail after that.
    model.train()
    return model(**collator(rows)).loss.item()


@pytest.fixture(scope="module")
def embedded():
    data = load_raft(data_files=EMBEDDED_DATA_FILES, validation_size=16, seed=0)
    return data, AutoTokenizer.from_pretrained(EMBEDDED_MODEL_PATH)


@pytest.mark.slow
@pytest.mark.parametrize("backend", list(BACKENDS))
@pytest.mark.parametrize("method", METHODS)
def test_soft_prompt_trains_on_a_quantized_base(tmp_path, embedded, backend, method):
    data, tokenizer = embedded
    base, quantized, is_quantized = quantized_base(backend)
    torch.manual_seed(0)
    model = build_soft_prompt_model(
        base, tokenizer=tokenizer, **method_options(method, num_virtual_tokens=8, prompt_tuning_init="RANDOM")
    )
    trainable = {name: value.detach().clone() for name, value in model.named_parameters() if value.requires_grad}
    assert trainable and all(name.startswith("prompt_encoder.") for name in trainable)
    assert all(value.dtype == torch.float32 for value in trainable.values())
    frozen = {name: plain(value).clone() for name, value in model.get_base_model().state_dict().items()}
    rows = list(data.train.select(range(16)))
    collator = SoftPromptDataCollator(tokenizer)
    loss_before = mean_loss(model, collator, rows)

    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        max_steps=16,
        learning_rate=3e-2,
        logging_steps=1,
        remove_unused_columns=False,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    Trainer(model=model, args=args, train_dataset=data.train, data_collator=collator).train()

    loss_after = mean_loss(model, collator, rows)
    assert loss_after < 0.97 * loss_before, (loss_before, loss_after)
    for name, value in model.named_parameters():
        if value.requires_grad:
            assert value.dtype == torch.float32, name
            assert not torch.equal(value, trainable[name]), f"{name} did not change"
    after = model.get_base_model().state_dict()
    for name, value in frozen.items():
        assert torch.equal(plain(after[name]), value), f"base weight {name} changed"
    assert [name for name, module in model.get_base_model().named_modules() if is_quantized(module)] == quantized

    for mode in ("generate", "rank"):
        metrics = GenerationMetrics(tokenizer, data.classes, data.validation, mode=mode)
        evaluator = Trainer(
            model=model, args=args, eval_dataset=data.validation, data_collator=collator, **metrics.trainer_kwargs()
        )
        result = evaluator.evaluate()
        report = metrics.last_report
        assert report is not None and len(metrics.last_predictions) == len(data.validation)
        hits = sum(p.predicted == p.gold for p in metrics.last_predictions)
        assert result["eval_accuracy"] == pytest.approx(hits / len(data.validation))

    adapter_dir = save_adapter(model, tmp_path / "adapter", tokenizer=tokenizer, labels=data.classes)
    texts = list(data.validation["Tweet text"])
    on_quantized = [p.predicted for p in predict(model, texts, tokenizer=tokenizer, labels=data.classes, mode="rank")]
    # The adapter holds only the float32 soft prompt: it loads onto the unquantized base and predicts.
    on_full = predict(adapter_dir, texts, base_model=str(EMBEDDED_MODEL_PATH), mode="rank")
    assert len(on_full) == len(texts) and all(p.predicted in data.classes for p in on_full)
    # 4-bit or int8 weights move the scores a little; most labels agree with the quantized model's.
    agree = sum(p.predicted == q for p, q in zip(on_full, on_quantized, strict=True))
    assert agree >= 0.75 * len(texts), (agree, len(texts))


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_only_the_float32_soft_prompt_gets_gradients_on_a_quantized_base(embedded, backend):
    data, tokenizer = embedded
    rows = list(data.train.select(range(4)))
    for method in METHODS:
        base, quantized, is_quantized = quantized_base(backend)
        model = build_soft_prompt_model(
            base, tokenizer=tokenizer, **method_options(method, num_virtual_tokens=4, prompt_tuning_init="RANDOM")
        )
        model.train()
        model(**SoftPromptDataCollator(tokenizer)(rows)).loss.backward()
        with_grad = {name for name, value in model.named_parameters() if value.grad is not None}
        trainable = {name for name, value in model.named_parameters() if value.requires_grad}
        assert with_grad == trainable and all(name.startswith("prompt_encoder.") for name in trainable), method
        assert all(value.dtype == torch.float32 for value in model.parameters() if value.requires_grad), method
        assert [name for name, module in model.get_base_model().named_modules() if is_quantized(module)] == quantized
