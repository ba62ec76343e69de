"""softprompt_hf.inference.labels: generate_labels and rank_labels, batched as one by one, cached as the training
forward."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import (
    ARCHS,
    METHODS,
    SLIDING_ARCHS,
    labelled_rows,
    method_options,
    model_config,
    tiny_soft_prompt_model,
    window_crossing_texts,
)
from transformers import AutoModelForCausalLM

from softprompt_hf import generate_labels, rank_labels
from softprompt_hf.data.prompt import PromptTemplate
from softprompt_hf.inference import engine as _engine
from softprompt_hf.inference import labels as _labels
from softprompt_hf.inference.engine import CachedDecoder
from softprompt_hf.inference.labels import generate_label_ids
from softprompt_hf.inference.output_head import ChunkedOutputHead

LABELS = ["complaint", "no complaint"]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", METHODS)
def test_batched_generation_equals_one_by_one(tokenizer, arch, method):
    model = tiny_soft_prompt_model(tokenizer, arch, method)
    texts = [row["Tweet text"] for row in labelled_rows(12)] + ["@Acme hi", "@Acme a much longer tweet " * 3]
    lengths = {len(PromptTemplate().encode(tokenizer, t)) for t in texts}
    assert 1 < len(lengths) < len(texts), "the test needs prompts of equal and of different lengths"
    batched = generate_labels(model, tokenizer, texts, batch_size=16, max_new_tokens=3, show_progress=False)
    single = [generate_labels(model, tokenizer, [t], max_new_tokens=3, show_progress=False)[0] for t in texts]
    assert batched == single
    assert any(batched), "generation produced only empty strings"


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", METHODS)
def test_generated_tokens_are_the_models_own_greedy_choice(tokenizer, arch, method):
    """Teacher-forcing prompt + generated tokens through the training forward must pick each generated
    token again (PeftModel.generate fails this with soft prompts on peft 0.21 / transformers 5.x)."""
    model = tiny_soft_prompt_model(tokenizer, arch, method).eval()
    tokenizer.eos_token = "<unk>"  # a token the random model never picks: every row decodes all 5 steps
    texts = [row["Tweet text"] for row in labelled_rows(8)]
    generated = generate_label_ids(model, tokenizer, texts, max_new_tokens=5, show_progress=False)
    for text, new in zip(texts, generated, strict=True):
        assert len(new) == 5
        prompt = PromptTemplate().encode(tokenizer, text)
        ids = torch.tensor([prompt + new])
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0]
        choices = logits[-len(new) - 1 : -1].argmax(dim=-1).tolist()
        assert choices == new


def test_generation_restores_training_mode(tokenizer):
    model = AutoModelForCausalLM.from_config(model_config("gpt2", len(tokenizer)))
    model.train()
    generate_labels(model, tokenizer, ["@Acme hi"], max_new_tokens=1, show_progress=False)
    assert model.training


@pytest.mark.parametrize(
    "scoring, internals",
    [
        ("generate", ("greedy_with_cache", "greedy_full_forward")),
        ("rank", ("rank_with_shared_prompt", "rank_full_sequences")),
    ],
)
def test_scoring_restores_every_modules_mode_when_it_fails(tokenizer, monkeypatch, scoring, internals):
    model = tiny_soft_prompt_model(tokenizer, "gpt2", "p_tuning")
    model.train()
    model.get_base_model().lm_head.eval()  # the caller's mixture comes back as it was
    modes = {name: module.training for name, module in model.named_modules()}
    seen = []

    def failing(*args, **kwargs):
        seen.append(model.training)
        raise RuntimeError(f"{scoring} failed")

    for name in internals:
        monkeypatch.setattr(_labels, name, failing)
    with pytest.raises(RuntimeError, match=f"{scoring} failed"):
        if scoring == "generate":
            generate_label_ids(model, tokenizer, ["@Acme hi"], max_new_tokens=1, show_progress=False)
        else:
            rank_labels(model, tokenizer, ["@Acme hi"], LABELS, show_progress=False)
    assert seen == [False]  # scoring ran in eval mode
    assert {name: module.training for name, module in model.named_modules()} == modes


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", [*METHODS, None])
def test_cached_decoding_equals_the_full_forward(tokenizer, arch, method):
    """The key/value-cache decoding (soft prompt placed as peft's forward places it, prefix tuning's prefix as
    the initial cache) picks the same tokens as rerunning the training forward on the whole sequence."""
    if method is None:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(model_config(arch, len(tokenizer)))
    else:
        model = tiny_soft_prompt_model(tokenizer, arch, method)
    tokenizer.eos_token = "<unk>"  # never picked by the random model: every row decodes all 6 steps
    texts = [row["Tweet text"] for row in labelled_rows(12)] + ["@Acme hi", "@Acme a much longer tweet " * 3]
    # The seed's boundary (prompts ending with a lone space): the prompts whose next tokens differ from row to row
    # on these random models, where the joint one's " Label :" gets the same tokens everywhere on prefix-tuned Bloom.
    separate = PromptTemplate(label_tokenization="separate")
    options = {"max_new_tokens": 6, "batch_size": 4, "show_progress": False, "template": separate}
    assert CachedDecoder(model).mixed_lengths, "batches of 4 sorted prompts mix lengths: the padding is tested"
    cached = generate_label_ids(model, tokenizer, texts, use_cache=True, **options)
    full = generate_label_ids(model, tokenizer, texts, use_cache=False, **options)
    assert cached == full
    assert all(len(row) == 6 for row in cached)
    assert len({tuple(row) for row in cached}) > 1, "all rows generated the same tokens: the test would be blind"


def test_cached_decoding_computes_the_prompt_encoder_once(tokenizer):
    """P-tuning's prompt encoder runs once per call, not once per batch and step."""
    model = tiny_soft_prompt_model(tokenizer, "gpt2", "p_tuning")
    encoder = model.prompt_encoder[model.active_adapter]
    calls = []
    handle = encoder.register_forward_hook(lambda *args: calls.append(1))
    texts = [row["Tweet text"] for row in labelled_rows(12)]
    generate_label_ids(model, tokenizer, texts, max_new_tokens=3, batch_size=2, show_progress=False)
    handle.remove()
    assert len(calls) == 1


