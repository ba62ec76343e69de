"""The prompt a soft-prompt model reads, built the same way at training and at inference time.

Training and generation must see the same prompt tokens for the same text, and every label must continue the
same prompt tokens, so every component of the package (the collator, the evaluation, the predict command) goes
through :class:`PromptTemplate`: :meth:`PromptTemplate.encode` turns a text into the prompt's token ids and
:meth:`PromptTemplate.encode_target` turns a label text into the ids the model has to generate after them.
Where the prompt ends and the label begins is the template's ``label_tokenization`` (see there). An instruct model's
chat format is :class:`~softprompt_hf.data.chat.ChatTemplate` (``chat.py``); both offer :class:`PromptFormat`, what
every caller needs.
"""

from __future__ import annotations

import functools
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from transformers import PreTrainedTokenizerBase
from transformers.utils import logging

from ..constants import LABEL_TOKENIZATIONS

__all__ = ["DEFAULT_TEMPLATE", "PromptFormat", "PromptInput", "PromptTemplate", "encode_target", "fit_prompt"]

logger = logging.get_logger(__name__)

#: The seed guide's template: ``f"{text_column} : {text} Label : "``.
DEFAULT_TEMPLATE = "{text_column} : {text} Label : "

#: What an adapter folder whose ``softprompt_hf.json`` has no ``label_tokenization`` was trained with: those were
#: all written before the choice existed, with separate tokenization.
SAVED_WITHOUT_LABEL_TOKENIZATION = "separate"

# Stands for the text while the template's fixed tail is cut out of it: a private-use character, which no
# template contains.
_TEXT_MARK = "\ue000"

#: What a template is filled from: a text (its ``{text}`` field) or a row, a mapping of column names to values (every
#: field; ``{text}`` reads the template's ``text_column``).
PromptInput = str | Mapping[str, Any]


class PromptFormat(Protocol):
    """What the collator, the metrics, the decoders and ``predict`` need of a prompt: :class:`PromptTemplate` (a plain
    ``str.format`` pattern) and :class:`~softprompt_hf.data.chat.ChatTemplate` (an instruct model's chat template) offer
    it.

    ``encode`` gives a row's prompt ids, ``encode_target`` the ids the model has to generate after them (the target,
    then what ends it), and ``stop_ids`` the tokens at which decoding stops: the last id of every ``encode_target``
    is one of them.
    """

    @property
    def text_column(self) -> str: ...

    @property
    def fields(self) -> tuple[str, ...]: ...

    @property
    def columns(self) -> tuple[str, ...]: ...

    @property
    def cut_field(self) -> str: ...

    def check_columns(self, columns: Any, where: str = "the data") -> None: ...

    def values(self, source: PromptInput) -> dict[str, str]: ...

    def source_text(self, source: PromptInput) -> str: ...

    def source_column(self, row: Mapping[str, Any]) -> str: ...

    def encode(
        self, tokenizer: PreTrainedTokenizerBase, source: PromptInput, max_tokens: int | None = None
    ) -> list[int]: ...

    def encode_target(self, tokenizer: PreTrainedTokenizerBase, target: str) -> list[int]: ...

    def stop_ids(self, tokenizer: PreTrainedTokenizerBase) -> tuple[int, ...]: ...


