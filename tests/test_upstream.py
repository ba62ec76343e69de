"""softprompt_hf.core.upstream: prefix tuning trains when transformers no longer takes ``past_key_values``.

peft 0.21.2's prefix-tuning forward passes its prefix as ``past_key_values``; transformers 5.24 renamed the argument
to ``cache``, warns about the old name, and removes it in 5.40. The 5.40 behaviour is simulated by making the base
LM's forward refuse the old name.
"""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
from conftest import (
    ARCHS,
    build_tokenizer,
    labelled_rows,
    method_options,
    model_config,
    tiny_trainer,
    train_a_few_steps,
)
from peft import PrefixTuningConfig, TaskType, get_peft_model
from trained_adapters import one_thread
from transformers import AutoModelForCausalLM, DynamicCache, GPT2LMHeadModel

from softprompt_hf import SoftPromptDataCollator, SoftPromptGuardCallback, build_soft_prompt_model
from softprompt_hf.adapter.saving import save_adapter
from softprompt_hf.core.upstream import _past_key_values_as_cache, cache_argument, route_prefix_cache_argument
from softprompt_hf.serving.predict import load_adapter
from softprompt_hf.training.callbacks import check_trainer

pytestmark = [
    pytest.mark.usefixtures(one_thread.__name__),
    # Before transformers 5.24 (the lowest supported is 5.23) past_key_values is the forward's own argument, the
    # name peft passes: there is nothing to route, and route_prefix_cache_argument adds no hook.
    pytest.mark.skipif(
        cache_argument(GPT2LMHeadModel) != "cache", reason="this transformers' forward takes past_key_values itself"
    ),
]

_DEPRECATED = "`past_key_values` is deprecated"


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def _base(tok, arch: str):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(model_config(arch, len(tok)))


def user_built_prefix_model(tok, arch: str):
    """A 4-token prefix-tuning model built with peft's own get_peft_model, as a user would (no hook)."""
    return get_peft_model(_base(tok, arch), PrefixTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=4))


def our_prefix_model(tok, arch: str):
    """The same model (same seed, same config) built by build_soft_prompt_model."""
    return build_soft_prompt_model(_base(tok, arch), method="prefix_tuning", num_virtual_tokens=4)


def routing_hooks(model) -> int:
    return sum(hook is _past_key_values_as_cache for hook in model.get_base_model()._forward_pre_hooks.values())


@pytest.fixture
def without_past_key_values(monkeypatch):
    """Simulates transformers >= 5.40: the base LM classes' forward refuses ``past_key_values`` (and otherwise runs
    as before; the signature, read by ``cache_argument``, is the original's)."""

    def refuse(arch: str) -> None:
        cls = type(AutoModelForCausalLM.from_config(model_config(arch, 16)))
        original = cls.forward

        @functools.wraps(original)
        def forward(self, *args, **kwargs):
            if "past_key_values" in kwargs:
                raise TypeError(f"{cls.__name__}.forward() got an unexpected keyword argument 'past_key_values'")
            return original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "forward", forward)

    return refuse


def one_batch(tok):
    collator = SoftPromptDataCollator(tok)
    return collator(labelled_rows(4))