@pytest.mark.parametrize("method", ["prompt_tuning", "p_tuning"])
def test_cached_decoding_runs_the_virtual_tokens_once(tokenizer, method):
    """The virtual tokens go through the layers once per call (one row); every batch then feeds real tokens
    only, starting from their key/values."""
    model = tiny_soft_prompt_model(tokenizer, "llama", method)
    fed: list[tuple[int, int]] = []

    def record(module, args, kwargs):
        inputs = kwargs["inputs_embeds"] if kwargs.get("inputs_embeds") is not None else kwargs["input_ids"]
        fed.append(tuple(inputs.shape[:2]))

    handle = model.get_base_model().register_forward_pre_hook(record, with_kwargs=True)
    texts = [row["Tweet text"] for row in labelled_rows(6)]
    generate_label_ids(model, tokenizer, texts, max_new_tokens=3, batch_size=3, show_progress=False)
    handle.remove()
    prompts = [PromptTemplate().encode(tokenizer, text) for text in texts]
    common = next(i for i in range(len(prompts[0])) if any(ids[i] != prompts[0][i] for ids in prompts))
    assert common > 0, "the template's opening is shared by every prompt"
    # The 4 virtual tokens, once; then, once, the template's opening that every prompt starts with.
    assert fed[:2] == [(1, 4), (1, common)]
    prompt_passes = [shape for shape in fed[2:] if shape[1] > 1]
    assert [rows for rows, _ in prompt_passes] == [3, 3]
    longest = max(len(ids) for ids in prompts)
    assert all(length <= longest - common for _, length in prompt_passes)  # the rest of each prompt only


