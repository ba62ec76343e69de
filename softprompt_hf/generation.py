"""Greedy decoding of label texts, exact for soft-prompt models and equal in batches and one by one."""

from __future__ import annotations

import inspect
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from .prompt import PromptTemplate

__all__ = ["generate_label_ids", "generate_label_texts", "normalize_label", "supports_logits_to_keep"]


def normalize_label(text: str) -> str:
    """Normalises generated or gold label text for comparison: case, inner whitespace, trailing punctuation."""
    return " ".join(text.lower().split()).rstrip(".!?,;:").strip()


def generate_label_texts(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    **kwargs: Any,
) -> list[str]:
    """Greedily generates the label text after each input's prompt.

    Takes the arguments of :func:`generate_label_ids` and returns its tokens decoded, special tokens
    removed, stripped.
    """
    return [
        text.strip()
        for text in tokenizer.batch_decode(
            generate_label_ids(model, tokenizer, texts, **kwargs), skip_special_tokens=True
        )
    ]


@torch.no_grad()
def generate_label_ids(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    template: PromptTemplate | None = None,
    max_new_tokens: int = 4,
    max_prompt_tokens: int | None = None,
    batch_size: int = 32,
    show_progress: bool = True,
) -> list[list[int]]:
    """Greedily generates the label tokens after each input's prompt.

    Decoding runs the model's own forward pass, the one used in training, on the whole sequence at each
    step, rather than ``generate()``: with peft 0.21 and transformers 5.x, ``PeftModel.generate`` with a
    soft prompt (all three methods, on GPT-2, Llama and Bloom) often returns tokens other than the
    model's own greedy choice (on tiny random models most sequences differ), while the training forward
    is exact by definition. Labels are a few tokens long, so the extra cost is small.

    Prompts are grouped by token length and each group is decoded in batches with no padding at all: with
    prompt tuning and P-tuning, left padding would put pads between the virtual tokens and the text and
    shift positions, so a padded batch would not give the same result as one prompt at a time.

    Args:
        model: A causal LM, with or without a soft prompt (a ``PeftModel``).
        tokenizer: The model's tokenizer.
        texts: Input texts.
        template: The prompt template used in training (default: the seed guide's).
        max_new_tokens: Decoding stops at EOS or after this many tokens.
        max_prompt_tokens: Truncate the text (never the template) so the prompt fits.
        batch_size: Prompts per forward pass.
        show_progress: Show a progress bar.

    Returns:
        For each text, the generated token ids, up to and including the EOS if one was generated.
    """
    template = template or PromptTemplate()
    encoded = [template.encode(tokenizer, text, max_prompt_tokens) for text in texts]
    by_length: dict[int, list[int]] = defaultdict(list)
    for index, ids in enumerate(encoded):
        by_length[len(ids)].append(index)
    batches = [
        indices[start : start + batch_size]
        for _, indices in sorted(by_length.items())
        for start in range(0, len(indices), batch_size)
    ]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    extra = {"logits_to_keep": 1} if supports_logits_to_keep(model) else {}
    outputs: list[list[int]] = [[] for _ in texts]
    for batch in tqdm(batches, desc="Generating labels", disable=not show_progress):
        sequences = torch.tensor([encoded[i] for i in batch], device=device)
        prompt_length = sequences.shape[1]
        finished = torch.zeros(len(batch), dtype=torch.bool, device=device)
        for _ in range(max_new_tokens):
            logits = model(input_ids=sequences, attention_mask=torch.ones_like(sequences), **extra).logits
            next_tokens = logits[:, -1, :].argmax(dim=-1)
            # Rows are independent and attention is causal: what a finished row appends changes nothing.
            next_tokens = next_tokens.masked_fill(finished, tokenizer.eos_token_id)
            sequences = torch.cat([sequences, next_tokens[:, None]], dim=1)
            finished |= next_tokens == tokenizer.eos_token_id
            if finished.all():
                break
        for index, row in zip(batch, sequences[:, prompt_length:].tolist(), strict=True):
            outputs[index] = row[: row.index(tokenizer.eos_token_id) + 1] if tokenizer.eos_token_id in row else row
    model.train(was_training)
    return outputs


def supports_logits_to_keep(model: torch.nn.Module) -> bool:
    """Whether the (base) model's forward takes ``logits_to_keep``, to compute logits only where needed
    instead of full-vocabulary logits for every position."""
    base: Any = model.get_base_model() if hasattr(model, "get_base_model") else model  # type: ignore[operator]
    return "logits_to_keep" in inspect.signature(base.forward).parameters