@dataclass(frozen=True)
class PromptTemplate:
    """Formats a text into the prompt the model reads, tokenizes it, and tokenizes the labels that follow it.

    Where the prompt ends and the label begins (``label_tokenization``):

    - ``"joint"`` (the default) follows what the tokenizer does with the prompt and the label written as one
      text, ``render(text) + label``. The whitespace the template ends with goes with the label, as a
      tokenizer puts a word's leading space into the word's own token: the prompt's ids are those of
      :meth:`prompt_text` (the rendered prompt without that whitespace), and a label's ids are what tokenizing
      the template's fixed tail and the label together adds after the tail's own ids. With the seed's
      template, ``"complaint"`` becomes the model's own word token (``'▁complaint'`` on a SentencePiece-style
      tokenizer such as Gemma's or Llama's, ``'Ġcomplaint'`` on GPT-2-style byte-level BPE) after a prompt
      ending in ``'▁:'`` / ``'Ġ:'``, where separate tokenization gives ``['compl', 'aint']`` after a lone
      ``'▁'`` that the model never sees before a word. A label's ids are computed against the template's fixed
      tail (``" Label :"``), never against the text, so they are the same after every text, as rank scoring and
      greedy decoding need: tokenizers cut the text into words at whitespace before anything else (byte-level
      BPE, Metaspace), and even one that runs BPE over the whole text merges only neighbouring pieces, which
      the tail holds whatever the text is. Where the tail's ids are not a prefix of the tail-and-label's ids
      (the tokenizer merges the tail's end into the label), the label's ids are its text with the template's
      closing whitespace, tokenized on its own, and a warning says so once.
    - ``"separate"``: the rendered prompt, closing whitespace included, and the label are tokenized apart,
      the label without a leading space: the seed guide's way, and softprompt_hf's before ``"joint"``. For
      reproducing such runs; an adapter folder whose ``softprompt_hf.json`` has no ``label_tokenization`` was
      trained this way and is predicted this way. The embedded model was pretrained this way, so the quick
      start and the recipes keep it for that model (``softprompt_hf.embedded.label_tokenization_for``).

    Training (``SoftPromptDataCollator``) and inference (``GenerationMetrics``, ``generate_labels``,
    ``rank_labels``, ``predict``, the model card's snippets) read the same choice, so they see the same ids.

    Fields: ``{text}`` is the text, read from the row's ``text_column``; ``{text_column}`` is that column's name (as
    the seed guide writes it); any other field is a column of the row (``"Title : {title} Abstract : {abstract}
    Summary : "``). A template whose only field is ``{text}`` is filled from plain texts or rows; any other template
    from rows, mappings of column names to values (:meth:`values`). Where a prompt must be cut to fit,
    only :attr:`cut_field` is shortened (``{text}``, else the last field).

    Args:
        template: A ``str.format`` pattern with at least one field: ``{text}``, and any column name in braces;
            optionally ``{text_column}`` (replaced by the name of the text column, as the seed guide does).
        text_column: Name of the column holding the text: what ``{text}`` reads from a row, and what fills
            ``{text_column}``.
        label_tokenization: ``"joint"`` or ``"separate"`` (see above).

    Example:

    ```python
    >>> template = PromptTemplate(text_column="Tweet text")
    >>> template.render("@Acme my parcel is late")
    'Tweet text : @Acme my parcel is late Label : '
    >>> template.prompt_text("@Acme my parcel is late")  # the closing space goes with the label
    'Tweet text : @Acme my parcel is late Label :'
    >>> tokenizer.convert_ids_to_tokens(template.encode_target(tokenizer, "complaint"))
    ['Ġcomplaint', '</s>']

    ```
    """

    template: str = DEFAULT_TEMPLATE
    text_column: str = "Tweet text"
    label_tokenization: str = "joint"

    def __post_init__(self) -> None:
        try:
            parsed = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(self.template)]
        except ValueError as err:
            raise ValueError(
                f"Prompt template {self.template!r} is not a valid str.format pattern ({err}). "
                "Write literal braces as '{{' and '}}'."
            ) from err
        names = [name for name, _, _ in parsed if name is not None]
        for name, spec, conversion in parsed:
            if name is None:
                continue
            if not name or name.isdigit() or any(mark in name for mark in ".[]") or spec or conversion:
                raise ValueError(
                    f"Prompt template {self.template!r} has the field {{{name}{'!' + conversion if conversion else ''}"
                    f"{':' + spec if spec else ''}}}: a field is a column name in braces ({{text}} for the text "
                    "column, or any column of the row, e.g. {title}), without positions, attributes, indices, "
                    "conversions or format specs."
                )
        inputs = [name for name in names if name != "text_column"]
        if not inputs:
            raise ValueError(
                f"Prompt template {self.template!r} has no '{{text}}' field: the text would never reach the "
                "model. Example: '{text_column} : {text} Label : ', or name columns of the rows: "
                "'Title : {title} Abstract : {abstract} Summary : '."
            )
        if self.label_tokenization not in LABEL_TOKENIZATIONS:
            raise ValueError(
                f"label_tokenization={self.label_tokenization!r}: choose 'joint' (the prompt/label boundary the "
                "tokenizer gives the joined text; the default) or 'separate' (prompt and label tokenized apart, "
                "as the seed guide and older softprompt_hf runs did)."
            )

    @functools.cached_property
    def fields(self) -> tuple[str, ...]:
        """The template's input fields in order of first appearance (``{text_column}``, a name, is not one)."""
        names: list[str] = []
        for _, name, _, _ in string.Formatter().parse(self.template):
            if name is not None and name != "text_column" and name not in names:
                names.append(name)
        return tuple(names)

    @property
    def columns(self) -> tuple[str, ...]:
        """The row columns the template reads: ``text_column`` for ``{text}``, and each other field's own name."""
        return tuple(self.text_column if name == "text" else name for name in self.fields)

    @property
    def cut_field(self) -> str:
        """The field whose value :meth:`encode` shortens when the prompt is too long: ``text`` when the template
        has ``{text}``, else its last field (e.g. ``abstract`` in ``'Title : {title} Abstract : {abstract} ...'``)."""
        fields = self.fields
        return "text" if "text" in fields else fields[-1]

    def missing_columns(self, columns: Any) -> tuple[list[str], list[str]]:
        """The template's fields that ``columns`` (column names) do not hold, and the column names, sorted."""
        found = sorted(map(str, columns))
        return [column for column in self.columns if column not in found], found

    def check_columns(self, columns: Any, where: str = "the data") -> None:
        """Raises ``ValueError`` naming the template's fields that ``columns`` (column names) do not hold."""
        missing, found = self.missing_columns(columns)
        if missing:
            raise ValueError(
                f"Prompt template {self.template!r} reads the column(s) {missing}, not found in {where} (columns: "
                f"{found}). Put column names in braces, and '{{text}}' for the text column {self.text_column!r}."
            )

    def values(self, source: PromptInput) -> dict[str, str]:
        """The value of each field for ``source``: a text fills ``{text}`` (the template's only field, then); a row
        (a mapping of columns) fills every field from its column."""
        fields = self.fields
        if isinstance(source, str):
            if fields != ("text",):
                raise ValueError(
                    f"Prompt template {self.template!r} reads the fields {list(fields)}: pass rows (mappings of "
                    f"column names to values) holding the columns {list(self.columns)}, not a text."
                )
            return {"text": source}
        if not isinstance(source, Mapping):
            raise TypeError(f"A prompt is filled from a text or a row (a mapping), got {type(source).__name__}.")
        self.check_columns(source, where="the row")
        filled: dict[str, str] = {}
        for field_name, column in zip(fields, self.columns, strict=True):
            value = source[column]
            if value is None:
                raise ValueError(
                    f"The row's {column!r} is empty (None), and prompt template {self.template!r} reads it. "
                    "Drop or fill such rows."
                )
            filled[field_name] = value if isinstance(value, str) else str(value)
        return filled

    def source_text(self, source: PromptInput) -> str:
        """What a prediction shows as the text of ``source``: the text itself, or a row's text column, else the value
        of its :attr:`cut_field` column (a template of named columns)."""
        if isinstance(source, str):
            return source
        return str(source[self.source_column(source)])

    def source_column(self, row: Mapping[str, Any]) -> str:
        """The column of ``row`` whose value :meth:`source_text` shows: the text column where the row has it, else
        the column of :attr:`cut_field`."""
        return self.text_column if self.text_column in row else self.columns[-1]

    def render(self, source: PromptInput) -> str:
        """Returns the template filled with ``source`` (a text, or a row: see :meth:`values`)."""
        return self.fill(self.values(source))

    def fill(self, values: Mapping[str, str]) -> str:
        """The template filled with ``values``, one per field (as :meth:`values` returns them)."""
        return self.template.format_map({**values, "text_column": self.text_column})

    @property
    def label_separator(self) -> str:
        """The whitespace the template ends with, which goes with the label (``"joint"``); ``""`` otherwise."""
        if self.label_tokenization != "joint":
            return ""
        tail = self._tail()
        return tail[len(tail.rstrip()) :]

    @property
    def label_context(self) -> str:
        """The template's fixed text after its last field, without :attr:`label_separator`: what a label's ids are
        tokenized after (``"joint"``)."""
        tail = self._tail()
        return tail[: len(tail) - len(self.label_separator)]

    def prompt_text(self, source: PromptInput) -> str:
        """The string whose tokens are the prompt for ``source``: :meth:`render` without :attr:`label_separator`."""
        return self._prompt_text(self.values(source))

    def _prompt_text(self, values: Mapping[str, str]) -> str:
        rendered = self.fill(values)
        return rendered[: len(rendered) - len(self.label_separator)]

    def _tail(self) -> str:
        rendered = self.fill(dict.fromkeys(self.fields, _TEXT_MARK))
        return rendered[rendered.rindex(_TEXT_MARK) + len(_TEXT_MARK) :]

    def encode(
        self, tokenizer: PreTrainedTokenizerBase, source: PromptInput, max_tokens: int | None = None
    ) -> list[int]:
        """Tokenizes the prompt for ``source`` (a text, or a row: see :meth:`values`) exactly as generation will
        see it.

        :meth:`prompt_text` is tokenized on its own (with the tokenizer's special tokens, as
        ``tokenizer(prompt)`` does at inference), never together with the target, so that the prompt's ids are
        the same at training and at inference time and for every label.

        Args:
            tokenizer: The model's tokenizer.
            source: The input text, or a row holding every field's column.
            max_tokens: If set and the prompt is longer, tokens are removed from the value of :attr:`cut_field`
                only (the text; from its end, or from its start when ``tokenizer.truncation_side == "left"``);
                the template around it and the other fields are always kept whole.

        Raises:
            ValueError: If the prompt with an empty :attr:`cut_field` is longer than ``max_tokens``.
        """
        values = self.values(source)
        ids = fit_prompt(
            tokenizer, values, self.cut_field, lambda v: _tokenize(tokenizer, self._prompt_text(v)), max_tokens
        )
        if max_tokens is not None and len(ids) > max_tokens:
            cut = self.cut_field
            what = "alone takes" if len(self.fields) == 1 else f"with its fields other than {{{cut}}} takes"
            raise ValueError(
                f"The prompt template {what} {len(ids)} tokens, more than the {max_tokens} allowed for the prompt: "
                f"no text would fit. Raise max_length or shorten the template {self.template!r}."
            )
        return ids

    def encode_target(self, tokenizer: PreTrainedTokenizerBase, target: str) -> list[int]:
        """Token ids the model must generate after :meth:`encode`'s prompt for the label ``target``, then EOS.

        They depend on the label, the template and the tokenizer only, never on the text: every label
        continues the same prompt ids. ``"separate"``: the label tokenized on its own (:func:`encode_target`);
        ``"joint"``: see the class docstring.
        """
        if self.label_tokenization != "joint":
            return encode_target(tokenizer, target)
        _check_eos(tokenizer)
        context, labelled = self.label_context, self.label_separator + target
        context_ids = _tokenize(tokenizer, context, add_special_tokens=False)
        joined = _tokenize(tokenizer, context + labelled, add_special_tokens=False)
        if len(joined) > len(context_ids) and joined[: len(context_ids)] == context_ids:
            ids = joined[len(context_ids) :]
        else:
            # The tokenizer merges the tail's end with the label: no prompt ids end where the label starts. Its
            # own tokens, separator included, still continue the same prompt ids after every text.
            logger.warning_once(
                "The tokenizer merges the end of the prompt template (%r) into the label %r, so the label cannot "
                "follow the prompt's own tokens; it is tokenized on its own, with its leading %r, after every prompt. "
                "Training and inference use the same ids.",
                context,
                target,
                self.label_separator,
            )
            ids = _tokenize(tokenizer, labelled, add_special_tokens=False)
        return [*ids, tokenizer.eos_token_id]

    def stop_ids(self, tokenizer: PreTrainedTokenizerBase) -> tuple[int, ...]:
        """The tokens at which decoding stops: the tokenizer's EOS, which ends every target (none without one)."""
        return () if tokenizer.eos_token_id is None else (tokenizer.eos_token_id,)