@pytest.mark.parametrize("arch", ["llama", "bloom"])
def test_a_padded_prompt_pass_keeps_only_each_rows_last_position(tokenizer, arch):
    """Prompts of different lengths in one batch: the prompt pass asks for one position per row (transformers'
    per-row ``logits_to_keep``, in every supported version), each row's own last prompt token."""
    model = tiny_soft_prompt_model(tokenizer, arch, "prompt_tuning")
    kept: list[torch.Tensor | int] = []

    def record(module, args, kwargs):
        kept.append(kwargs.get("logits_to_keep"))

    handle = model.get_base_model().register_forward_pre_hook(record, with_kwargs=True)
    texts = ["@Acme hi", "@Acme my parcel never arrived and nobody answers"]
    generate_label_ids(model, tokenizer, texts, max_new_tokens=1, batch_size=2, show_progress=False)
    handle.remove()
    per_row = [keep for keep in kept if isinstance(keep, torch.Tensor)]
    assert len(per_row) == 1 and per_row[0].shape == (2, 1)
    first, second = per_row[0][:, 0].tolist()
    assert second - first == len(PromptTemplate().encode(tokenizer, texts[1])) - len(
        PromptTemplate().encode(tokenizer, texts[0])
    )


@pytest.mark.parametrize("method", METHODS)
def test_rows_that_end_leave_the_batch_and_the_others_are_unchanged(tokenizer, method):
    """A row that generated EOS stops costing anything; the rows still decoding get the same tokens."""
    model = tiny_soft_prompt_model(tokenizer, "llama", method)
    texts = [row["Tweet text"] for row in labelled_rows(12)]
    first = [ids[0] for ids in generate_label_ids(model, tokenizer, texts, max_new_tokens=1, show_progress=False)]
    # The most common first token becomes the EOS: those rows end at once, the others go on.
    ending = max(set(first), key=first.count)
    assert 0 < first.count(ending) < len(first)
    ends_early = copy.deepcopy(tokenizer)
    ends_early.eos_token = ends_early.convert_ids_to_tokens(ending)
    fed: list[int] = []
    handle = model.get_base_model().register_forward_pre_hook(
        lambda module, args, kwargs: (
            fed.append(kwargs["input_ids"].shape[0])
            if kwargs.get("input_ids") is not None and kwargs["input_ids"].shape[1] == 1
            else None
        ),
        with_kwargs=True,
    )
    common = {"max_new_tokens": 4, "batch_size": 6, "show_progress": False}
    cached = generate_label_ids(model, ends_early, texts, **common)
    handle.remove()
    assert cached == generate_label_ids(model, ends_early, texts, use_cache=False, **common)
    assert [len(ids) == 1 for ids in cached] == [token == ending for token in first]
    # 3 decoding steps per batch of 6 without the rows that ended.
    assert sum(fed) == sum(min(len(ids), 4) - 1 for ids in cached)


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_on_cpu_the_batches_of_a_group_share_each_projection(tokenizer, method, monkeypatch):
    """Batches decode in step and their rows are projected onto the vocabulary together (one projection per
    step for the group), with the same tokens as batches decoded one at a time."""
    model = tiny_soft_prompt_model(tokenizer, "llama", method)
    tokenizer.eos_token = "<unk>"  # a token the random model never picks: every row decodes all 3 steps
    texts = [row["Tweet text"] for row in labelled_rows(10)]
    projected: list[int] = []
    chunked = ChunkedOutputHead.argmax

    def counting(self, hidden):
        projected.append(hidden.shape[0])
        return chunked(self, hidden)

    monkeypatch.setattr(ChunkedOutputHead, "argmax", counting)
    assert CachedDecoder(model).batches_per_projection(3) == 128 // 3
    grouped = generate_label_ids(model, tokenizer, texts, max_new_tokens=3, batch_size=3, show_progress=False)
    assert projected == [10, 10, 10]  # 4 batches (3, 3, 3, 1 rows), 3 steps
    monkeypatch.setattr(_engine, "PROJECTION_ROWS", 1)
    projected.clear()
    one_at_a_time = generate_label_ids(model, tokenizer, texts, max_new_tokens=3, batch_size=3, show_progress=False)
    assert sorted(projected) == sorted([3, 3, 3, 1] * 3)
    assert grouped == one_at_a_time


