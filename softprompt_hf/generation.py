"""Greedy generation of label texts for a batch of inputs, equal to generating them one by one."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .prompt import PromptTemplate

__all__ = ["generate_label_texts", "normalize_label"]


def normalize_label(text: str) -> str:
    """Normalises generated or gold label text for comparison: case, inner whitespace, trailing punctuation."""
    return " ".join(text.lower().split()).rstrip(".!?,;:").strip()


@torch.no_grad()
def generate_label_texts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    template: PromptTemplate | None = None,
    max_new_tokens: int = 4,
    max_prompt_tokens: int | None = None,
    batch_size: int = 32,
    show_progress: bool = True,
) -> list[str]:
    """Greedily generates the label text after each input's prompt.

    Prompts are grouped by token length and each group is generated in batches with no padding at all:
    with prompt tuning and P-tuning, left padding would put pads between the virtual tokens and the text
    and shift positions, so a padded batch would not give the same result as one prompt at a time.

    Args:
        model: A causal LM, with or without a soft prompt (a ``PeftModel``).
        tokenizer: The model's tokenizer.
        texts: Input texts.
        template: The prompt template used in training (default: the seed guide's).
        max_new_tokens: Generation stops at EOS or after this many tokens.
        max_prompt_tokens: Truncate the text (never the template) so the prompt fits.
        batch_size: Prompts per ``generate`` call.
        show_progress: Show a progress bar.

    Returns:
        The decoded continuations, special tokens removed, stripped.
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
    outputs = [""] * len(texts)
    for batch in tqdm(batches, desc="Generating labels", disable=not show_progress):
        input_ids = torch.tensor([encoded[i] for i in batch], device=device)
        generated = model.generate(  # type: ignore[operator]
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        decoded = tokenizer.batch_decode(generated[:, input_ids.shape[1] :], skip_special_tokens=True)
        for index, text in zip(batch, decoded, strict=True):
            outputs[index] = text.strip()
    model.train(was_training)
    return outputs
