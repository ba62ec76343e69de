"""The chunked vocabulary projection gives the layer's argmax and log-probabilities, and is used only where exact."""

from __future__ import annotations

import pytest
import torch
from conftest import labelled_rows, model_config
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, Gemma2Config

from softprompt_hf.data.prompt import PromptTemplate
from softprompt_hf.inference.engine import CachedDecoder
from softprompt_hf.inference.labels import generate_label_ids
from softprompt_hf.inference.output_head import ChunkedOutputHead


def linear(vocab: int, hidden: int = 16, bias: bool = False, seed: int = 0) -> torch.nn.Linear:
    torch.manual_seed(seed)
    return torch.nn.Linear(hidden, vocab, bias=bias)


@pytest.mark.parametrize("rows", [1, 5, 64])
@pytest.mark.parametrize("bias", [False, True])
def test_argmax_and_log_probs_equal_the_full_logits(rows, bias):
    layer = linear(5_003, bias=bias)  # several chunks, the last one short
    head = ChunkedOutputHead(layer)
    assert head.chunk_size(rows, torch.device("cpu")) < 5_003
    hidden = torch.randn(rows, 16)
    with torch.no_grad():
        logits = layer(hidden)
        assert torch.equal(head.argmax(hidden), logits.argmax(dim=-1))
        tokens = torch.randint(0, 5_003, (rows, 3))
        tokens[:, 0] = logits.argmax(dim=-1)  # the largest logit too
        expected = torch.log_softmax(logits, dim=-1).gather(-1, tokens)
        torch.testing.assert_close(head.log_probs(hidden, tokens), expected, atol=1e-5, rtol=1e-5)


def test_leading_dimensions_are_kept():
    layer = linear(3_000)
    head = ChunkedOutputHead(layer)
    hidden = torch.randn(2, 3, 16)
    with torch.no_grad():
        assert torch.equal(head.argmax(hidden), layer(hidden).argmax(dim=-1))
        tokens = torch.randint(0, 3_000, (2, 3, 4))
        expected = torch.log_softmax(layer(hidden), dim=-1).gather(-1, tokens)
        torch.testing.assert_close(head.log_probs(hidden, tokens), expected, atol=1e-5, rtol=1e-5)


def test_a_tie_across_chunks_goes_to_the_first_token_like_torch_argmax():
    layer = linear(6_000)
    head = ChunkedOutputHead(layer)
    hidden = torch.randn(4, 16)
    with torch.no_grad():
        layer.weight[5_000:] = 0  # logits 0, below each row's largest
        winner = layer(hidden).argmax(dim=-1)
        assert (winner < 5_000).all()
        # Copy each row's winning vocabulary row to far later rows (other chunks): the logits tie.
        layer.weight[5_000:5_004] = layer.weight[winner]
        logits = layer(hidden)
        assert head.chunk_size(4, torch.device("cpu")) < 5_000
        for row in range(4):
            assert logits[row, 5_000 + row] == logits[row, winner[row]]
        assert torch.equal(head.argmax(hidden), logits.argmax(dim=-1))
        assert torch.equal(head.argmax(hidden), winner)


def test_bfloat16_log_probs_are_those_of_the_upcast_logits():
    layer = linear(4_000).to(torch.bfloat16)
    head = ChunkedOutputHead(layer)
    hidden = torch.randn(6, 16, dtype=torch.bfloat16)
    tokens = torch.randint(0, 4_000, (6, 2))
    with torch.no_grad():
        expected = torch.log_softmax(layer(hidden).float(), dim=-1).gather(-1, tokens)
        result = head.log_probs(hidden, tokens)
    assert result.dtype == torch.float32
    torch.testing.assert_close(result, expected, atol=2e-2, rtol=0)


def test_token_ids_outside_the_vocabulary_are_refused():
    head = ChunkedOutputHead(linear(100))
    with pytest.raises(ValueError, match=r"\[0, 100\)"):
        head.log_probs(torch.randn(1, 16), torch.tensor([[100]]))


def test_chunks_fit_the_cache_on_cpu_and_a_memory_budget_elsewhere():
    head = ChunkedOutputHead(torch.nn.Linear(8, 250_880, bias=False, device="meta"))
    cpu = torch.device("cpu")
    assert [head.chunk_size(rows, cpu) for rows in (1, 32, 64, 128, 4096)] == [2048, 2048, 1024, 512, 512]
    # A GPU projects a batch's rows onto the whole vocabulary at once, unless that is over 256 MiB of logits.
    assert head.chunk_size(32, torch.device("cuda")) == 250_880
    assert head.chunk_size(4096, torch.device("cuda")) == (256 << 20) // (4 * 4096)


def test_heads_that_are_not_a_plain_linear_layer_are_not_chunked(tokenizer):
    model = AutoModelForCausalLM.from_config(model_config("llama", len(tokenizer)))
    assert ChunkedOutputHead.of(model) is not None
    lora = get_peft_model(model, LoraConfig(target_modules=["lm_head"], r=2))
    assert ChunkedOutputHead.of(lora) is None
    assert ChunkedOutputHead.of(torch.nn.Linear(2, 2)) is None  # no output layer at all
    gemma = Gemma2Config(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
    )
    assert gemma.final_logit_softcapping  # Gemma 2 soft-caps its logits after the output layer
    with torch.device("meta"):
        assert ChunkedOutputHead.of(AutoModelForCausalLM.from_config(gemma)) is None


def test_decoding_keeps_the_models_logits_when_its_forward_changes_them(tokenizer):
    """A model that transforms its logits after the output layer, in a way no config setting tells, is caught
    by the first forward's check; decoding then uses the model's logits and stays exact."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(model_config("llama", len(tokenizer))).eval()

    def negate(module, args, kwargs, output):
        output.logits = -output.logits
        return output

    model.register_forward_hook(negate, with_kwargs=True)
    texts = [row["Tweet text"] for row in labelled_rows(6)]
    prompts = [PromptTemplate().encode(tokenizer, text) for text in texts]
    decoder = CachedDecoder(model, prompts)  # its first forward: the template's opening, shared by all prompts
    assert decoder.shared_tokens
    assert decoder.head is None
    cached = generate_label_ids(model, tokenizer, texts, max_new_tokens=3, show_progress=False)
    full = generate_label_ids(model, tokenizer, texts, max_new_tokens=3, show_progress=False, use_cache=False)
    assert cached == full
    plain = AutoModelForCausalLM.from_config(model_config("llama", len(tokenizer)))
    plain.load_state_dict(model.state_dict())
    assert CachedDecoder(plain.eval(), prompts).head is not None
    assert generate_label_ids(plain, tokenizer, texts, max_new_tokens=3, show_progress=False) != cached
