"""A data collator for training soft prompts on causal LMs with the stock ``Trainer``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase
from transformers.data.data_collator import DataCollatorMixin
from transformers.utils import logging

from .chat import ChatTemplate, prompt_format
from .prompt import DEFAULT_TEMPLATE, PromptFormat

logger = logging.get_logger(__name__)

__all__ = ["SoftPromptDataCollator"]


@dataclass
class SoftPromptDataCollator(DataCollatorMixin):
    """Builds training batches for prompt tuning, P-tuning and prefix tuning of a causal LM.

    Each row becomes ``input_ids = prompt + target + [eos]`` with ``labels`` equal to ``-100`` on
    the prompt and on padding, and to the token ids on every target token and on the EOS. The first
    target token is therefore predicted from the last prompt position, which is the position
    generation reads first.

    Rows can be:

    - raw rows with a text column and a target column (the label text, e.g. ``"no complaint"``, or a free
      text of any length: a summary, an answer): the prompt is ``template`` filled with the row (``{text}``
      from ``text_column``, any other field from the column of its name) and tokenized on its own, exactly as
      at inference time, and the target's ids are those that every evaluation scores after it (see
      ``label_tokenization`` and :class:`~softprompt_hf.data.prompt.PromptTemplate`);
    - the same raw rows in an instruct model's chat format, with ``template=ChatTemplate(user=...)``
      (:class:`~softprompt_hf.data.chat.ChatTemplate`): the prompt is the tokenizer's ``apply_chat_template`` with the
      row in the user message and the assistant turn opened, and the target ends with the chat template's
      end-of-turn token (``<|im_end|>``, ``<end_of_turn>``, ``<|eot_id|>``) instead of EOS;
    - pre-tokenized rows with ``input_ids`` and ``labels`` (and optionally ``attention_mask``),
      which are only padded.

    Padding is dynamic (to the longest row of the batch, optionally rounded up to
    ``pad_to_multiple_of``) and always on the right, whatever ``tokenizer.padding_side`` says: PEFT
    prepends the virtual tokens to the sequence, and right padding keeps them and the real tokens at
    the same positions as in an unpadded row. The collator never adds virtual tokens, nor their
    attention mask or labels: PEFT does that inside the model.

    Long rows: a target longer than ``max_target_length`` tokens (EOS included) is cut to it first, its EOS (a chat
    template's end-of-turn token) kept, so that the model learns to end within the length evaluation generates (a
    warning says so once; :meth:`count_cut` counts the rows a dataset loses; with ``truncate_targets=False`` such a
    target is an error instead). Then, with ``max_length``, a row still longer than that is shortened by removing tokens
    from the *text* only (the template's :attr:`~softprompt_hf.data.prompt.PromptTemplate.cut_field`: ``{text}``,
    from its end, or from its start when ``tokenizer.truncation_side == "left"``); the template around it,
    the other fields, the target and the EOS are kept whole.

    Args:
        tokenizer: The model's tokenizer. It needs an EOS token and a pad token (reuse EOS:
            ``tokenizer.pad_token = tokenizer.eos_token``; adding a new pad token would resize the
            vocabulary and put the whole embedding matrix into the adapter).
        text_column: Column holding the input text (what ``{text}`` reads).
        target_column: Column holding the text the model must generate: a label, or free text.
        template: Prompt pattern with ``{text}`` and/or other columns' names in braces, optionally
            ``{text_column}``; defaults to the seed guide's ``"{text_column} : {text} Label : "``. Or a
            ``ChatTemplate``, whose ``{text}`` reads this ``text_column``.
        max_length: Maximum length of a row (prompt + target + EOS) in tokens, or ``None``.
        max_target_length: Maximum length of a target in tokens, its EOS included, or ``None`` (targets are
            never cut). At least 2.
        truncate_targets: Cut targets longer than ``max_target_length`` (default), or refuse them.
        pad_to_multiple_of: Round the padded length up to a multiple of this.
        label_pad_token_id: Label value that the loss ignores.
        return_tensors: Only ``"pt"`` is supported.
        label_tokenization: Where the prompt ends and the target begins: ``"joint"`` (default) follows what
            the tokenizer does with the prompt and the label as one text (the template's closing space goes with
            the label, which becomes the model's own word tokens); ``"separate"`` tokenizes them apart, as the
            seed guide did (to reproduce such runs). Evaluate and predict with the same value:
            ``GenerationMetrics`` and the saved adapter's ``softprompt_hf.json`` carry it.

    Example:

    ```python
    >>> from softprompt_hf import SoftPromptDataCollator
    >>> collator = SoftPromptDataCollator(tokenizer)
    >>> batch = collator([{"Tweet text": "@Acme where is my parcel?", "text_label": "complaint"}])
    >>> sorted(batch)
    ['attention_mask', 'input_ids', 'labels']
    >>> tokenizer.decode(batch["input_ids"][0])
    'Tweet text : @Acme where is my parcel? Label : complaint</s>'
    >>> tokenizer.convert_ids_to_tokens(batch["input_ids"][0, -3:].tolist())  # the label: the model's own word
    ['Ġ:', 'Ġcomplaint', '</s>']

    ```

    With the ``Trainer``, keep the raw columns (``TrainingArguments(remove_unused_columns=False)``)
    or pre-tokenize the dataset.
    """

    tokenizer: PreTrainedTokenizerBase
    text_column: str = "Tweet text"
    target_column: str = "text_label"
    template: str | ChatTemplate = DEFAULT_TEMPLATE
    max_length: int | None = None
    pad_to_multiple_of: int | None = None
    label_pad_token_id: int = -100
    return_tensors: str = "pt"
    label_tokenization: str = "joint"
    max_target_length: int | None = None
    truncate_targets: bool = True
    _prompt: PromptFormat = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.return_tensors != "pt":
            raise ValueError(
                f"SoftPromptDataCollator only returns PyTorch tensors; got return_tensors={self.return_tensors!r}."
            )
        # EOS first: without one, "reuse EOS as pad" would be advice that cannot be followed.
        if self.tokenizer.eos_token_id is None:
            pad = "" if self.tokenizer.pad_token_id is not None else " (nor a pad token)"
            raise ValueError(
                f"The tokenizer has no eos_token{pad}: every target ends with EOS so that generation stops after "
                "the label. Set tokenizer.eos_token to the model's end-of-sequence token (the token of "
                "model.config.eos_token_id), then tokenizer.pad_token = tokenizer.eos_token."
            )
        if self.tokenizer.pad_token_id is None:
            raise ValueError(
                "The tokenizer has no pad token. Reuse EOS as pad: `tokenizer.pad_token = tokenizer.eos_token` "
                "(adding a new token would resize the vocabulary and bloat the adapter)."
            )
        for name in ("max_length", "pad_to_multiple_of", "max_target_length"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive integer or None, got {value}.")
        if self.max_target_length is not None and self.max_target_length < 2:
            raise ValueError(
                f"max_target_length={self.max_target_length} leaves no room for a target token before its EOS: "
                "give at least 2, or None for no limit."
            )
        self._prompt = prompt_format(self.template, self.text_column, self.label_tokenization, self.tokenizer)

    def torch_call(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("SoftPromptDataCollator got an empty batch.")
        rows = [self._encode(feature) for feature in features]
        return self._pad(rows)

    def _encode(self, feature: Mapping[str, Any]) -> tuple[list[int], list[int], list[int]]:
        if "input_ids" in feature:
            return self._pretokenized(feature)
        missing = [column for column in self._prompt.columns if column not in feature]
        if missing:
            raise ValueError(self._missing_columns_message(feature, missing))
        text = feature.get(self.text_column) if "text" in self._prompt.fields else None
        if "text" in self._prompt.fields and (not isinstance(text, str) or not text.strip()):
            raise ValueError(
                f"Column {self.text_column!r} must hold non-empty strings, got {text!r}. "
                "Drop or fix such rows before training."
            )
        target = feature.get(self.target_column)
        if target is None:
            raise ValueError(
                f"Row has no {self.target_column!r} (the target text to generate), so it cannot be trained on: "
                f"{dict(feature)!r}. Unlabelled rows belong to prediction, not training; set target_column to the "
                "column holding the label or reference text."
            )
        if not isinstance(target, str) or not target.strip():
            raise ValueError(f"Column {self.target_column!r} must hold non-empty target strings, got {target!r}.")
        target_ids = self._target_ids(target)
        prompt_budget = None
        if self.max_length is not None:
            prompt_budget = self.max_length - len(target_ids)
            if prompt_budget < 1:
                advice = (
                    "Raise max_length, or set max_target_length below it to cut long targets."
                    if self.max_target_length is None
                    else "Raise max_length or lower max_target_length."
                )
                raise ValueError(
                    f"max_length={self.max_length} leaves no room for the prompt: the target {_short(target)} and "
                    f"EOS alone take {len(target_ids)} tokens. {advice}"
                )
        prompt_ids = self._prompt.encode(self.tokenizer, feature, prompt_budget)
        input_ids = prompt_ids + target_ids
        labels = [self.label_pad_token_id] * len(prompt_ids) + target_ids
        return input_ids, [1] * len(input_ids), labels

    def _target_ids(self, target: str) -> list[int]:
        """The target's ids and EOS, cut to ``max_target_length`` (the EOS kept) when it is longer."""
        ids = self._prompt.encode_target(self.tokenizer, target)
        limit = self.max_target_length
        if limit is None or len(ids) <= limit:
            return ids
        if not self.truncate_targets:
            raise ValueError(
                f"The target {_short(target)} takes {len(ids)} tokens with its EOS, more than "
                f"max_target_length={limit}, and truncate_targets is off. Raise max_target_length, drop such rows, "
                "or set truncate_targets=True to cut targets to max_target_length (the EOS kept)."
            )
        logger.warning_once(
            "Targets longer than max_target_length=%d tokens (EOS included) are cut to it, keeping the EOS, so the "
            "model learns to end within that length (the first cut one had %d tokens). "
            "SoftPromptDataCollator.count_cut(rows) counts the rows cut.",
            limit,
            len(ids),
        )
        return [*ids[: limit - 1], ids[-1]]

    def count_cut(self, rows: Any) -> dict[str, int]:
        """How many of ``rows`` (raw rows, as the collator takes them) this collator cuts: ``{"rows", "sources_cut",
        "targets_cut"}``. A source is cut when prompt + target + EOS exceed ``max_length``, a target when it is
        longer than ``max_target_length``. Logs one warning with the counts when any row is cut."""
        counts = {"rows": 0, "sources_cut": 0, "targets_cut": 0}
        for feature in rows:
            counts["rows"] += 1
            target = feature.get(self.target_column)
            if not isinstance(target, str) or not target.strip() or "input_ids" in feature:
                continue
            full = self._prompt.encode_target(self.tokenizer, target)
            ids = full if self.max_target_length is None else full[: self.max_target_length]
            counts["targets_cut"] += len(ids) < len(full)
            if self.max_length is not None:
                prompt = self._prompt.encode(self.tokenizer, feature)
                counts["sources_cut"] += len(prompt) + len(ids) > self.max_length
        if counts["sources_cut"] or counts["targets_cut"]:
            logger.warning(
                "Of %d rows, %d sources are cut to fit max_length=%s and %d targets to max_target_length=%s.",
                counts["rows"],
                counts["sources_cut"],
                self.max_length,
                counts["targets_cut"],
                self.max_target_length,
            )
        return counts

    def _pretokenized(self, feature: Mapping[str, Any]) -> tuple[list[int], list[int], list[int]]:
        input_ids = _as_list(feature["input_ids"])
        if "labels" not in feature:
            raise ValueError(
                "Pre-tokenized rows need 'labels' next to 'input_ids' (-100 on the prompt, the token ids on "
                "the target and EOS). Or pass raw rows with the text and label columns."
            )
        labels = _as_list(feature["labels"])
        mask = _as_list(feature["attention_mask"]) if "attention_mask" in feature else [1] * len(input_ids)
        if not len(input_ids) == len(labels) == len(mask):
            raise ValueError(
                f"Pre-tokenized row has input_ids of length {len(input_ids)}, labels of length {len(labels)} and "
                f"attention_mask of length {len(mask)}; they must be equal (do not pad or offset the labels: "
                "the collator pads, and PEFT adds the virtual tokens' labels)."
            )
        if self.max_length is not None and len(input_ids) > self.max_length:
            raise ValueError(
                f"Pre-tokenized row has {len(input_ids)} tokens, more than max_length={self.max_length}; the "
                "collator cannot tell the text from the target in it. Truncate when tokenizing, or pass raw rows."
            )
        return input_ids, mask, labels

    def _missing_columns_message(self, feature: Mapping[str, Any], missing: list[str]) -> str:
        found = sorted(feature)
        if self.text_column in missing:
            return (
                f"Row has no {self.text_column!r} column and no 'input_ids' (columns found: {found}). If you use "
                "the Trainer, it removed the raw text columns because they are not arguments of the model: set "
                "`TrainingArguments(remove_unused_columns=False)`, or pre-tokenize the dataset into 'input_ids' "
                "and 'labels'. Otherwise set text_column to the name of your text column."
            )
        pattern = self.template if isinstance(self.template, str) else self.template.user
        return (
            f"Prompt template {pattern!r} reads the column(s) {missing}, not found in the row (columns "
            f"found: {found}). Put column names of the data in braces, and '{{text}}' for the text column "
            f"{self.text_column!r}; with the Trainer, keep the raw columns (`remove_unused_columns=False`)."
        )

    def _pad(self, rows: list[tuple[list[int], list[int], list[int]]]) -> dict[str, torch.Tensor]:
        length = max(len(ids) for ids, _, _ in rows)
        if self.pad_to_multiple_of is not None:
            length = -(-length // self.pad_to_multiple_of) * self.pad_to_multiple_of
        pad_id = self.tokenizer.pad_token_id
        input_ids, attention_mask, labels = [], [], []
        for ids, mask, lab in rows:
            missing = length - len(ids)
            input_ids.append(ids + [pad_id] * missing)
            attention_mask.append(mask + [0] * missing)
            labels.append(lab + [self.label_pad_token_id] * missing)
        return {
            "input_ids": torch.tensor(input_ids, dtype=torch.long),
            "attention_mask": torch.tensor(attention_mask, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
        }


def _short(text: str, limit: int = 60) -> str:
    """``text`` quoted, cut to ``limit`` characters for a message."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _as_list(value: Any) -> list[int]:
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.tolist()]
    return [int(v) for v in value]