def fit_prompt(
    tokenizer: PreTrainedTokenizerBase,
    values: Mapping[str, str],
    cut: str,
    encode: Callable[[Mapping[str, str]], list[int]],
    max_tokens: int | None,
) -> list[int]:
    """The prompt ids ``encode(values)``, with the value of the field ``cut`` shortened until they fit in
    ``max_tokens`` (from its end, or from its start when ``tokenizer.truncation_side == "left"``); the rest of the
    prompt is never cut. Where even an empty ``cut`` does not fit, the ids with an empty ``cut`` (longer than
    ``max_tokens``: the caller says what to change)."""
    ids = encode(values)
    if max_tokens is None or len(ids) <= max_tokens:
        return ids
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}.")
    text = values[cut]
    pieces = _text_pieces(tokenizer, text)
    keep = len(pieces) - (len(ids) - max_tokens)
    # Re-rendering the shortened text can tokenize differently at the text/template boundary, so
    # shorten until the rendered prompt fits instead of trusting the first estimate.
    while keep > 0:
        shortened = _keep_pieces(text, pieces, keep, tokenizer.truncation_side)
        ids = encode({**values, cut: shortened})
        if len(ids) <= max_tokens:
            return ids
        keep -= len(ids) - max_tokens
    return encode({**values, cut: ""})


def encode_target(tokenizer: PreTrainedTokenizerBase, target: str) -> list[int]:
    """Token ids the model must generate for ``target`` with separate tokenization: the label text on its own,
    followed by EOS (``PromptTemplate(label_tokenization="separate")``; :meth:`PromptTemplate.encode_target`
    gives a template's own, the default's ``"joint"`` included).

    The target is tokenized without special tokens and on its own, so its ids do not depend on the
    prompt in front of it.
    """
    _check_eos(tokenizer)
    return [*_tokenize(tokenizer, target, add_special_tokens=False), tokenizer.eos_token_id]


def _check_eos(tokenizer: PreTrainedTokenizerBase) -> None:
    if tokenizer.eos_token_id is None:
        raise ValueError(
            "The tokenizer has no eos_token: generation could never stop after the label. "
            "Set tokenizer.eos_token to the model's end-of-sequence token."
        )


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
