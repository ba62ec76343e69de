"""``enable_soft_prompt_generate``: ``model.generate()`` of a soft-prompt PeftModel equals decoding by repeated full
forwards of that model, one row at a time, with no padding (the reference, computed here), where peft 0.21.2's own
``generate()`` on transformers 5.24 does not (CONTEXT.md pitfall 15)."""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import SLIDING_ARCHS, build_tokenizer, model_config, window_crossing_texts
from peft import LoraConfig, PeftType, PromptEncoderReparameterizationType, get_peft_model
from transformers import AutoModelForCausalLM, DynamicCache, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from softprompt_hf import (
    build_soft_prompt_model,
    disable_soft_prompt_generate,
    enable_soft_prompt_generate,
    soft_prompt_generate,
)
from softprompt_hf.core.upstream import cache_argument, remove_prefix_cache_routing, route_prefix_cache_argument
from softprompt_hf.data.prompt import PromptTemplate

ALL_ARCHS = ("gpt2", "llama", "qwen3", "bloom", "gpt_bigcode", *SLIDING_ARCHS)
# The options of build_soft_prompt_model that ask for each method variant.
VARIANTS = {
    "prompt_tuning": {"method": "prompt_tuning", "prompt_tuning_init": "RANDOM"},
    "p_tuning_mlp": {"method": "p_tuning", "encoder_reparameterization_type": "MLP", "encoder_hidden_size": 16},
    "p_tuning_lstm": {"method": "p_tuning", "encoder_reparameterization_type": "LSTM", "encoder_hidden_size": 16},
    "prefix_tuning": {"method": "prefix_tuning"},
    "prefix_projection": {"method": "prefix_tuning", "prefix_projection": True, "encoder_hidden_size": 16},
}
# The behaviours beyond greedy decoding run on these, with one variant of each method.
SUBSET_ARCHS = ("gpt2", "llama", "bloom", "gemma3_text")
METHOD_VARIANTS = ("prompt_tuning", "p_tuning_mlp", "prefix_tuning")
NEW_TOKENS = 5
# Prompts of 8, 12, 21, 29 and 43 tokens: with 4 virtual and 5 new tokens the first two fit in Gemma 3's 20-token
# window and Mistral's 24, the others cross them.
TEXTS = [window_crossing_texts()[i] for i in (0, 3, 8, 5, 11)]
# With their output layer tied to the embeddings, the tiny random Bloom and Gemma 3 repeat one token for ever,
# which would check only the first step: untied, their tokens change at every step like the others'.
_UNTIED = ("bloom", "gemma3_text")
FIXED = {"max_new_tokens": NEW_TOKENS, "eos_token_id": None, "pad_token_id": 2}


@functools.cache
def _tokenizer():
    return build_tokenizer()


@functools.cache
def _model(arch: str, variant: str):
    """A tiny random ``arch`` model with a 4-token soft prompt of ``variant`` that looks trained: its prompt
    encoder's parameters moved well away from their initialisation, seeded."""
    tokenizer = _tokenizer()
    config = model_config(arch, len(tokenizer))
    if arch in _UNTIED:
        config.tie_word_embeddings = False
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(config)
    model = build_soft_prompt_model(base, num_virtual_tokens=4, **VARIANTS[variant])
    model.eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.prompt_encoder.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * parameter.std().clamp(min=0.5))
    return model


@functools.cache
def _prompts() -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(PromptTemplate().encode(_tokenizer(), text)) for text in TEXTS)


@functools.cache
def _reference(arch: str, variant: str) -> tuple[tuple[int, ...], ...]:
    """Greedy decoding by full forwards: one row, no padding, no cache, the whole sequence at every step."""
    model = _model(arch, variant)
    tokens = []
    with torch.no_grad():
        for prompt in _prompts():
            sequence = torch.tensor([prompt])
            for _ in range(NEW_TOKENS):
                logits = model(input_ids=sequence, attention_mask=torch.ones_like(sequence), use_cache=False).logits
                sequence = torch.cat([sequence, logits[:, -1].argmax(dim=-1, keepdim=True)], dim=1)
            tokens.append(tuple(sequence[0, len(prompt) :].tolist()))
    return tuple(tokens)


@pytest.fixture
def case(request):
    """(model, reference) for the test's ``arch`` and ``variant``; the model's generate() is peft's again after."""
    arch, variant = request.node.callspec.params["arch"], request.node.callspec.params["variant"]
    model = _model(arch, variant)
    yield model, _reference(arch, variant)
    disable_soft_prompt_generate(model)
    assert "generate" not in model.__dict__


def _padded(side: str) -> dict[str, torch.Tensor]:
    tokenizer = _tokenizer()
    tokenizer.padding_side = side
    return tokenizer.pad({"input_ids": [list(p) for p in _prompts()]}, return_tensors="pt")


