"""A data collator for training soft prompts on causal LMs with the stock ``Trainer``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase
from transformers.data.data_collator import DataCollatorMixin

from .prompt import DEFAULT_TEMPLATE, PromptTemplate

__all__ = ["SoftPromptDataCollator"]


@dataclass
class SoftPromptDataCollator(DataCollatorMixin):
    """Builds training batches for prompt tuning, P-tuning and prefix tuning of a causal LM.

    Each row becomes ``input_ids = prompt + target + [eos]`` with ``labels`` equal to ``-100`` on
    the prompt and on padding, and to the token ids on every target token and on the EOS. The first
    target token is therefore predicted from the last prompt position, which is the position
    generation reads first.

    Rows can be:

    - raw rows with a text column and a target column (the label text, e.g. ``"no complaint"``): the
      prompt is ``template`` filled with the text and tokenized on its own, exactly as at inference
      time, and the target's ids are those that every evaluation scores after it (see
      ``label_tokenization`` and :class:`~softprompt_hf.prompt.PromptTemplate`);
    - pre-tokenized rows with ``input_ids`` and ``labels`` (and optionally ``attention_mask``),
      which are only padded.

    Padding is dynamic (to the longest row of the batch, optionally rounded up to
    ``pad_to_multiple_of``) and always on the right, whatever ``tokenizer.padding_side`` says: PEFT
    prepends the virtual tokens to the sequence, and right padding keeps them and the real tokens at
    the same positions as in an unpadded row. The collator never adds virtual tokens, nor their
    attention mask or labels: PEFT does that inside the model.

    With ``max_length``, rows longer than that are shortened by removing tokens from the *text* only
    (its end, or its start when ``tokenizer.truncation_side == "left"``); the template around the
    text, the target and the EOS are always kept whole.

    Args:
        tokenizer: The model's tokenizer. It needs an EOS token and a pad token (reuse EOS:
            ``tokenizer.pad_token = tokenizer.eos_token``; adding a new pad token would resize the
            vocabulary and put the whole embedding matrix into the adapter).
        text_column: Column holding the input text.
        target_column: Column holding the label text the model must generate.
        template: Prompt pattern with ``{text}`` and optionally ``{text_column}``; defaults to the
            seed guide's ``"{text_column} : {text} Label : "``.
        max_length: Maximum length of a row (prompt + target + EOS) in tokens, or ``None``.
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
    template: str = DEFAULT_TEMPLATE
    max_length: int | None = None
    pad_to_multiple_of: int | None = None
    label_pad_token_id: int = -100
    return_tensors: str = "pt"
    label_tokenization: str = "joint"
    _prompt: PromptTemplate = field(init=False, repr=False)

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
        for name in ("max_length", "pad_to_multiple_of"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be a positive integer or None, got {value}.")
        self._prompt = PromptTemplate(self.template, self.text_column, self.label_tokenization)

    def torch_call(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        if not features:
            raise ValueError("SoftPromptDataCollator got an empty batch.")
        rows = [self._encode(feature) for feature in features]
        return self._pad(rows)

    def _encode(self, feature: Mapping[str, Any]) -> tuple[list[int], list[int], list[int]]:
        if "input_ids" in feature:
            return self._pretokenized(feature)
        if self.text_column not in feature:
            raise ValueError(self._missing_columns_message(feature))
        text = feature[self.text_column]
        target = feature.get(self.target_column)
        if not isinstance(text, str) or not text.strip():
            raise ValueError(
                f"Column {self.text_column!r} must hold non-empty strings, got {text!r}. "
                "Drop or fix such rows before training."
            )
        if target is None:
            raise ValueError(
                f"Row has no {self.target_column!r} (the label text to generate), so it cannot be trained on: "
                f"{dict(feature)!r}. Unlabelled rows belong to prediction, not training; set target_column to the "
                "column holding the label text."
            )
        if not isinstance(target, str) or not target.strip():
            raise ValueError(f"Column {self.target_column!r} must hold non-empty label strings, got {target!r}.")
        target_ids = self._prompt.encode_target(self.tokenizer, target)
        prompt_budget = None
        if self.max_length is not None:
            prompt_budget = self.max_length - len(target_ids)
            if prompt_budget < 1:
                raise ValueError(
                    f"max_length={self.max_length} leaves no room for the prompt: the target {target!r} and EOS "
                    f"alone take {len(target_ids)} tokens. Raise max_length."
                )
        prompt_ids = self._prompt.encode(self.tokenizer, text, prompt_budget)
        input_ids = prompt_ids + target_ids
        labels = [self.label_pad_token_id] * len(prompt_ids) + target_ids
        return input_ids, [1] * len(input_ids), labels

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

    def _missing_columns_message(self, feature: Mapping[str, Any]) -> str:
        found = sorted(feature)
        return (
            f"Row has no {self.text_column!r} column and no 'input_ids' (columns found: {found}). If you use "
            "the Trainer, it removed the raw text columns because they are not arguments of the model: set "
            "`TrainingArguments(remove_unused_columns=False)`, or pre-tokenize the dataset into 'input_ids' "
            "and 'labels'. Otherwise set text_column to the name of your text column."
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


def _as_list(value: Any) -> list[int]:
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.tolist()]
    return [int(v) for v in value]
