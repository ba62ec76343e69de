"""The prompt a soft-prompt model reads, built the same way at training and at inference time.

Training and generation must see the same prompt tokens for the same text, so every component of
the package (the collator, the evaluation, the predict command) goes through
:class:`PromptTemplate` to turn a text into token ids, and through :func:`encode_target` to turn a
label text into the ids the model has to generate.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

__all__ = ["DEFAULT_TEMPLATE", "PromptTemplate", "encode_target"]

#: The seed guide's template: ``f"{text_column} : {text} Label : "``.
DEFAULT_TEMPLATE = "{text_column} : {text} Label : "

_ALLOWED_FIELDS = {"text", "text_column"}


@dataclass(frozen=True)
class PromptTemplate:
    """Formats a text into the prompt the model reads and tokenizes it.

    Args:
        template: A ``str.format`` pattern with a ``{text}`` field and optionally ``{text_column}``
            (replaced by the name of the text column, as the seed guide does).
        text_column: Name of the column holding the text; only used to fill ``{text_column}``.

    Example:

    ```python
    >>> PromptTemplate(text_column="Tweet text").render("@Acme my parcel is late")
    'Tweet text : @Acme my parcel is late Label : '

    ```
    """

    template: str = DEFAULT_TEMPLATE
    text_column: str = "Tweet text"

    def __post_init__(self) -> None:
        try:
            fields = {name for _, name, _, _ in string.Formatter().parse(self.template) if name is not None}
        except ValueError as err:
            raise ValueError(
                f"Prompt template {self.template!r} is not a valid str.format pattern ({err}). "
                "Write literal braces as '{{' and '}}'."
            ) from err
        if "text" not in fields:
            raise ValueError(
                f"Prompt template {self.template!r} has no '{{text}}' field: the text would never reach the "
                "model. Example: '{text_column} : {text} Label : '."
            )
        unknown = fields - _ALLOWED_FIELDS
        if unknown:
            raise ValueError(
                f"Prompt template {self.template!r} uses unknown field(s) {sorted(unknown)}; "
                f"only {sorted(_ALLOWED_FIELDS)} are filled in."
            )

    def render(self, text: str) -> str:
        """Returns the prompt string for ``text``."""
        return self.template.format(text=text, text_column=self.text_column)

    def encode(self, tokenizer: PreTrainedTokenizerBase, text: str, max_tokens: int | None = None) -> list[int]:
        """Tokenizes the prompt for ``text`` exactly as generation will see it.

        The prompt is tokenized on its own (with the tokenizer's special tokens, as
        ``tokenizer(prompt)`` does at inference), never together with the target, so that a template
        ending in a space produces the same tokens at training and at inference time.

        Args:
            tokenizer: The model's tokenizer.
            text: The input text.
            max_tokens: If set and the prompt is longer, tokens are removed from the *text only*
                (from its end, or from its start when ``tokenizer.truncation_side == "left"``); the
                template around the text is always kept whole.

        Raises:
            ValueError: If the template alone (with an empty text) is longer than ``max_tokens``.
        """
        ids = _tokenize(tokenizer, self.render(text))
        if max_tokens is None or len(ids) <= max_tokens:
            return ids
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be positive, got {max_tokens}.")
        pieces = _text_pieces(tokenizer, text)
        keep = len(pieces) - (len(ids) - max_tokens)
        # Re-rendering the shortened text can tokenize differently at the text/template boundary, so
        # shorten until the rendered prompt fits instead of trusting the first estimate.
        while keep > 0:
            ids = _tokenize(tokenizer, self.render(_keep_pieces(text, pieces, keep, tokenizer.truncation_side)))
            if len(ids) <= max_tokens:
                return ids
            keep -= len(ids) - max_tokens
        ids = _tokenize(tokenizer, self.render(""))
        if len(ids) > max_tokens:
            raise ValueError(
                f"The prompt template alone takes {len(ids)} tokens, more than the {max_tokens} allowed for "
                f"the prompt: no text would fit. Raise max_length or shorten the template {self.template!r}."
            )
        return ids


def encode_target(tokenizer: PreTrainedTokenizerBase, target: str) -> list[int]:
    """Token ids the model must generate for ``target``: the label text followed by EOS.

    The target is tokenized without special tokens and on its own, so its ids do not depend on the
    prompt in front of it.
    """
    if tokenizer.eos_token_id is None:
        raise ValueError(
            "The tokenizer has no eos_token: generation could never stop after the label. "
            "Set tokenizer.eos_token to the model's end-of-sequence token."
        )
    return [*_tokenize(tokenizer, target, add_special_tokens=False), tokenizer.eos_token_id]


def _tokenize(tokenizer: PreTrainedTokenizerBase, text: str, add_special_tokens: bool = True) -> list[int]:
    return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def _text_pieces(tokenizer: PreTrainedTokenizerBase, text: str) -> list[tuple[int, int]]:
    """Character spans of the tokens of ``text`` (tokenized alone)."""
    if tokenizer.is_fast:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return [(int(start), int(end)) for start, end in encoded["offset_mapping"]]
    # Slow tokenizers have no offsets: rebuild each token's span by decoding growing prefixes.
    ids = _tokenize(tokenizer, text, add_special_tokens=False)
    spans: list[tuple[int, int]] = []
    start = 0
    for i in range(1, len(ids) + 1):
        end = min(len(tokenizer.decode(ids[:i])), len(text))
        spans.append((start, end))
        start = end
    return spans


def _keep_pieces(text: str, pieces: list[tuple[int, int]], keep: int, side: str) -> str:
    if side == "left":
        return text[pieces[len(pieces) - keep][0] :]
    return text[: pieces[keep - 1][1]]