def fits_the_window(model, prompts, new_tokens):
    """Per prompt, whether its virtual tokens, itself and the ``new_tokens`` fed after it fit in the model's sliding
    window (4 virtual tokens: tiny_soft_prompt_model's)."""
    window = model.get_base_model().config.sliding_window
    return [4 + len(ids) + new_tokens <= window for ids in prompts]


@pytest.mark.parametrize("arch", SLIDING_ARCHS)
@pytest.mark.parametrize("method", METHODS)
def test_sliding_window_batched_decoding_equals_one_by_one_and_the_full_forward(tokenizer, arch, method):
    """With a sliding window, a shorter prompt's pads would take slots of its new tokens' window: every row of a
    batch gets the tokens it gets alone and the tokens of the training forward (use_cache=False), for prompts
    within the window (of different lengths) and beyond it."""
    model = tiny_soft_prompt_model(tokenizer, arch, method)
    tokenizer.eos_token = "<unk>"  # never picked by the random model: every row decodes all 6 steps
    texts = window_crossing_texts()
    prompts = [PromptTemplate().encode(tokenizer, text) for text in texts]
    fits = fits_the_window(model, prompts, new_tokens=5)
    assert len({len(ids) for ids, fit in zip(prompts, fits, strict=True) if fit}) > 1 and not all(fits)
    options = {"max_new_tokens": 6, "show_progress": False}
    batched = generate_label_ids(model, tokenizer, texts, batch_size=len(texts), **options)
    single = [generate_label_ids(model, tokenizer, [text], batch_size=1, **options)[0] for text in texts]
    full = generate_label_ids(model, tokenizer, texts, use_cache=False, **options)
    assert batched == single
    assert single == full
    assert len({tuple(row) for row in batched}) > 1, "all rows generated the same tokens: the test would be blind"


@pytest.mark.parametrize("arch", SLIDING_ARCHS)
@pytest.mark.parametrize("method", METHODS)
def test_soft_prompt_longer_than_the_sliding_window_decodes_as_the_training_forward(tokenizer, arch, method):
    """24 virtual tokens fill the whole window: Gemma 3's sliding cache layer keeps only the last window - 1 of them
    (prefix tuning's key/values too, as in peft's training forward), Mistral's prefix-tuning cache keeps them all and
    its mask drops them; cached, batched decoding still picks the training forward's tokens."""
    from softprompt_hf import build_soft_prompt_model

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(model_config(arch, len(tokenizer)))
    model = build_soft_prompt_model(base, **method_options(method, prompt_tuning_init="RANDOM", num_virtual_tokens=24))
    tokenizer.eos_token = "<unk>"  # never picked by the random model: every row decodes all 4 steps
    texts = window_crossing_texts()[::2]
    options = {"max_new_tokens": 4, "show_progress": False}
    cached = generate_label_ids(model, tokenizer, texts, batch_size=len(texts), **options)
    assert cached == generate_label_ids(model, tokenizer, texts, use_cache=False, **options)
    assert len({tuple(row) for row in cached}) > 1, "all rows generated the same tokens: the test would be blind"


@pytest.mark.parametrize("arch", SLIDING_ARCHS)
def test_sliding_window_prompts_share_a_padded_batch_only_within_the_window(tokenizer, arch):
    """Prompts that fit in the window with their new tokens still share padded batches; the others are batched by
    equal length, without padding."""
    model = tiny_soft_prompt_model(tokenizer, arch, "p_tuning")
    prompts = [PromptTemplate().encode(tokenizer, text) for text in window_crossing_texts()]
    decoder = CachedDecoder(model, prompts)
    assert decoder.window == model.get_base_model().config.sliding_window
    fits = fits_the_window(model, prompts, new_tokens=5)
    batches = decoder.batches(prompts, len(prompts), new_tokens=5)
    assert sorted(i for batch in batches for i in batch) == list(range(len(prompts)))
    assert [i for i, fit in enumerate(fits) if fit] in batches  # one padded batch of different lengths
    for batch in batches:
        assert all(fits[i] for i in batch) or len({len(prompts[i]) for i in batch}) == 1


