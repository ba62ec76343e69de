from __future__ import annotations

import pytest
import torch
from conftest import METHODS, labelled_rows, model_config
from transformers import AutoModelForCausalLM

from softprompt_hf import PromptTemplate, build_soft_prompt_model
from softprompt_hf.generation import generate_label_texts, normalize_label


@pytest.mark.parametrize("arch", ["gpt2", "llama", "bloom"])
@pytest.mark.parametrize("method", METHODS)
def test_batched_generation_equals_one_by_one(tokenizer, arch, method):
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(model_config(arch, len(tokenizer)))
    model = build_soft_prompt_model(base, method=method, prompt_tuning_init="RANDOM", num_virtual_tokens=4)
    texts = [row["Tweet text"] for row in labelled_rows(12)] + ["@Acme hi", "@Acme a much longer tweet " * 3]
    lengths = {len(PromptTemplate().encode(tokenizer, t)) for t in texts}
    assert 1 < len(lengths) < len(texts), "the test needs prompts of equal and of different lengths"
    batched = generate_label_texts(model, tokenizer, texts, batch_size=16, max_new_tokens=3, show_progress=False)
    single = [generate_label_texts(model, tokenizer, [t], max_new_tokens=3, show_progress=False)[0] for t in texts]
    assert batched == single
    assert any(batched), "generation produced only empty strings"


def test_generation_restores_training_mode(tokenizer):
    model = AutoModelForCausalLM.from_config(model_config("gpt2", len(tokenizer)))
    model.train()
    generate_label_texts(model, tokenizer, ["@Acme hi"], max_new_tokens=1, show_progress=False)
    assert model.training


@pytest.mark.parametrize(
    ("text", "expected"),
    [("Complaint.", "complaint"), ("  no   complaint !", "no complaint"), ("No Complaint", "no complaint")],
)
def test_normalize_label(text, expected):
    assert normalize_label(text) == expected