def _one_by_one(model, **options) -> list[tuple[int, ...]]:
    rows = []
    for prompt in _prompts():
        ids = torch.tensor([prompt])
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **FIXED, **options)
        rows.append(tuple(out[0, len(prompt) :].tolist()))
    return rows


def _batched(model, side: str = "left", **options) -> tuple[torch.Tensor, torch.Tensor]:
    """The inputs of a padded batch of all prompts and what generate() returned for it."""
    batch = _padded(side)
    return batch["input_ids"], model.generate(**batch, **FIXED, **options)


def _new_tokens(batch: dict[str, torch.Tensor] | torch.Tensor, sequences: torch.Tensor) -> list[tuple[int, ...]]:
    width = batch.shape[1] if isinstance(batch, torch.Tensor) else batch["input_ids"].shape[1]
    return [tuple(row) for row in sequences[:, width:].tolist()]


# -- Greedy decoding: the whole matrix --------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_each_variant_builds_what_it_asks_for(variant):
    model = _model("gpt2", variant)
    config = model.active_peft_config
    encoder = model.prompt_encoder[model.active_adapter]
    if variant.startswith("p_tuning"):
        kind = PromptEncoderReparameterizationType.LSTM if variant.endswith("lstm") else "MLP"
        assert config.encoder_reparameterization_type == PromptEncoderReparameterizationType(kind)
        assert hasattr(encoder, "lstm_head") == variant.endswith("lstm")
    elif variant.startswith("prefix"):
        assert config.peft_type == PeftType.PREFIX_TUNING
        assert config.prefix_projection == (variant == "prefix_projection")
        assert hasattr(encoder, "transform") == (variant == "prefix_projection")
    else:
        assert config.peft_type == PeftType.PROMPT_TUNING


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("arch", ALL_ARCHS)
def test_greedy_one_row_and_left_padded_batch_equal_the_reference(case, arch, variant):
    model, reference = case
    enable_soft_prompt_generate(model)
    assert _one_by_one(model) == list(reference)
    inputs, sequences = _batched(model, "left")
    assert _new_tokens(inputs, sequences) == list(reference)
    assert torch.equal(sequences[:, : inputs.shape[1]], inputs)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("arch", ["llama"])
def test_stock_generate_differs_from_the_reference_and_disable_restores_it(case, arch, variant):
    # Proves the tests above can fail: peft's own generate() is wrong for every variant (pitfall 15).
    model, reference = case
    if cache_argument(model) != "cache":
        pytest.skip(
            "this transformers' models still take past_key_values, the name peft 0.21's generate() injects: the "
            "bug comes with transformers 5.24's rename to cache"
        )
    if model.active_peft_config.peft_type == PeftType.PREFIX_TUNING:
        # build_soft_prompt_model's prefix hook (passing peft's past_key_values as cache) refuses the prefix and
        # generate()'s own cache together, naming the fix; without it, as plain peft builds the model, the prefix
        # is silently replaced by generate()'s cache.
        with pytest.raises(ValueError, match="enable_soft_prompt_generate"):
            _one_by_one(model)
        assert remove_prefix_cache_routing(model)
        try:
            _check_stock_then_fixed(model, reference)
        finally:
            route_prefix_cache_argument(model)
        return
    _check_stock_then_fixed(model, reference)


def _check_stock_then_fixed(model, reference) -> None:
    stock_rows = _one_by_one(model)
    stock_inputs, stock_batch = _batched(model, "left")
    assert stock_rows != list(reference)
    assert _new_tokens(stock_inputs, stock_batch) != list(reference)
    enable_soft_prompt_generate(model)
    assert "generate" in model.__dict__
    assert _one_by_one(model) == list(reference)
    disable_soft_prompt_generate(model)
    assert "generate" not in model.__dict__
    assert _one_by_one(model) == stock_rows
    assert torch.equal(_batched(model, "left")[1], stock_batch)


# -- Other behaviours: a representative subset ------------------------------------------------------------------------
subset = pytest.mark.parametrize("arch", SUBSET_ARCHS)
methods = pytest.mark.parametrize("variant", METHOD_VARIANTS)


@methods
@subset
def test_right_padded_batch_equals_the_reference_and_returns_the_inputs_as_passed(case, arch, variant):
    model, reference = case
    enable_soft_prompt_generate(model)
    inputs, sequences = _batched(model, "right")
    assert bool((inputs == 2).any())  # some rows really are right-padded
    assert torch.equal(sequences[:, : inputs.shape[1]], inputs)
    assert _new_tokens(inputs, sequences) == list(reference)


SAMPLING = {"do_sample": True, "temperature": 0.7, "top_k": 20, "top_p": 1.0}