@pytest.mark.parametrize("arch", SLIDING_ARCHS)
def test_a_padded_batch_beyond_the_sliding_window_is_refused(tokenizer, arch):
    """Whatever asks for one: the rows of a padded batch whose slots cross the window would not compute what they
    compute alone."""
    model = tiny_soft_prompt_model(tokenizer, arch, "prompt_tuning")
    prompts = [PromptTemplate().encode(tokenizer, text) for text in window_crossing_texts()[-2:]]
    assert len({len(ids) for ids in prompts}) == 2
    decoder = CachedDecoder(model)
    assert decoder.mixed_lengths and 4 + max(len(ids) for ids in prompts) > decoder.window
    with pytest.raises(RuntimeError, match="sliding window"):
        decoder.start(prompts)


@pytest.mark.parametrize("method", METHODS)
def test_shared_key_values_count_every_position_on_sliding_window_layers(tokenizer, method):
    """The virtual tokens and the template's opening, run once, are longer than Gemma 3's local window: its
    sliding layer keeps only their last window - 1 key/values, yet a batch's cache must count every position (its
    masks are placed by that count), as the one-row cache it came from does."""
    model = tiny_soft_prompt_model(tokenizer, "gemma3_text", method)
    texts = ["@Acme " + "again " * 8 + end for end in ("hi", "thanks")]  # a long common opening
    prompts = [PromptTemplate().encode(tokenizer, text) for text in texts]
    decoder = CachedDecoder(model, prompts)
    shared = decoder.num_virtual_tokens + len(decoder.shared_tokens)
    assert shared > decoder.window
    state = decoder.start(prompts[:1])
    cache = state.cache
    assert [cache.get_seq_length(i) for i in range(len(cache.layers))] == [len(prompts[0]) + 4] * len(cache.layers)
    assert cache.layers[0].keys.shape[-2] == decoder.window - 1  # the sliding layer did drop the oldest ones


def test_soft_prompt_beyond_the_sliding_window_is_warned_about(tokenizer, monkeypatch):
    """Past the window, a sliding layer no longer attends to the soft prompt (pitfall 4): say so (one warning per
    call here; `warning_once` logs it once per model and settings)."""
    model = tiny_soft_prompt_model(tokenizer, "mistral", "prompt_tuning")
    warned: list[str] = []
    monkeypatch.setattr(_engine.logger, "warning_once", lambda message, *args: warned.append(message % args))
    generate_label_ids(model, tokenizer, window_crossing_texts()[:2], max_new_tokens=2, show_progress=False)
    assert warned == []
    generate_label_ids(model, tokenizer, window_crossing_texts(), max_new_tokens=2, show_progress=False)
    assert len(warned) == 1
    assert "24-token sliding window" in warned[0] and "longer than 19 tokens" in warned[0]


def test_rank_scores_are_label_log_likelihoods(tokenizer):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(model_config("llama", len(tokenizer))).eval()
    text = "@Acme my order never arrived"
    scores = rank_labels(model, tokenizer, [text], LABELS, show_progress=False)[0]
    prompt = PromptTemplate().encode(tokenizer, text)
    for label in LABELS:
        target = PromptTemplate().encode_target(tokenizer, label)
        ids = torch.tensor([prompt + target])
        with torch.no_grad():
            log_probs = torch.log_softmax(model(input_ids=ids).logits[0], dim=-1)
        expected = sum(log_probs[len(prompt) - 1 + i, token].item() for i, token in enumerate(target))
        assert scores[label] == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", METHODS)
