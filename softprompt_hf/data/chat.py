"""Prompts in an instruct model's own chat format: :class:`ChatTemplate`.

An instruct model reads its input through its chat template and ends its answer with the token the template closes
the assistant turn with (``<|im_end|>`` in ChatML, ``<end_of_turn>`` in Gemma's, ``<|eot_id|>`` in Llama 3's), not
with EOS. :class:`ChatTemplate` builds the prompt with the tokenizer's own ``apply_chat_template`` and makes every
target end with that end-of-turn token, at which decoding stops; it offers what :class:`~softprompt_hf.data.prompt.
PromptTemplate` offers (:class:`~softprompt_hf.data.prompt.PromptFormat`), so the collator, the metrics, the decoders
and ``predict`` take either.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedTokenizerBase
from transformers.utils import logging

from .prompt import PromptFormat, PromptInput, PromptTemplate, fit_prompt

__all__ = ["ChatTemplate", "prompt_format"]

logger = logging.get_logger(__name__)

# Stand for the user's message and the assistant's while the template's fixed text around them is found:
# private-use characters, which no chat template writes.
_USER_MARK = "\ue001"
_ASSISTANT_MARK = "\ue002"


@dataclass(frozen=True)
class ChatTemplate:
    """A prompt in the tokenizer's chat template: a system message (optional) and a user message filled from the
    row, then the assistant turn's header; the target is the assistant's message and the token that closes its turn.

    - Prompt: ``tokenizer.apply_chat_template([system, user], add_generation_prompt=True, tokenize=True)``, the
      user message being ``user`` filled from the row as :class:`~softprompt_hf.data.prompt.PromptTemplate` fills a
      template (``{text}`` reads ``text_column``, any other field the column of its name).
    - Target: the ids the chat template writes for an assistant message holding the target, up to and including
      the first special token after it: its end-of-turn token (``<|im_end|>``, ``<end_of_turn>``, ``<|eot_id|>``).
      What the template writes after that token (ChatML's newline) is never generated: decoding stops there. The
      ids are computed against the template's fixed text before the assistant message, never against the row, so
      every target continues every prompt with the same ids, as rank scoring and greedy decoding need.
    - Decoding stops at the end-of-turn token or at EOS (:meth:`stop_ids`), in every decoder of the package.

    One BOS: the prompt is the chat template's text tokenized without the tokenizer's own special tokens, as
    ``apply_chat_template`` tokenizes it, so a template that writes ``{{ bos_token }}`` (Gemma's, Llama 3's) gives
    one BOS, never a second one from the tokenizer call (``tokenizer(text)`` on the rendered text would add it on a
    tokenizer that adds BOS); a prompt that would start with two is given one.

    The soft prompt: peft puts the virtual tokens before the first token of ``input_ids``, so ahead of the chat
    template's BOS and system text, in training and in inference alike; that placement is kept.

    Cutting a long row (``max_tokens``): only the value of :attr:`cut_field` is shortened; the chat template's text,
    the system message and the rest of the user message are kept whole.

    Args:
        user: The user message, a ``str.format`` pattern as :class:`~softprompt_hf.data.prompt.PromptTemplate`'s
            ``template`` (at least one field: ``{text}`` or a column name in braces).
        system: A system message, or ``None`` for none (the chat template may still write its own default).
        text_column: The column ``{text}`` reads (the collator and the metrics set it to their own
            ``text_column``).

    Raises:
        ValueError: From the methods taking a tokenizer: if it has no chat template (use a plain
            ``PromptTemplate`` instead), or its chat template does not end the conversation with the assistant turn
            right after the generation prompt, or closes that turn with no special token.

    Example:

    ```python
    >>> from softprompt_hf import ChatTemplate
    >>> chat = ChatTemplate(user="Is this tweet a complaint? {text}")
    >>> tokenizer.decode(chat.encode(tokenizer, "@Acme my parcel"))  # doctest: +SKIP
    '<|im_start|>user\\nIs this tweet a complaint? @Acme my parcel<|im_end|>\\n<|im_start|>assistant\\n'
    >>> tokenizer.convert_ids_to_tokens(chat.encode_target(tokenizer, "complaint"))  # doctest: +SKIP
    ['complaint', '<|im_end|>']

    ```
    """

    user: str = "{text}"
    system: str | None = None
    text_column: str = "text"
    _user: PromptTemplate = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.user, str):
            raise TypeError(f"ChatTemplate(user=...) is a str.format pattern, got {type(self.user).__name__}.")
        if self.system is not None and not isinstance(self.system, str):
            raise TypeError(f"ChatTemplate(system=...) is a string or None, got {type(self.system).__name__}.")
        try:
            pattern = PromptTemplate(self.user, self.text_column, "separate")
        except ValueError as err:
            raise ValueError(f"ChatTemplate(user={self.user!r}): {err}") from err
        object.__setattr__(self, "_user", pattern)

    # -- The row's fields, as PromptTemplate reads them --------------------------------------------------------
    @property
    def fields(self) -> tuple[str, ...]:
        """The user pattern's input fields in order of first appearance."""
        return self._user.fields

    @property
    def columns(self) -> tuple[str, ...]:
        """The row columns the user pattern reads: ``text_column`` for ``{text}``, and each other field's own name."""
        return self._user.columns

    @property
    def cut_field(self) -> str:
        """The field :meth:`encode` shortens when the prompt is too long: ``text``, else the last field."""
        return self._user.cut_field

    def check_columns(self, columns: Any, where: str = "the data") -> None:
        """Raises ``ValueError`` naming the user pattern's fields that ``columns`` (column names) do not hold."""
        missing, found = self._user.missing_columns(columns)
        if missing:
            raise ValueError(
                f"The chat template's user message {self.user!r} reads the column(s) {missing}, not found in {where} "
                f"(columns: {found}). Put column names in braces in ChatTemplate(user=...), and '{{text}}' for the "
                f"text column {self.text_column!r}."
            )

    def values(self, source: PromptInput) -> dict[str, str]:
        """The value of each field for ``source``: a text (the user pattern's only field is ``{text}``) or a row."""
        if isinstance(source, Mapping):
            self.check_columns(source, where="the row")
        return self._user.values(source)

    def source_text(self, source: PromptInput) -> str:
        """What a prediction shows as the text of ``source`` (see ``PromptTemplate.source_text``)."""
        return self._user.source_text(source)

    def source_column(self, row: Mapping[str, Any]) -> str:
        """The column of ``row`` whose value :meth:`source_text` shows."""
        return self._user.source_column(row)

    # -- Tokens ------------------------------------------------------------------------------------------------
    def check_tokenizer(self, tokenizer: PreTrainedTokenizerBase) -> None:
        """Raises ``ValueError`` if ``tokenizer``'s chat template cannot be used: none at all, no assistant turn at
        the end of the conversation right after the generation prompt, or no special token closing that turn."""
        self._turn(tokenizer)

    def encode(
        self, tokenizer: PreTrainedTokenizerBase, source: PromptInput, max_tokens: int | None = None
    ) -> list[int]:
        """The prompt's token ids for ``source`` (a text, or a row): what
        ``apply_chat_template(messages, add_generation_prompt=True, tokenize=True)`` gives, with one BOS at most.

        Args:
            tokenizer: The model's tokenizer, with its chat template.
            source: The input text, or a row holding every field's column.
            max_tokens: If set and the prompt is longer, tokens are removed from the value of :attr:`cut_field`
                only (from its end, or from its start when ``tokenizer.truncation_side == "left"``).

        Raises:
            ValueError: If the prompt with an empty :attr:`cut_field` is longer than ``max_tokens``.
        """
        self._turn(tokenizer)
        values = self.values(source)
        ids = fit_prompt(
            tokenizer, values, self.cut_field, lambda v: self._prompt_ids(tokenizer, self._user.fill(v)), max_tokens
        )
        if max_tokens is not None and len(ids) > max_tokens:
            raise ValueError(
                f"The chat template's prompt with an empty {{{self.cut_field}}} takes {len(ids)} tokens, more than the "
                f"{max_tokens} allowed for the prompt: no text would fit. Raise max_length, or shorten the system "
                f"message {self.system!r} or the user message {self.user!r}."
            )
        return ids

    def encode_target(self, tokenizer: PreTrainedTokenizerBase, target: str) -> list[int]:
        """Token ids the model must generate after :meth:`encode`'s prompt for ``target``: the assistant message as
        the chat template writes it, then the template's end-of-turn token. They depend on the target, the chat
        template and the tokenizer only, never on the row."""
        turn = self._turn(tokenizer)
        rendered = _render(tokenizer, self._messages(_USER_MARK, target), generation_prompt=False)
        if not rendered.startswith(turn.prompt):
            raise ValueError(
                f"The chat template writes the conversation with the assistant message {target!r} other than its "
                "generation prompt followed by that message: the target would not continue the prompt. "
                f"{_SET_TEMPLATE}"
            )
        answer = rendered[len(turn.prompt) :]
        context_ids = _tokenize(tokenizer, turn.context)
        joined = _tokenize(tokenizer, turn.context + answer)
        if len(joined) > len(context_ids) and joined[: len(context_ids)] == context_ids:
            ids = joined[len(context_ids) :]
        else:
            logger.warning_once(
                "The tokenizer merges the end of the chat template's generation prompt (%r) into the assistant "
                "message %r; the message is tokenized on its own after every prompt. Training and inference use "
                "the same ids.",
                turn.context,
                answer,
            )
            ids = _tokenize(tokenizer, answer)
        if turn.end not in ids:
            raise ValueError(
                f"The chat template closes the assistant message {target!r} without its end-of-turn token "
                f"{tokenizer.convert_ids_to_tokens(turn.end)!r}. {_SET_TEMPLATE}"
            )
        return ids[: ids.index(turn.end) + 1]

    def stop_ids(self, tokenizer: PreTrainedTokenizerBase) -> tuple[int, ...]:
        """The tokens at which decoding stops: the chat template's end-of-turn token, then EOS where it differs."""
        end = self._turn(tokenizer).end
        eos = tokenizer.eos_token_id
        return (end,) if eos is None or eos == end else (end, eos)

    def end_of_turn(self, tokenizer: PreTrainedTokenizerBase) -> str:
        """The end-of-turn token of ``tokenizer``'s chat template, as a string (``"<|im_end|>"`` for ChatML)."""
        return str(tokenizer.convert_ids_to_tokens(self._turn(tokenizer).end))

    def _messages(self, user: str, assistant: str | None = None) -> list[dict[str, str]]:
        messages = [] if self.system is None else [{"role": "system", "content": self.system}]
        messages.append({"role": "user", "content": user})
        if assistant is not None:
            messages.append({"role": "assistant", "content": assistant})
        return messages

    def _prompt_ids(self, tokenizer: PreTrainedTokenizerBase, user: str) -> list[int]:
        ids = _tokenize(tokenizer, _render(tokenizer, self._messages(user), generation_prompt=True))
        bos = tokenizer.bos_token_id
        if bos is not None and ids[:2] == [bos, bos]:
            logger.warning_once("The chat template's prompt starts with two BOS tokens; one is kept.")
            ids = ids[1:]
        return ids

    def _turn(self, tokenizer: PreTrainedTokenizerBase) -> _Turn:
        template = getattr(tokenizer, "chat_template", None)
        if not template:
            name = getattr(tokenizer, "name_or_path", "") or "this model"
            raise ValueError(
                f"The tokenizer of {name!r} has no chat template, so ChatTemplate cannot build an instruct model's "
                "prompt: it is a base model (not instruction-tuned), or its chat template was not saved. Use a plain "
                "prompt instead: drop the chat template and pass template= a PromptTemplate pattern (e.g. "
                "'{text_column} : {text} Label : '); or set tokenizer.chat_template to the model's Jinja template."
            )
        return _turn_of(tokenizer, str(template), self.system)


@dataclass(frozen=True)
class _Turn:
    """What a chat template writes around the messages: the generation prompt after a user message ``_USER_MARK``
    (``prompt``), its fixed text after that message (``context``: what targets are tokenized after), and the id of
    the special token that closes the assistant turn (``end``)."""

    prompt: str
    context: str
    end: int


_SET_TEMPLATE = (
    "Use a chat template whose conversation ends with the assistant turn, written right after what "
    "add_generation_prompt=True writes (set tokenizer.chat_template), or a plain PromptTemplate instead."
)


@functools.lru_cache(maxsize=8)
def _turn_of(tokenizer: PreTrainedTokenizerBase, template: str, system: str | None) -> _Turn:
    """The chat template's :class:`_Turn` (``template``: the tokenizer's chat template, part of the key so that a
    changed template is read again), checked: the conversation ends with the assistant turn, right after the
    generation prompt, and a special token closes it."""
    messages = [] if system is None else [{"role": "system", "content": system}]
    user = [*messages, {"role": "user", "content": _USER_MARK}]
    prompt = _render(tokenizer, user, generation_prompt=True)
    if _USER_MARK not in prompt:
        raise ValueError(f"The chat template does not write the user message into the prompt. {_SET_TEMPLATE}")
    conversation = _render(
        tokenizer, [*user, {"role": "assistant", "content": _ASSISTANT_MARK}], generation_prompt=False
    )
    if _ASSISTANT_MARK not in conversation:
        raise ValueError(f"The chat template does not write the assistant message. {_SET_TEMPLATE}")
    if not conversation.startswith(prompt):
        raise ValueError(
            "The chat template does not put the assistant turn at the end of the conversation, right after its "
            f"generation prompt: it writes {_shown(conversation)} for a user and an assistant message, which does "
            f"not start with the generation prompt {_shown(prompt)}. {_SET_TEMPLATE}"
        )
    answer = conversation[len(prompt) :]
    if not answer.startswith(_ASSISTANT_MARK):
        before = answer[: answer.index(_ASSISTANT_MARK)]
        raise ValueError(
            f"The chat template writes {before!r} between its generation prompt and the assistant message (does it "
            f"write the assistant turn's header for add_generation_prompt=True?). {_SET_TEMPLATE}"
        )
    closing = answer[len(_ASSISTANT_MARK) :]
    if _USER_MARK in closing or _ASSISTANT_MARK in closing:
        raise ValueError(
            "The chat template does not put the assistant turn at the end of the conversation: it writes "
            f"{_shown(closing)} after the assistant message. {_SET_TEMPLATE}"
        )
    special = {
        index for index, token in tokenizer.added_tokens_decoder.items() if not str(token.content).isspace()
    } | set(tokenizer.all_special_ids)
    end = next((token for token in _tokenize(tokenizer, closing) if token in special), None)
    if end is None:
        raise ValueError(
            f"The chat template closes the assistant turn with {closing!r}, which holds no special token: decoding "
            f"could never tell where the answer ends. {_SET_TEMPLATE}"
        )
    return _Turn(prompt=prompt, context=prompt[prompt.rindex(_USER_MARK) + len(_USER_MARK) :], end=end)


def prompt_format(
    template: str | ChatTemplate,
    text_column: str,
    label_tokenization: str = "joint",
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> PromptFormat:
    """The prompt of a collator or a metrics object: a ``str.format`` pattern becomes a ``PromptTemplate`` (with
    ``label_tokenization``), and a ``ChatTemplate`` reads ``{text}`` from ``text_column``. With ``tokenizer``, a
    chat template is checked against it now (:meth:`ChatTemplate.check_tokenizer`), not at the first row."""
    if isinstance(template, ChatTemplate):
        chat = (
            template if template.text_column == text_column else dataclasses.replace(template, text_column=text_column)
        )
        if tokenizer is not None:
            chat.check_tokenizer(tokenizer)
        return chat
    if not isinstance(template, str):
        raise TypeError(
            f"template must be a str.format pattern or a ChatTemplate, got {type(template).__name__}: pass the "
            "pattern itself (PromptTemplate(...).template)."
        )
    return PromptTemplate(template, text_column, label_tokenization)


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    return str(tokenizer.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=False))


def _tokenize(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    # As apply_chat_template(tokenize=True) tokenizes: the chat template writes the special tokens itself.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _shown(text: str) -> str:
    return repr(text.replace(_USER_MARK, "<user message>").replace(_ASSISTANT_MARK, "<assistant message>"))
