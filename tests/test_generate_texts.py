"""softprompt_hf.generate_texts: free text after each prompt, batched as one by one, for the three methods."""

from __future__ import annotations

import pytest
from conftest import ARCHS, METHODS, SLIDING_ARCHS, labelled_rows, tiny_soft_prompt_model, window_crossing_texts

from softprompt_hf import generate_texts
from softprompt_hf.data.prompt import PromptTemplate
from softprompt_hf.inference.labels import generate_label_ids

TEMPLATE = PromptTemplate("Title : {title} Tweet : {text} Summary : ", text_column="body")


def paper_rows(n: int = 10) -> list[dict]:
    """Rows of two fields, of several prompt lengths (equal and different)."""
    texts = [row["Tweet text"] for row in labelled_rows(n - 2)] + ["@Acme hi", "@Acme a much longer tweet " * 3]
    return [{"title": f"Note {i % 3}", "body": text} for i, text in enumerate(texts)]


def an_eos_some_rows_reach(model, tokenizer, rows, steps):
    """A token that the model generates in some rows, after their first step, and not in others: made the EOS, rows
    stop at different steps."""
    tokenizer.eos_token = "<unk>"  # never picked by the random model: every row decodes every step
    free = generate_label_ids(model, tokenizer, rows, template=TEMPLATE, max_new_tokens=steps, show_progress=False)
    for token in sorted({t for row in free for t in row[1:]}):
        reached = [token in row[1:] and token not in row[:1] for row in free]
        if 0 < sum(reached) < len(rows):
            return tokenizer.convert_ids_to_tokens(token)
    pytest.fail("no token ends some rows and not others: the test would not see rows stop at their own EOS")


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", METHODS)
def test_batched_text_generation_equals_one_by_one(tokenizer, arch, method):
    model = tiny_soft_prompt_model(tokenizer, arch, method)
    rows = paper_rows()
    lengths = {len(TEMPLATE.encode(tokenizer, row)) for row in rows}
    assert 1 < len(lengths) < len(rows), "the test needs prompts of equal and of different lengths"
    tokenizer.eos_token = "<unk>"  # never picked by the random model: every row generates all 12 tokens
    options = {"template": TEMPLATE, "max_new_tokens": 12, "show_progress": False}
    batched = generate_texts(model, tokenizer, rows, batch_size=4, **options)
    single = [generate_texts(model, tokenizer, [row], batch_size=1, **options)[0] for row in rows]
    assert batched == single
    assert all(batched), "a row generated nothing"
    # The tiny random Bloom writes one token over and over after every prompt; the others depend on the prompt.
    assert arch == "bloom" or len(set(batched)) > 1, "every row generated the same text: the test would be blind"


# The tiny random Bloom repeats one token in every row, whatever the prompt: no token ends some rows only.
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
@pytest.mark.parametrize("method", METHODS)
def test_each_row_stops_at_its_own_eos_and_the_others_go_on_unchanged(tokenizer, arch, method):
    model = tiny_soft_prompt_model(tokenizer, arch, method)
    rows = paper_rows()
    tokenizer.eos_token = an_eos_some_rows_reach(model, tokenizer, rows, steps=12)
    options = {"template": TEMPLATE, "max_new_tokens": 12, "show_progress": False}
    batched_ids = generate_label_ids(model, tokenizer, rows, batch_size=4, **options)
    single_ids = [generate_label_ids(model, tokenizer, [row], batch_size=1, **options)[0] for row in rows]
    assert batched_ids == single_ids
    ended = [ids[-1] == tokenizer.eos_token_id for ids in batched_ids]
    assert any(ended) and not all(ended)
    assert all(len(ids) == 12 for ids, end in zip(batched_ids, ended, strict=True) if not end)
    texts = generate_texts(model, tokenizer, rows, batch_size=4, **options)
    assert texts == [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in single_ids]


