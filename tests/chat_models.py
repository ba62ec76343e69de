"""Chat formats and rigged chat models built in the test session, for tests/test_chat_template.py and
tests/test_chat_recipes.py: three chat templates (ChatML as SmolLM2 and Qwen write it, Gemma's, which writes
``{{ bos_token }}``, and Llama 3's) on the tiny tokenizer, and a Llama whose greedy answer is fixed."""

from __future__ import annotations

import torch
from conftest import build_tokenizer, labelled_rows
from transformers import AutoModelForCausalLM, LlamaConfig

from softprompt_hf import ChatTemplate

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
GEMMA = (
    "{{ bos_token }}{% for m in messages %}{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
    "<start_of_turn>{{ role }}\n{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
LLAMA3 = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
# format: (chat template, its special tokens, its end-of-turn token, BOS it writes or None)
FORMATS = {
    "chatml": (CHATML, ["<|im_start|>", "<|im_end|>"], "<|im_end|>", None),
    "gemma": (GEMMA, ["<start_of_turn>", "<end_of_turn>"], "<end_of_turn>", "<s>"),
    "llama3": (LLAMA3, ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], "<|eot_id|>", "<|begin_of_text|>"),
}
SYSTEM = "Answer complaint or no complaint."
USER = "Is this tweet a complaint? {text}"
TEXTS = [row["Tweet text"] for row in labelled_rows(8, seed=5)] + ["hi", "@Acme a much longer tweet " * 3]


def chat_tokenizer(name: str):
    """The tiny tokenizer with ``name``'s chat template and special tokens. Gemma's adds BOS on every tokenizer call
    (as Gemma's does) and its template writes one too; Llama 3's BOS is ``<|begin_of_text|>``."""
    template, specials, _, bos = FORMATS[name]
    tokenizer = build_tokenizer(add_bos=name == "gemma")
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    if bos is not None and bos != tokenizer.bos_token:
        tokenizer.add_special_tokens({"bos_token": bos})
    tokenizer.chat_template = template
    return tokenizer


def rigged_model(tokenizer, chain: list[int], garbage: int):
    """A Llama whose greedy next token depends on the current token only: ``chain[i]`` is followed by
    ``chain[i + 1]``, every other token by ``garbage``. Its embeddings are one-hot, attention and MLP write
    nothing into the residual stream, and its output layer is the transition table (so a soft prompt changes
    nothing either)."""
    vocab, hidden = len(tokenizer), 512
    assert hidden >= vocab and len(set(chain)) == len(chain) and garbage not in chain
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=8,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(torch.eye(vocab, hidden))
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        table = torch.zeros(vocab, hidden)
        table[garbage] = 0.5
        for current, following in zip(chain, chain[1:], strict=False):
            table[following, current] = 1.0
        model.lm_head.weight.copy_(table)
    return model


def answering_model(tokenizer, chat: ChatTemplate, label: str):
    """:func:`rigged_model` that answers ``label`` and its end-of-turn token after the chat prompt, then ``x``
    forever (a decoder that did not stop at the end-of-turn token would go on)."""
    last = chat.encode(tokenizer, TEXTS[0])[-1]
    return rigged_model(tokenizer, [last, *chat.encode_target(tokenizer, label)], tokenizer.convert_tokens_to_ids("x"))