def test_rank_batched_equals_one_by_one(tokenizer, arch, method):
    model = tiny_soft_prompt_model(tokenizer, arch, method)
    texts = [row["Tweet text"] for row in labelled_rows(10)] + ["@Acme hi"]
    batched = rank_labels(model, tokenizer, texts, LABELS, batch_size=16, show_progress=False)
    for text, scores in zip(texts, batched, strict=True):
        single = rank_labels(model, tokenizer, [text], LABELS, batch_size=1, show_progress=False)[0]
        assert scores == pytest.approx(single, abs=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", METHODS)
def test_rank_with_shared_prompt_cache_equals_full_sequences(tokenizer, arch, method):
    """Scoring every label from one run of the prompt (its cache repeated over the labels) gives the scores of
    one training forward per prompt + label; labels of different token lengths included."""
    model = tiny_soft_prompt_model(tokenizer, arch, method)
    labels = ["complaint", "no complaint", "spam", "x"]
    assert len({len(PromptTemplate().encode_target(tokenizer, label)) for label in labels}) == 4
    texts = [row["Tweet text"] for row in labelled_rows(10)] + ["@Acme hi"]
    cached = rank_labels(model, tokenizer, texts, labels, batch_size=4, show_progress=False)
    full = rank_labels(model, tokenizer, texts, labels, batch_size=16, show_progress=False, use_cache=False)
    for shared, reference in zip(cached, full, strict=True):
        assert shared == pytest.approx(reference, abs=1e-4)
        assert max(shared, key=shared.get) == max(reference, key=reference.get)


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_rank_projects_only_the_positions_it_scores(tokenizer, method, monkeypatch):
    """The vocabulary projection runs at each prompt's last position and at each label token after the
    first (the EOS included), not at the padding of shorter labels, nor for the one-row passes over what all
    prompts share; the model's own output layer runs once, on one position, to check the chunked one."""
    model = tiny_soft_prompt_model(tokenizer, "llama", method)
    projected: list[int] = []
    chunked = ChunkedOutputHead.log_probs

    def counting(self, hidden, tokens):
        projected.append(hidden.shape[:-1].numel())
        return chunked(self, hidden, tokens)

    monkeypatch.setattr(ChunkedOutputHead, "log_probs", counting)
    by_the_model: list[int] = []
    head = model.get_base_model().get_output_embeddings()
    handle = head.register_forward_hook(lambda module, args, output: by_the_model.append(args[0].shape[:-1].numel()))
    labels = ["complaint", "no complaint", "x"]
    texts = [row["Tweet text"] for row in labelled_rows(7)]
    rank_labels(model, tokenizer, texts, labels, batch_size=3, show_progress=False)
    handle.remove()
    per_prompt = 1 + sum(len(PromptTemplate().encode_target(tokenizer, label)) - 1 for label in labels)
    assert sum(projected) == len(texts) * per_prompt
    assert sum(by_the_model) == 1


@pytest.mark.parametrize("arch", SLIDING_ARCHS)
@pytest.mark.parametrize("method", METHODS)
def test_sliding_window_rank_batched_equals_one_by_one_and_full_sequences(tokenizer, arch, method):
    """With a sliding window, the label tokens after a shorter prompt's pads would lose the start of its window:
    batched scores equal one-by-one scores and the training forward's, for prompts within the window (padded
    together) and beyond it."""
    model = tiny_soft_prompt_model(tokenizer, arch, method)
    labels = ["complaint", "x", "spam"]  # 8, 3 and 5 tokens with the EOS
    texts = window_crossing_texts()
    prompts = [PromptTemplate().encode(tokenizer, text) for text in texts]
    window = model.get_base_model().config.sliding_window
    # All label tokens but the EOS.
    fed = max(len(PromptTemplate().encode_target(tokenizer, label)) for label in labels) - 1
    spans = [4 + len(ids) + fed for ids in prompts]  # with tiny_soft_prompt_model's 4 virtual tokens
    fitting = {len(ids) for ids, span in zip(prompts, spans, strict=True) if span <= window}
    assert len(fitting) > 1 and max(spans) > window, "padding within the window and prompts beyond it"
    batched = rank_labels(model, tokenizer, texts, labels, batch_size=len(texts), show_progress=False)
    single = [rank_labels(model, tokenizer, [text], labels, batch_size=1, show_progress=False)[0] for text in texts]
    full = rank_labels(model, tokenizer, texts, labels, show_progress=False, use_cache=False)
    for together, alone, reference in zip(batched, single, full, strict=True):
        assert together == pytest.approx(alone, abs=1e-4)
        assert alone == pytest.approx(reference, abs=1e-4)