@pytest.mark.parametrize("arch", SLIDING_ARCHS)
@pytest.mark.parametrize("method", METHODS)
def test_long_generation_past_the_sliding_window_equals_one_by_one_and_the_full_forward(tokenizer, arch, method):
    """Generating more tokens than the window holds: batched rows, rows alone and the training forward agree."""
    model = tiny_soft_prompt_model(tokenizer, arch, method)
    tokenizer.eos_token = "<unk>"  # never picked: every row generates all its tokens, past the window
    # Prompts of several lengths, the last two longer than the window; generating past the window, no prompt can
    # share a padded batch (decoder.batches), so rows are batched by equal length, as exact as alone.
    texts = [text for i, text in enumerate(window_crossing_texts()) if i in (0, 1, 3, 5, 11)]
    window = model.get_base_model().config.sliding_window
    options = {"max_new_tokens": window + 2, "show_progress": False}
    batched = generate_texts(model, tokenizer, texts, batch_size=len(texts), **options)
    single = [generate_texts(model, tokenizer, [text], batch_size=1, **options)[0] for text in texts]
    full = generate_texts(model, tokenizer, texts, use_cache=False, **options)
    assert batched == single == full
    assert len(set(batched)) > 1


@pytest.mark.parametrize("method", METHODS)
def test_greedy_through_the_fixed_generate_gives_the_engines_texts(tokenizer, method):
    model = tiny_soft_prompt_model(tokenizer, "llama", method)
    rows = paper_rows(8)
    tokenizer.eos_token = an_eos_some_rows_reach(model, tokenizer, rows, steps=10)
    options = {"template": TEMPLATE, "max_new_tokens": 10, "batch_size": 4, "show_progress": False}
    assert generate_texts(model, tokenizer, rows, use_generate=True, **options) == generate_texts(
        model, tokenizer, rows, **options
    )


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_beam_search_batched_equals_one_by_one(tokenizer, method):
    model = tiny_soft_prompt_model(tokenizer, "llama", method)
    rows = paper_rows(6)
    tokenizer.eos_token = "<unk>"
    options = {"template": TEMPLATE, "max_new_tokens": 6, "show_progress": False}
    beams = {"num_beams": 3, "length_penalty": 0.0}
    batched = generate_texts(model, tokenizer, rows, batch_size=6, generation_kwargs=beams, **options)
    single = [generate_texts(model, tokenizer, [row], generation_kwargs=beams, **options)[0] for row in rows]
    assert batched == single
    greedy = generate_texts(model, tokenizer, rows, **options)
    assert batched != greedy, "beam search gave greedy's texts on every row: the test cannot tell them apart"


def test_sampling_with_a_seed_is_repeatable(tokenizer):
    from transformers import set_seed

    model = tiny_soft_prompt_model(tokenizer, "gpt2", "prompt_tuning")
    rows = paper_rows(4)
    options = {"template": TEMPLATE, "max_new_tokens": 8, "show_progress": False}
    sampling = {"do_sample": True, "top_k": 0, "temperature": 1.0}
    set_seed(3)
    first = generate_texts(model, tokenizer, rows, generation_kwargs=sampling, **options)
    set_seed(3)
    again = generate_texts(model, tokenizer, rows, generation_kwargs=sampling, **options)
    assert first == again
    assert first != generate_texts(model, tokenizer, rows, **options)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"generation_kwargs": {"num_return_sequences": 2, "num_beams": 2}}, r"returns one text per input"),
        ({"generation_kwargs": {"max_new_tokens": 9}}, r"sets 'max_new_tokens', which generate_texts sets itself"),
        ({"max_new_tokens": 0}, r"max_new_tokens must be at least 1"),
    ],
)
def test_bad_generation_settings_are_refused(tokenizer, kwargs, match):
    model = tiny_soft_prompt_model(tokenizer, "gpt2", "prompt_tuning")
    with pytest.raises(ValueError, match=match):
        generate_texts(model, tokenizer, ["@Acme hi"], show_progress=False, **kwargs)


def test_rows_without_the_templates_columns_are_refused(tokenizer):
    model = tiny_soft_prompt_model(tokenizer, "gpt2", "prompt_tuning")
    with pytest.raises(ValueError, match=r"reads the column\(s\) \['title'\], not found in the row"):
        generate_texts(model, tokenizer, [{"body": "hi"}], template=TEMPLATE, show_progress=False)
    with pytest.raises(ValueError, match=r"pass rows .* not a text"):
        generate_texts(model, tokenizer, ["hi"], template=TEMPLATE, show_progress=False)