def _sampling_reference(model, prompts: list[tuple[int, ...]], seed: int) -> list[tuple[int, ...]]:
    """Sampling as transformers does it (temperature, then top-k, softmax, one multinomial over the batch's rows
    per step), over each row's own full-forward logits: one row, no padding, no cache."""
    torch.manual_seed(seed)
    sequences = [torch.tensor([prompt]) for prompt in prompts]
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            logits = torch.cat(
                [
                    model(input_ids=s, attention_mask=torch.ones_like(s), use_cache=False).logits[:, -1]
                    for s in sequences
                ]
            )
            logits = logits / SAMPLING["temperature"]
            kth = torch.topk(logits, SAMPLING["top_k"]).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
            picked = torch.multinomial(torch.softmax(logits, dim=-1), num_samples=1)
            sequences = [torch.cat([s, picked[i : i + 1]], dim=1) for i, s in enumerate(sequences)]
    return [tuple(s[0, len(p) :].tolist()) for s, p in zip(sequences, prompts, strict=True)]


@methods
@subset
def test_sampling_with_a_seed_equals_the_reference(case, arch, variant):
    model, _ = case
    enable_soft_prompt_generate(model)
    prompts = list(_prompts())
    for seed, prompt in enumerate(prompts[:2]):
        torch.manual_seed(seed)
        ids = torch.tensor([prompt])
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **FIXED, **SAMPLING)
        assert tuple(out[0, len(prompt) :].tolist()) == _sampling_reference(model, [prompt], seed)[0]
    batch = _padded("left")
    torch.manual_seed(7)
    sampled = model.generate(**batch, **FIXED, **SAMPLING)
    assert _new_tokens(batch, sampled) == _sampling_reference(model, prompts, 7)


@methods
@subset
def test_beam_search_in_a_batch_equals_one_by_one(case, arch, variant):
    model, _ = case
    enable_soft_prompt_generate(model)
    beams = {"num_beams": 3, "num_return_sequences": 2}
    inputs, sequences = _batched(model, "left", **beams)
    assert sequences.shape == (2 * len(TEXTS), inputs.shape[1] + NEW_TOKENS)
    assert torch.equal(sequences[:, : inputs.shape[1]], inputs.repeat_interleave(2, dim=0))
    alone = []
    for prompt in _prompts():
        ids = torch.tensor([prompt])
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **FIXED, **beams)
        assert out.shape == (2, len(prompt) + NEW_TOKENS)
        alone += [tuple(row) for row in out[:, len(prompt) :].tolist()]
    assert _new_tokens(inputs, sequences) == alone


class _Recorder(BaseStreamer):
    """Keeps what generate() streams."""

    def __init__(self) -> None:
        self.puts: list[torch.Tensor] = []
        self.ended = False

    def put(self, value: torch.Tensor) -> None:
        self.puts.append(value.clone())

    def end(self) -> None:
        self.ended = True


class _StopAt(StoppingCriteria):
    def __init__(self, token: int) -> None:
        self.token = token

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        return input_ids[:, -1] == self.token


@methods
@subset
def test_streamer_stopping_criteria_and_scores_see_what_generate_returns(case, arch, variant):
    model, reference = case
    enable_soft_prompt_generate(model)
    prompt = _prompts()[3]
    ids = torch.tensor([prompt])
    streamer = _Recorder()
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), streamer=streamer, **FIXED)
    assert streamer.ended
    assert torch.equal(streamer.puts[0], ids)  # the prompt first, as passed
    assert [int(token) for token in streamer.puts[1:]] == list(reference[3]) == out[0, len(prompt) :].tolist()
    # A stopping criterion sees the sequences as returned: stop at the reference's third token.
    stop = reference[3][2]
    stopped = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        stopping_criteria=StoppingCriteriaList([_StopAt(stop)]),
        **FIXED,
    )
    assert stopped[0, len(prompt) :].tolist() == list(reference[3][: reference[3].index(stop) + 1])
    # Scores per step, for every row of a left-padded batch; their argmax is the greedy token.
    batch = _padded("left")
    result = model.generate(**batch, return_dict_in_generate=True, output_scores=True, **FIXED)
    assert _new_tokens(batch, result.sequences) == list(reference)
    assert len(result.scores) == NEW_TOKENS
    assert all(step.shape == (len(TEXTS), len(_tokenizer())) for step in result.scores)
    greedy = torch.stack([step.argmax(dim=-1) for step in result.scores], dim=1)
    assert [tuple(row) for row in greedy.tolist()] == list(reference)


@methods
@subset
def test_no_cache_equals_the_cache(case, arch, variant):
    model, reference = case
    enable_soft_prompt_generate(model)
    inputs, cached = _batched(model, "left")
    _, uncached = _batched(model, "left", use_cache=False)
    assert torch.equal(uncached, cached)
    assert _new_tokens(inputs, uncached) == list(reference)