@pytest.mark.parametrize("arch", ARCHS)
def test_peft_prefix_forward_fails_without_the_old_name_and_the_hook_repairs_it(tok, arch, without_past_key_values):
    batch = one_batch(tok)
    plain = user_built_prefix_model(tok, arch).eval()  # no dropout: the same loss twice
    expected = plain(**batch).loss  # transformers 5.24 still takes past_key_values
    assert cache_argument(plain) == "cache"
    without_past_key_values(arch)
    with pytest.raises(TypeError, match="past_key_values"):
        plain(**batch)
    assert route_prefix_cache_argument(plain) is not None
    torch.testing.assert_close(plain(**batch).loss, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_prefix_tuning_trains_when_transformers_refuses_past_key_values(tok, arch, tmp_path, without_past_key_values):
    reference = user_built_prefix_model(tok, arch)
    assert routing_hooks(reference) == 0
    expected_losses, _ = train_a_few_steps(reference, tok, tmp_path / "reference", steps=3)

    without_past_key_values(arch)
    model = our_prefix_model(tok, arch)
    assert routing_hooks(model) == 1
    before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
    assert torch.equal(before[0], user_built_prefix_model(tok, arch).prompt_encoder["default"].embedding.weight)
    losses, after = train_a_few_steps(model, tok, tmp_path / "simulated", steps=3)
    assert len(losses) == 3
    torch.testing.assert_close(losses, expected_losses, rtol=1e-5, atol=1e-5)
    assert all(not torch.equal(b, a) for b, a in zip(before, after, strict=True))  # the prefix was trained


def _trainer(model, tok, tmp_path, callbacks=()):
    return tiny_trainer(model, tok, tmp_path, steps=2, rows=8, callbacks=callbacks)


def test_a_user_built_prefix_model_trains_through_the_guard_callback(tok, tmp_path, without_past_key_values):
    without_past_key_values("gpt2")
    model = user_built_prefix_model(tok, "gpt2")
    before = model.prompt_encoder["default"].embedding.weight.detach().clone()
    trainer = _trainer(model, tok, tmp_path, callbacks=[SoftPromptGuardCallback()])
    assert routing_hooks(model) == 1
    trainer.train()
    assert trainer.state.global_step == 2
    assert not torch.equal(model.prompt_encoder["default"].embedding.weight, before)


def test_check_trainer_installs_the_hook_once(tok, tmp_path):
    model = user_built_prefix_model(tok, "gpt2")
    trainer = _trainer(model, tok, tmp_path)
    assert routing_hooks(model) == 0
    check_trainer(trainer)
    check_trainer(trainer)
    assert routing_hooks(model) == 1
    assert route_prefix_cache_argument(model) is None  # already there


def test_the_hook_is_idempotent_removable_and_only_for_prefix_tuning(tok):
    model = our_prefix_model(tok, "llama")
    assert routing_hooks(model) == 1
    assert route_prefix_cache_argument(model) is None
    assert routing_hooks(model) == 1
    for hook_id, hook in list(model.get_base_model()._forward_pre_hooks.items()):
        if hook is _past_key_values_as_cache:
            del model.get_base_model()._forward_pre_hooks[hook_id]
    handle = route_prefix_cache_argument(model)
    assert handle is not None and routing_hooks(model) == 1
    handle.remove()
    assert routing_hooks(model) == 0

    for method in ("prompt_tuning", "p_tuning"):
        other = build_soft_prompt_model(_base(tok, "llama"), **method_options(method, prompt_tuning_init="RANDOM"))
        assert route_prefix_cache_argument(other) is None
        assert routing_hooks(other) == 0
    assert route_prefix_cache_argument(_base(tok, "llama")) is None  # not a PeftModel


def test_the_forward_no_longer_warns_about_past_key_values(tok):
    batch = one_batch(tok)
    plain = user_built_prefix_model(tok, "gpt2").eval()
    with warnings.catch_warnings(record=True) as before:
        warnings.simplefilter("always")
        expected = plain(**batch).loss
    assert any(_DEPRECATED in str(w.message) for w in before)  # transformers 5.24 warns about peft's argument
    route_prefix_cache_argument(plain)
    with warnings.catch_warnings(record=True) as after:
        warnings.simplefilter("always")
        loss = plain(**batch).loss
    assert not [str(w.message) for w in after if "past_key_values" in str(w.message)]
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)


def test_both_cache_names_at_once_are_refused(tok):
    model = our_prefix_model(tok, "gpt2")
    ids = torch.tensor([tok("@Acme hi").input_ids])
    prefix = model.get_prompt(batch_size=1, max_cache_len=4 + ids.shape[1])
    with pytest.raises(ValueError, match="both past_key_values .* and cache"):
        model.get_base_model()(input_ids=ids, past_key_values=prefix, cache=DynamicCache())
    # A None past_key_values is dropped, and the cache given goes through.
    out = model.get_base_model()(input_ids=ids, past_key_values=None, cache=DynamicCache(), use_cache=True)
    assert out.logits.shape[:2] == ids.shape


def test_a_loaded_prefix_adapter_has_the_hook(tok, tmp_path, model_dirs, without_past_key_values):
    model = build_soft_prompt_model(
        AutoModelForCausalLM.from_pretrained(model_dirs["gpt2"]), method="prefix_tuning", num_virtual_tokens=4
    )
    folder = save_adapter(model, tmp_path / "adapter", tokenizer=tok)
    loaded = load_adapter(folder, device="cpu")
    assert routing_hooks(loaded.model) == 1
    without_past_key_values("gpt2")
    batch = one_batch(tok)
    with torch.no_grad():
        expected = model.eval()(**batch).loss
        torch.testing.assert_close(loaded.model(**batch).loss, expected, rtol=1e-5, atol=1e-5)
