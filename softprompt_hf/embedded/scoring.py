"""Scores of the plain embedded model behind a text instruction, for its build script and tests: label accuracy
for the label tasks, ROUGE-L for the free-text (describe) task.

The decoding itself is the package's (:func:`softprompt_hf.generate_labels`, :func:`softprompt_hf.generate_texts`)
and so is the ROUGE (:mod:`softprompt_hf.evaluation.text_metrics`); this module only puts an instruction in front of the
seed's template, which is what the model was built to follow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from softprompt_hf.data.prompt import PromptTemplate
from softprompt_hf.embedded.tasks import TEMPLATE
from softprompt_hf.evaluation.text_metrics import load_text_metric
from softprompt_hf.inference.labels import generate_labels as _generate_labels
from softprompt_hf.inference.labels import generate_texts

__all__ = ["generate_labels", "label_accuracy", "text_rouge_l"]


def generate_labels(model, tokenizer, prompts: Sequence[str], max_new_tokens: int) -> list[str]:
    """Greedy continuation of each full prompt string, decoded and stripped."""
    return _generate_labels(
        model, tokenizer, prompts, template=PromptTemplate("{text}"), max_new_tokens=max_new_tokens, show_progress=False
    )


def label_accuracy(
    model,
    tokenizer,
    texts: Sequence[str],
    labels: Sequence[str],
    instruction: str = "",
    template: str = TEMPLATE,
) -> float:
    """Accuracy of greedy generation after ``instruction + template`` against the label texts."""
    predictions = _greedy_outputs(_generate_labels, model, tokenizer, texts, labels, instruction, template)
    return sum(p == y for p, y in zip(predictions, labels, strict=True)) / len(labels)


def text_rouge_l(
    model,
    tokenizer,
    texts: Sequence[str],
    references: Sequence[str],
    instruction: str = "",
    template: str = TEMPLATE,
) -> float:
    """ROUGE-L F1 (0-1) of greedy generation after ``instruction + template`` against the reference texts."""
    outputs = _greedy_outputs(generate_texts, model, tokenizer, texts, references, instruction, template)
    return load_text_metric("rouge").compute(predictions=outputs, references=list(references))["rougeL"]


def _greedy_outputs(
    decode: Callable[..., list[str]],
    model,
    tokenizer,
    texts: Sequence[str],
    targets: Sequence[str],
    instruction: str,
    template: str,
) -> list[str]:
    """``decode``'s greedy outputs after ``instruction + template``, at most one token past the longest target."""
    prompts = [instruction + template.format(text=t) for t in texts]
    longest = max(len(tokenizer(target, add_special_tokens=False)["input_ids"]) for target in set(targets))
    return decode(
        model, tokenizer, prompts, template=PromptTemplate("{text}"), max_new_tokens=longest + 1, show_progress=False
    )