# -- Switching it on and off ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch, variant", [("gpt2", "prompt_tuning")])
def test_enabling_twice_is_harmless_and_one_disable_undoes_it(case, arch, variant):
    model, reference = case
    assert enable_soft_prompt_generate(enable_soft_prompt_generate(model)) is model
    assert _one_by_one(model) == list(reference)
    assert disable_soft_prompt_generate(model) is model
    assert "generate" not in model.__dict__
    assert disable_soft_prompt_generate(model) is model  # disabling what is off changes nothing


@pytest.mark.parametrize("arch, variant", [("gpt2", "prefix_tuning")])
def test_the_context_manager_undoes_itself_also_on_an_exception(case, arch, variant):
    model, reference = case
    with soft_prompt_generate(model) as inside:
        assert inside is model
        assert _one_by_one(model) == list(reference)
    assert "generate" not in model.__dict__
    with pytest.raises(RuntimeError, match="boom"), soft_prompt_generate(model):
        raise RuntimeError("boom")
    assert "generate" not in model.__dict__
    # Already enabled before the block: still enabled after it.
    enable_soft_prompt_generate(model)
    with soft_prompt_generate(model):
        pass
    assert "generate" in model.__dict__


def test_refuses_models_it_does_not_fix():
    tokenizer = _tokenizer()
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(model_config("gpt2", len(tokenizer)))
    with pytest.raises(TypeError, match="PeftModel.*GPT2LMHeadModel"):
        enable_soft_prompt_generate(base)
    lora = get_peft_model(base, LoraConfig(task_type="CAUSAL_LM", r=2, target_modules=["c_attn"]))
    with pytest.raises(TypeError, match="covers prompt tuning.*LORA"):
        enable_soft_prompt_generate(lora)
    assert "generate" not in lora.__dict__


@pytest.mark.parametrize(
    "options, message",
    [
        ({"inputs_embeds": torch.zeros(1, 8, 32)}, r"inputs_embeds=.*pass input_ids"),
        ({"assistant_model": "x"}, r"assistant_model=.*assisted decoding is not supported"),
        ({"past_key_values": DynamicCache()}, r"past_key_values=.*cannot be continued"),
        ({"cache": DynamicCache()}, r"cache=.*cannot be continued"),
        ({"position_ids": torch.arange(8)[None]}, r"position_ids=.*leave position_ids unset"),
        ({"cache_implementation": "static"}, r"cache_implementation='static'.*dynamic cache"),
        ({"prefill_chunk_size": 4}, r"prefill_chunk_size=.*leave prefill_chunk_size unset"),
    ],
    ids=["inputs_embeds", "assistant_model", "past_key_values", "cache", "position_ids", "static", "prefill"],
)
@pytest.mark.parametrize("arch, variant", [("gpt2", "prompt_tuning")])
def test_refuses_what_it_cannot_make_exact(case, arch, variant, options, message):
    model, _ = case
    enable_soft_prompt_generate(model)
    ids = torch.tensor([_prompts()[0]])
    with pytest.raises(ValueError, match=message):
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **FIXED, **options)


@pytest.mark.parametrize(
    "mask, message",
    [
        ([[1, 1, 1, 1], [1, 0, 1, 1]], "Row 1 of the attention_mask has padding inside"),
        ([[1, 1, 1, 1], [0, 0, 0, 0]], "all padding"),
    ],
    ids=["hole", "all_pad"],
)
@pytest.mark.parametrize("arch, variant", [("gpt2", "prefix_tuning")])
def test_refuses_masks_it_cannot_place_the_prompt_in(case, arch, variant, mask, message):
    model, _ = case
    enable_soft_prompt_generate(model)
    ids = torch.tensor([_prompts()[0][:4]] * 2)
    with pytest.raises(ValueError, match=message):
        model.generate(input_ids=ids, attention_mask=torch.tensor(mask), **FIXED)


@pytest.mark.parametrize("arch, variant", [("gpt2", "prompt_tuning")])
def test_with_right_padding_streamers_and_criteria_see_the_rows_moved_left(case, arch, variant):
    # Right-padded rows are decoded left-padded; only the returned sequences get the inputs back as passed.
    model, reference = case
    enable_soft_prompt_generate(model)
    seen = []

    class _Record(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
            seen.append(input_ids.clone())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    streamer = _Recorder()
    right, left = _padded("right"), _padded("left")
    out = model.generate(**right, streamer=streamer, stopping_criteria=StoppingCriteriaList([_Record()]), **FIXED)
    assert torch.equal(streamer.puts[0], left["input_ids"])
    assert torch.equal(seen[-1][:, : left["input_ids"].shape[1]], left["input_ids"])
    assert torch.equal(seen[-1][:, left["input_ids"].shape[1] :], out[:, right["input_ids"].shape[1] :])
    assert _new_tokens(right, out) == list(reference)
