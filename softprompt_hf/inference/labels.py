"""Decoding and rank scoring of labels: the one engine behind ``GenerationMetrics`` and ``predict``.

Its public functions (all but the last exported from ``softprompt_hf``):

- :func:`generate_texts`: free text after each prompt (a summary, an answer), greedy or through ``generate()``;
- :func:`generate_labels`: the greedy label text after each text's prompt (``mode="generate"``);
- :func:`rank_labels`: the log-likelihood of each label after each text's prompt (``mode="rank"``);
- :func:`constrained_labels`: greedy decoding over the tokens that continue some label (``mode="constrained"``).

The rest is their engine, private: :class:`CachedDecoder` runs the base model with a key/value cache and the soft
prompt placed where peft's training forward places it; :class:`MixedDecoder` runs rows of several adapters on one
base model in the same batches, each with its own soft prompt (:func:`mixed_outputs`, which ``multi.py`` calls);
the greedy loops, the rank scoring, the label trie, the batching helpers and the cache builders (which
``generate.py`` and ``shared_prompt.py`` use too) go with it.
"""

from __future__ import annotations

import contextlib
import inspect
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from peft import PeftModel, PeftType
from tqdm.auto import tqdm
from transformers import DynamicCache, PreTrainedTokenizerBase
from transformers.cache_utils import Cache
from transformers.utils import logging

from ..constants import MODES
from ..core.kv_cache import cache_from_key_values, cache_key_values, prefix_cache
from ..core.upstream import (
    attention_windows,
    cache_argument,
    is_plain_dynamic_cache,
    positions_from_mask,
    prefix_cache_from_peft,
    takes_logits_to_keep,
)
from ..data.prompt import PromptFormat, PromptInput, PromptTemplate
from ..modeling.methods import eval_mode
from .generate import fixes_generate, soft_prompt_generate
from .output_head import ChunkedOutputHead

__all__ = ["constrained_labels", "generate_labels", "generate_texts", "rank_labels"]

logger = logging.get_logger(__name__)

# On a CPU, rows projected onto the vocabulary together in decoding (see CachedDecoder.batches_per_projection).
PROJECTION_ROWS = 128

# Plain greedy decoding through generate(), whatever the base model's generation_config asks for: transformers
# fills every generate() setting left unset from it (e.g. Gemma 3's do_sample=True, top_k=64), and a repetition
# penalty or an n-gram ban would change the greedy tokens.
_GREEDY: dict[str, Any] = {
    "do_sample": False,
    "num_beams": 1,
    "num_return_sequences": 1,
    "repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "min_length": 0,
    "use_cache": True,  # prefix tuning needs the cache (use_cache=False fails at the second step)
}


def generate_texts(
    model: torch.nn.Module | Mapping[str, Any],
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[PromptInput],
    *,
    template: PromptFormat | None = None,
    max_new_tokens: int | None = None,
    max_prompt_tokens: int | None = None,
    batch_size: int = 32,
    show_progress: bool = True,
    use_cache: bool = True,
    use_generate: bool = False,
    generation_kwargs: dict[str, Any] | None = None,
    adapter_names: Sequence[str] | None = None,
) -> list[str]:
    """Generates free text (a summary, an answer, a rewrite) after each input's prompt.

    What ``TextGenerationMetrics`` and ``predict`` run for a text task. Each row stops at its own EOS (with a
    ``ChatTemplate``, also at its end-of-turn token) or after
    ``max_new_tokens``; a batch stops once all its rows have stopped. Greedy decoding runs on the engine
    :func:`generate_labels` runs on: the soft prompt placed where peft's training forward places it (virtual token
    embeddings in front of the prompt's, or prefix tuning's key/values as the initial cache), prompts padded on
    the right with each row's own positions, sliding windows respected, a key/value cache, and the vocabulary
    projected a chunk at a time. Batched outputs equal one-by-one greedy decoding. Memory depends on
    ``batch_size`` and the lengths, not on how many texts there are: only the generated ids are kept.

    Beam search and sampling go through ``model.generate()`` (made right for a soft prompt by
    :func:`~softprompt_hf.soft_prompt_generate` for the call): pass them as ``generation_kwargs``, e.g.
    ``{"num_beams": 4}`` or ``{"do_sample": True, "top_p": 0.9}`` (seed with ``transformers.set_seed``). Any setting
    not given there is plain greedy decoding, whatever the model's ``generation_config`` says.

    Args:
        model: A causal LM, with or without a soft prompt (a ``PeftModel``).
        tokenizer: The model's tokenizer.
        texts: Inputs: texts for a template whose only field is ``{text}``, or rows (mappings of column names to
            values) holding the template's columns (``"Title : {title} Abstract : {abstract} Summary : "``).
        template (`PromptTemplate` or `ChatTemplate`, *optional*): The prompt used in training (default: the seed
            guide's template); a ``ChatTemplate`` stops decoding at its end-of-turn token.
        max_new_tokens (`int`, *optional*): The most tokens generated per row, EOS included (training's
            ``max_target_length`` is the natural value); default 64 (several adapters: each one's own budget).
        max_prompt_tokens (`int`, *optional*): Cut the template's cut field (never the template) so prompts fit.
        batch_size (`int`, defaults to 32): Prompts per forward pass (per ``generate()`` call with
            ``use_generate``).
        show_progress (`bool`, defaults to `True`): Show a progress bar.
        use_cache (`bool`, defaults to `True`): Decode with a key/value cache, or rerun the full forward at each
            step (this module's decoder only).
        use_generate (`bool`, defaults to `False`): Decode greedily through ``model.generate()`` instead of this
            module's decoder (the same tokens).
        generation_kwargs (`dict`, *optional*): ``generate()`` settings for beam search or sampling; implies
            ``use_generate``. ``num_return_sequences`` must stay 1.

        adapter_names (`list[str]`, *optional*): With several adapters loaded on one base model
            (:func:`~softprompt_hf.load_adapters` as ``model``, ``None`` as ``tokenizer``), each row's adapter: rows
            of different adapters share batches, each with its own soft prompt, template, labels and stop tokens
            (:func:`~softprompt_hf.serving.multi.predict_adapters`).
    Returns:
        For each input, the generated text: special tokens removed, surrounding whitespace stripped.

    Example:

    ```python
    >>> from softprompt_hf import PromptTemplate, generate_texts
    >>> template = PromptTemplate("Title : {title} Summary : ")
    >>> generate_texts(model, tokenizer, [{"title": "Soft prompts at scale"}], template=template, max_new_tokens=8,
    ...                show_progress=False)  # doctest: +SKIP
    ['Prompt tuning matches fine-tuning']

    ```
    """
    if isinstance(model, Mapping):
        refused = {"template": template, "generation_kwargs": generation_kwargs, "use_generate": use_generate or None}
        options = {
            "max_prompt_tokens": max_prompt_tokens,
            "batch_size": batch_size,
            "show_progress": show_progress,
            "max_new_tokens": max_new_tokens,
        }
        several = _predict_several(model, tokenizer, texts, adapter_names, "generate", refused, use_cache, options)
        return [p.output for p in several]
    _single_model(adapter_names)
    max_new_tokens = 64 if max_new_tokens is None else max_new_tokens
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}.")
    settings = check_generation_kwargs(generation_kwargs)
    ids = generate_label_ids(
        model,
        tokenizer,
        texts,
        template=template,
        max_new_tokens=max_new_tokens,
        max_prompt_tokens=max_prompt_tokens,
        batch_size=batch_size,
        show_progress=show_progress,
        use_cache=use_cache,
        use_generate=use_generate or bool(settings),
        generation_kwargs=settings,
        description="Generating texts",
    )
    return decode_outputs(tokenizer, ids, (template or PromptTemplate()).stop_ids(tokenizer))


def _predict_several(
    model: Mapping[str, Any],
    tokenizer: PreTrainedTokenizerBase | None,
    texts: Sequence[PromptInput],
    adapter_names: Sequence[str] | None,
    mode: str,
    refused: dict[str, Any],
    use_cache: bool,
    options: dict[str, Any],
) -> list[Any]:
    """For the decoding functions given several adapters (``load_adapters``): their ``predict`` in ``mode`` with
    ``options`` (the rows' predictions), after refusing what each adapter brings itself (``refused``: the arguments
    given, by name)."""
    predict = getattr(model, "predict", None)
    if predict is None:
        raise TypeError(
            f"Several adapters are decoded as load_adapters({{name: adapter, ...}}) returns them, not a "
            f"{type(model).__name__}."
        )
    if tokenizer is not None:
        raise ValueError("With several adapters each uses its own tokenizer: pass None as the tokenizer.")
    given = [name for name, value in refused.items() if value is not None] + ([] if use_cache else ["use_cache=False"])
    if given:
        raise ValueError(
            f"With several adapters each row's settings come from its own adapter's softprompt_hf.json; "
            f"{', '.join(given)} cannot be passed with them."
        )
    return list(predict(texts, adapter_names, mode=mode, **options))


def _single_model(adapter_names: Sequence[str] | None) -> None:
    if adapter_names is not None:
        raise ValueError(
            "adapter_names= is for several adapters loaded together with load_adapters({name: adapter, ...}) and "
            "passed as the model; this is a single model."
        )


def check_generation_kwargs(generation_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """A copy of ``generation_kwargs`` (``{}`` for None), refused where it sets what :func:`generate_texts` sets
    itself or asks for several outputs per input."""
    settings = dict(generation_kwargs or {})
    for name in ("input_ids", "attention_mask", "inputs_embeds", "max_new_tokens", "eos_token_id", "pad_token_id"):
        if name in settings:
            raise ValueError(
                f"generation_kwargs sets {name!r}, which generate_texts sets itself; pass max_new_tokens as an "
                "argument, and the inputs as texts."
            )
    if settings.get("num_return_sequences", 1) != 1:
        raise ValueError(
            "generation_kwargs asks for num_return_sequences="
            f"{settings['num_return_sequences']}: generate_texts returns one text per input. Call it once per "
            "sample (with do_sample=True), or model.generate() directly for several."
        )
    return settings


def generate_labels(
    model: torch.nn.Module | Mapping[str, Any],
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    labels: Sequence[str] | None = None,
    *,
    template: PromptFormat | None = None,
    max_new_tokens: int | None = None,
    max_prompt_tokens: int | None = None,
    batch_size: int = 32,
    show_progress: bool = True,
    use_cache: bool = True,
    use_generate: bool = False,
    adapter_names: Sequence[str] | None = None,
) -> list[str]:
    """Greedily generates the label text after each input's prompt.

    What ``GenerationMetrics(mode="generate")`` and ``predict(mode="generate")`` run. Decoding stops at EOS (with a
    ``ChatTemplate``, also at its end-of-turn token) or one
    token past the longest of ``labels`` (or after ``max_new_tokens``); match the outputs to the label set with
    :func:`~softprompt_hf.evaluation.metrics.match_label`.

    By default decoding does not go through ``generate()`` but through this module's decoder, built for
    evaluation's throughput. peft 0.21.2's ``PeftModel.generate`` with a soft prompt returns tokens other than the
    model's own greedy choice on transformers 5.24; ``enable_soft_prompt_generate`` fixes it (``use_generate=True``
    decodes that way, as ``predict`` does), and both give the same labels. The decoder is the default because it
    is faster: on 160 rows (one CPU thread, batches of 32) it labels 1.1-1.5x the rows/s of the fixed
    ``generate()`` on the 4 MB embedded model and 2.3-2.7x on a Bloom with bloomz' 250,880-token vocabulary, with
    the same labels on every row (``benchmarks/engine_vs_generate.py``, ``benchmarks/RESULTS.md`` section 8).

    The soft prompt is put where peft's training forward puts it (the virtual token embeddings in front of the
    prompt's, or prefix tuning's key/values as the initial cache) and the base model is run with a key/value cache,
    so each new token costs one position instead of the whole sequence. ``use_cache=False`` runs the model's full
    training forward on the whole sequence at every step instead; both give the same tokens (tested for the three
    methods on GPT-2, Llama, Bloom, and Mistral and Gemma 3 with small sliding windows).

    Batched results equal one-by-one results. Left padding, as ``generate()`` uses, would put pads between the
    virtual tokens and the text and shift positions with prompt tuning and P-tuning; instead, with the cache,
    prompts are sorted by length and padded on the right, the padding is masked out, and each row's new
    tokens get the positions that follow its own prompt (for models that take ``position_ids`` or, like Bloom,
    derive positions from the attention mask; other models, and ``use_cache=False``, batch prompts of equal
    length only, with no padding at all). transformers places a sliding window (Mistral, Gemma's local layers) by
    cache slot, so pads would take the place of a row's own tokens in it: there, prompts of different lengths
    share a batch only while the virtual tokens, the longest prompt and the new tokens fit in the smallest window,
    and longer prompts are batched by equal length (logged once: past the window, those layers no longer attend
    to the whole soft prompt, in training as here).

    The greedy token is the argmax of the output layer's projection onto the vocabulary, computed a chunk of the
    vocabulary at a time without materialising the logits
    (:class:`~softprompt_hf.inference.output_head.ChunkedOutputHead`, where the model's logits are that layer's plain
    output). On a CPU, batches decode in step in groups of about 128 rows, whose positions are projected together (the
    forward passes keep ``batch_size`` rows).

    Args:
        model: A causal LM, with or without a soft prompt (a ``PeftModel``).
        tokenizer: The model's tokenizer.
        texts: Input texts.
        labels: The label texts: decoding stops at EOS or one token past the longest label's tokens.
        template (`PromptTemplate` or `ChatTemplate`, *optional*): The prompt used in training (default: the seed
            guide's template); a ``ChatTemplate`` stops decoding at its end-of-turn token.
        max_new_tokens (`int`, *optional*): Decoding stops at EOS or after this many tokens (default: from
            ``labels``; without them, 4).
        max_prompt_tokens (`int`, *optional*): Truncate the text (never the template) so the prompt fits.
        batch_size (`int`, defaults to 32): Prompts per forward pass (per ``generate()`` call with
            ``use_generate``).
        show_progress (`bool`, defaults to `True`): Show a progress bar.
        use_cache (`bool`, defaults to `True`): Decode with a key/value cache, or rerun the full forward at each
            step (this module's decoder only).
        use_generate (`bool`, defaults to `False`): Decode through ``model.generate()`` (greedy, batches padded on
            the left, made right for a soft prompt by ``soft_prompt_generate`` for the call) instead of this
            module's decoder. A prompt-learning adapter that fix does not cover (multitask prompt tuning, CPT)
            keeps the decoder.

        adapter_names (`list[str]`, *optional*): With several adapters loaded on one base model
            (:func:`~softprompt_hf.load_adapters` as ``model``, ``None`` as ``tokenizer``), each row's adapter: rows
            of different adapters share batches, each with its own soft prompt, template, labels and stop tokens
            (:func:`~softprompt_hf.serving.multi.predict_adapters`).
    Returns:
        For each text, the generated tokens decoded, special tokens removed, stripped.
    """
    if isinstance(model, Mapping):
        refused = {"labels": labels, "template": template, "max_new_tokens": max_new_tokens}
        refused["use_generate"] = use_generate or None
        options = {"max_prompt_tokens": max_prompt_tokens, "batch_size": batch_size, "show_progress": show_progress}
        several = _predict_several(model, tokenizer, texts, adapter_names, "generate", refused, use_cache, options)
        return [p.output for p in several]
    _single_model(adapter_names)
    if max_new_tokens is None:
        # EOS, or one token past the longest label: its ids as training saw them, EOS included.
        lengths = [len((template or PromptTemplate()).encode_target(tokenizer, label)) for label in labels or ()]
        max_new_tokens = max(lengths) if lengths else 4
    ids = generate_label_ids(
        model,
        tokenizer,
        texts,
        template=template,
        max_new_tokens=max_new_tokens,
        max_prompt_tokens=max_prompt_tokens,
        batch_size=batch_size,
        show_progress=show_progress,
        use_cache=use_cache,
        use_generate=use_generate,
    )
    return decode_outputs(tokenizer, ids, (template or PromptTemplate()).stop_ids(tokenizer))


@torch.no_grad()
def generate_label_ids(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[PromptInput],
    *,
    template: PromptFormat | None = None,
    max_new_tokens: int = 4,
    max_prompt_tokens: int | None = None,
    batch_size: int = 32,
    show_progress: bool = True,
    use_cache: bool = True,
    use_generate: bool = False,
    generation_kwargs: dict[str, Any] | None = None,
    description: str = "Generating labels",
) -> list[list[int]]:
    """The token ids of :func:`generate_labels` and :func:`generate_texts` (same keyword arguments), before
    decoding: for each text, the generated ids, up to and including the stop token (EOS; a chat template's
    end-of-turn token) if one was generated."""
    template = template or PromptTemplate()
    stops = template.stop_ids(tokenizer)
    stop_set = frozenset(stops)
    encoded = [template.encode(tokenizer, text, max_prompt_tokens) for text in texts]
    if generation_kwargs and generate_is_wrong(model):
        raise ValueError(
            f"generation_kwargs {sorted(generation_kwargs)} need model.generate(), which gives wrong tokens for this "
            f"{type(prompt_learning_config(model)).__name__} adapter; only greedy decoding (no generation_kwargs) "
            "is right for it."
        )
    if use_generate and not generate_is_wrong(model):
        return generate_with_model(
            model, tokenizer, encoded, max_new_tokens, batch_size, show_progress, generation_kwargs, description, stops
        )
    with eval_mode(model):  # no dropout; every module gets its own mode back, also on errors
        device = next(model.parameters()).device
        decoder = CachedDecoder(model, encoded) if use_cache and CachedDecoder.supports(model) else None
        extra = {"logits_to_keep": 1} if supports_logits_to_keep(model) else {}
        # Every generated token but the last is fed back after its prompt.
        if decoder is not None:
            batches = decoder.batches(encoded, batch_size, new_tokens=max_new_tokens - 1)
        else:
            batches = equal_length_batches(encoded, batch_size)
        outputs: list[list[int]] = [[] for _ in texts]
        per_group = decoder.batches_per_projection(batch_size) if decoder is not None else 1
        with tqdm(total=len(batches), desc=description, disable=not show_progress) as progress:
            for start in range(0, len(batches), per_group):
                group = batches[start : start + per_group]
                if decoder is not None:
                    rows = greedy_with_cache(
                        decoder,
                        [[encoded[i] for i in batch] for batch in group],
                        [[max_new_tokens] * len(batch) for batch in group],
                        [[stop_set] * len(batch) for batch in group],
                    )
                else:
                    rows = [
                        greedy_full_forward(model, [encoded[i] for i in batch], max_new_tokens, stops, extra, device)
                        for batch in group
                    ]
                for index, row in zip(
                    (i for batch in group for i in batch), (r for part in rows for r in part), strict=True
                ):
                    outputs[index] = cut_at_stop(row, stops)
                progress.update(len(group))
    return outputs


@torch.no_grad()
def rank_labels(
    model: torch.nn.Module | Mapping[str, Any],
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    labels: Sequence[str] | None = None,
    *,
    template: PromptFormat | None = None,
    max_prompt_tokens: int | None = None,
    batch_size: int = 32,
    show_progress: bool = True,
    use_cache: bool = True,
    adapter_names: Sequence[str] | None = None,
) -> list[dict[str, float]]:
    """Log-likelihood of each label's tokens and EOS (with a ``ChatTemplate``: its end-of-turn token) after each
    text's prompt.

    Scores depend on batching only through float rounding (another batch size is another matrix-product
    shape: about 1e-5 apart in float32). With ``use_cache`` (the default) each prompt is run once, with the soft
    prompt placed as peft's training forward places it, and all labels are scored from its key/value cache
    in one more forward pass over the label tokens only; prompts of different lengths share a batch where
    the model can be given each token's position (see :func:`generate_labels`).
    ``use_cache=False`` runs the model's training forward on every prompt + label sequence instead (equal
    lengths batched without padding), keeping only the logits of the label positions (``logits_to_keep``).
    Both give the same scores up to float rounding.

    Args:
        model: A causal LM, with or without a soft prompt (a ``PeftModel``).
        tokenizer: The model's tokenizer.
        texts: Input texts.
        labels: The label texts to score (each followed by EOS).
        template (`PromptTemplate` or `ChatTemplate`, *optional*): The prompt used in training (default: the seed
            guide's template); a ``ChatTemplate`` stops decoding at its end-of-turn token.
        max_prompt_tokens (`int`, *optional*): Truncate the text (never the template) so the prompt fits.
        batch_size (`int`, defaults to 32): Prompts per forward pass.
        show_progress (`bool`, defaults to `True`): Show a progress bar.
        use_cache (`bool`, defaults to `True`): Score from each prompt's key/value cache, or run the full forward
            on every prompt + label sequence.

        adapter_names (`list[str]`, *optional*): With several adapters loaded on one base model
            (:func:`~softprompt_hf.load_adapters` as ``model``, ``None`` as ``tokenizer``), each row's adapter: rows
            of different adapters share batches, each with its own soft prompt, template, labels and stop tokens
            (:func:`~softprompt_hf.serving.multi.predict_adapters`).
    Returns:
        For each text, ``{label: log-likelihood}`` (float32 sums of the label tokens' and the EOS's
        log-probabilities); the predicted label is the one with the highest.
    """
    if isinstance(model, Mapping):
        refused = {"labels": labels, "template": template}
        options = {"max_prompt_tokens": max_prompt_tokens, "batch_size": batch_size, "show_progress": show_progress}
        several = _predict_several(model, tokenizer, texts, adapter_names, "rank", refused, use_cache, options)
        return [p.scores for p in several]
    _single_model(adapter_names)
    if labels is None:
        raise ValueError("rank_labels needs the label texts: labels=['complaint', 'no complaint'], say.")
    template = template or PromptTemplate()
    label_ids = [template.encode_target(tokenizer, label) for label in labels]
    prompts = [template.encode(tokenizer, text, max_prompt_tokens) for text in texts]
    with eval_mode(model):  # no dropout; every module gets its own mode back, also on errors
        if use_cache and CachedDecoder.supports(model):
            scores = rank_with_shared_prompt(model, prompts, label_ids, batch_size, show_progress)
        else:
            scores = rank_full_sequences(model, prompts, label_ids, batch_size, show_progress)
    return [dict(zip(labels, row, strict=True)) for row in scores]


@torch.no_grad()
def constrained_labels(
    model: torch.nn.Module | Mapping[str, Any],
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    labels: Sequence[str] | None = None,
    *,
    template: PromptFormat | None = None,
    max_prompt_tokens: int | None = None,
    batch_size: int = 32,
    show_progress: bool = True,
    use_cache: bool = True,
    adapter_names: Sequence[str] | None = None,
) -> list[str]:
    """Greedy decoding restricted to the labels: at each step, the highest-scoring token among those that
    continue some label's tokens (``mode="constrained"``).

    The labels' token ids, each followed by EOS (a ``ChatTemplate``'s end-of-turn token) and tokenized as training
    and :func:`rank_labels` tokenize them
    (the template's ``label_tokenization``), form a prefix tree. After the prompt, and after each chosen token,
    only the tree's next tokens are candidates; decoding stops as soon as the tokens so far leave a single label
    (``["complaint", "no complaint"]``: after the prompt alone), and where one label's tokens are a prefix of
    another's, EOS competes with the longer label's next token. The answer is therefore always a label.

    How it differs from the other modes:

    - ``"generate"`` takes the argmax over the whole vocabulary. Wherever its tokens are exactly a label's
      tokens (and EOS), that token was a candidate at every step, so this mode picks the same label (up to the
      float rounding of a projection of another shape on near-ties). Where greedy decoding leaves the labels
      (an invalid answer, another casing or tokenization of a label), this mode still answers the label that
      the model's greedy path prefers.
    - ``"rank"`` compares each label's whole log-likelihood (every token and EOS); this mode commits to the
      best next token at each step, so they differ where a label whose first token scores lower has the higher
      total (with one-token labels: where the EOS terms reverse the first tokens' order).
    - Cost: one forward of the prompts, then one one-token step per tree level that still separates labels, and
      at each step only the candidate tokens' rows of the output layer are computed (a few rows instead of a
      262k-row vocabulary; where the model's logits are not that layer's plain output, soft-capping aside, the
      model's own logits are used instead). Batching is :func:`generate_labels`', so labels do not depend on
      ``batch_size``.

    Args:
        model: A causal LM, with or without a soft prompt (a ``PeftModel``).
        tokenizer: The model's tokenizer.
        texts: Input texts.
        labels: The label texts; two labels may not have the same token ids.
        template (`PromptTemplate` or `ChatTemplate`, *optional*): The prompt used in training (default: the seed
            guide's template); a ``ChatTemplate`` stops decoding at its end-of-turn token.
        max_prompt_tokens (`int`, *optional*): Truncate the text (never the template) so the prompt fits.
        batch_size (`int`, defaults to 32): Prompts per forward pass.
        show_progress (`bool`, defaults to `True`): Show a progress bar.
        use_cache (`bool`, defaults to `True`): Decode with a key/value cache, or rerun the full forward at each
            step (equal-length prompts batched); both give the same labels.

        adapter_names (`list[str]`, *optional*): With several adapters loaded on one base model
            (:func:`~softprompt_hf.load_adapters` as ``model``, ``None`` as ``tokenizer``), each row's adapter: rows
            of different adapters share batches, each with its own soft prompt, template, labels and stop tokens
            (:func:`~softprompt_hf.serving.multi.predict_adapters`).
    Returns:
        For each text, one of ``labels``.
    """
    if isinstance(model, Mapping):
        refused = {"labels": labels, "template": template}
        options = {"max_prompt_tokens": max_prompt_tokens, "batch_size": batch_size, "show_progress": show_progress}
        several = _predict_several(model, tokenizer, texts, adapter_names, "constrained", refused, use_cache, options)
        return [p.output for p in several]
    _single_model(adapter_names)
    if labels is None:
        raise ValueError("constrained_labels needs the label texts: labels=['complaint', 'no complaint'], say.")
    template = template or PromptTemplate()
    trie = LabelTrie(
        labels, [template.encode_target(tokenizer, label) for label in labels], template.stop_ids(tokenizer)
    )
    if trie.settled[0] is not None:  # a single label: nothing to decide
        return [trie.settled[0]] * len(texts)
    prompts = [template.encode(tokenizer, text, max_prompt_tokens) for text in texts]
    outputs: list[str] = [""] * len(texts)
    with eval_mode(model):  # no dropout; every module gets its own mode back, also on errors
        device = next(model.parameters()).device
        decoder = None
        if use_cache and CachedDecoder.supports(model):
            decoder = CachedDecoder(model, prompts, softcapped_head=True)
            # A label's tokens but its EOS are fed at most.
            batches = decoder.batches(prompts, batch_size, new_tokens=trie.depth - 1)
            per_group = decoder.batches_per_projection(batch_size)
        else:
            batches, per_group = equal_length_batches(prompts, batch_size), 1
        extra = {"logits_to_keep": 1} if supports_logits_to_keep(model) else {}
        with tqdm(total=len(batches), desc="Decoding labels", disable=not show_progress) as progress:
            for start in range(0, len(batches), per_group):
                group = batches[start : start + per_group]
                if decoder is not None:
                    rows = constrained_with_cache(
                        decoder,
                        [[trie] * len(batch) for batch in group],
                        [[prompts[i] for i in batch] for batch in group],
                    )
                else:
                    rows = [
                        constrained_full_forward(model, trie, [prompts[i] for i in batch], extra, device)
                        for batch in group
                    ]
                for index, label in zip(
                    (i for batch in group for i in batch), (r for part in rows for r in part), strict=True
                ):
                    outputs[index] = label
                progress.update(len(group))
    return outputs


class LabelTrie:
    """The labels' token ids (each ending with a stop token) as a prefix tree: node 0 is the root,
    ``children[node]`` maps each token that continues some label from there to its node, and ``settled[node]`` is
    the label every path from ``node`` leads to, if only one does (then decoding can stop: the rest is forced)."""

    def __init__(self, labels: Sequence[str], label_ids: Sequence[Sequence[int]], stops: Sequence[int]) -> None:
        if not labels:
            raise ValueError("Constrained decoding needs at least one label to decode.")
        self.children: list[dict[int, int]] = [{}]
        leaves: dict[int, str] = {}
        for label, ids in zip(labels, label_ids, strict=True):
            if any(token in stops for token in ids[:-1]):
                raise ValueError(
                    f"Label {label!r} tokenizes to ids holding a stop token (EOS, or a chat template's end-of-turn "
                    "token) before its end: decoding would stop inside it. Remove that token's text from the label."
                )
            node = 0
            for token in ids:
                if token not in self.children[node]:
                    self.children[node][token] = len(self.children)
                    self.children.append({})
                node = self.children[node][token]
            if node in leaves:
                raise ValueError(
                    f"Labels {leaves[node]!r} and {label!r} have the same token ids, so no decoding can tell them "
                    "apart; make the labels differ in more than what the tokenizer normalises away."
                )
            leaves[node] = label
        self.depth = max((len(ids) for ids in label_ids), default=0)
        # Nodes are numbered after their parents: children are settled first.
        self.settled: list[str | None] = [None] * len(self.children)
        for node in reversed(range(len(self.children))):
            following = list(self.children[node].values())
            if not following:
                self.settled[node] = leaves[node]
            elif len(following) == 1:
                self.settled[node] = self.settled[following[0]]

    def choose(self, nodes: Sequence[int], token_logits: Any, device: torch.device) -> list[int]:
        """For rows at ``nodes``, the next token: among the node's children, the one of highest logit, and of
        them the lowest token id on a tie, as an argmax over the vocabulary picks. ``token_logits(tokens)``
        returns each row's logits of the 1-D ``tokens``."""
        return choose_tokens([(self, node) for node in nodes], token_logits, device)


def choose_tokens(rows: Sequence[tuple[LabelTrie, int]], token_logits: Any, device: torch.device) -> list[int]:
    """:meth:`LabelTrie.choose` for rows that each walk a trie of their own (``(trie, node)`` per row: rows of
    several adapters); the candidates of all rows are projected together."""
    union = sorted({token for trie, node in rows for token in trie.children[node]})
    tokens = torch.tensor(union, device=device)
    allowed = torch.tensor([[token in trie.children[node] for token in union] for trie, node in rows], device=device)
    logits = token_logits(tokens).masked_fill(~allowed, -torch.inf)
    return tokens[logits.argmax(dim=-1)].tolist()


def constrained_with_cache(
    decoder: CachedDecoder | MixedDecoder,
    tries: Sequence[Sequence[LabelTrie]],
    batches: Sequence[Sequence[Any]],
) -> list[list[str]]:
    """Constrained greedy labels for a group of batches decoded in step, with the cache (as
    :func:`greedy_with_cache`: the batches' last positions are projected together, onto the candidate tokens'
    rows only); ``tries[b][r]`` is row ``r`` of batch ``b``'s label trie. A row leaves its batch once its label is
    settled."""
    states: list[DecodingState | None] = [decoder.start(prompts) for prompts in batches]
    outputs: list[list[str]] = [[""] * len(prompts) for prompts in batches]
    rows = [list(range(len(prompts))) for prompts in batches]  # per batch, the prompt each row of its state holds
    nodes = [[0] * len(prompts) for prompts in batches]  # per batch, each row's node in its trie
    while True:
        live = [(b, state) for b, state in enumerate(states) if state is not None]
        if not live:
            return outputs
        hidden = join_rows([state.last for _, state in live])
        chosen = choose_tokens(
            [(tries[b][row], node) for b, _ in live for row, node in zip(rows[b], nodes[b], strict=True)],
            lambda tokens, hidden=hidden: decoder.token_logits(hidden, tokens),
            hidden.device,
        )
        offset = 0
        for b, state in live:
            tokens, offset = chosen[offset : offset + len(rows[b])], offset + len(rows[b])
            going = []
            for i, (row, node, token) in enumerate(zip(rows[b], nodes[b], tokens, strict=True)):
                trie = tries[b][row]
                child = trie.children[node][token]
                label = trie.settled[child]
                if label is None:
                    going.append(i)
                    nodes[b][i] = child
                else:
                    outputs[b][row] = label
            if not going:
                states[b] = None
                continue
            next_tokens = torch.tensor([tokens[i] for i in going], device=hidden.device)
            if len(going) < len(rows[b]):
                state.select_rows(torch.tensor(going, device=hidden.device))
                rows[b] = [rows[b][i] for i in going]
                nodes[b] = [nodes[b][i] for i in going]
            state.feed(next_tokens[:, None])


def constrained_full_forward(
    model: torch.nn.Module,
    trie: LabelTrie,
    prompts: Sequence[Sequence[int]],
    extra: dict[str, Any],
    device: torch.device,
) -> list[str]:
    """Constrained greedy labels for one batch of equal-length prompts, running the model's full forward on the
    whole sequence at every step (no cache), from the model's own logits."""
    sequences = torch.tensor([list(ids) for ids in prompts], device=device)
    outputs = [""] * len(prompts)
    rows, nodes = list(range(len(prompts))), [0] * len(prompts)
    while rows:
        logits = model(input_ids=sequences, attention_mask=torch.ones_like(sequences), **extra).logits[:, -1]
        tokens = trie.choose(nodes, lambda allowed, logits=logits: logits[:, allowed], device)
        going = []
        for i, (row, node, token) in enumerate(zip(rows, nodes, tokens, strict=True)):
            child = trie.children[node][token]
            if trie.settled[child] is None:
                going.append(i)
                nodes[i] = child
            else:
                outputs[row] = trie.settled[child]  # type: ignore[assignment]
        keep = torch.tensor(going, device=device, dtype=torch.long)
        sequences = torch.cat([sequences[keep], torch.tensor(tokens, device=device)[keep][:, None]], dim=1)
        rows, nodes = [rows[i] for i in going], [nodes[i] for i in going]
    return outputs


def label_outputs(
    mode: str,
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    labels: Sequence[str],
    *,
    use_generate: bool = False,
    **options: Any,
) -> tuple[list[str], list[dict[str, float] | None]]:
    """What ``GenerationMetrics`` and ``predict`` score in ``mode``: :func:`generate_labels`' outputs (no scores),
    :func:`rank_labels`' best label and its scores, or :func:`constrained_labels`' labels (no scores).
    ``options``: the keyword arguments all three take."""
    if mode == "generate":
        outputs = generate_labels(model, tokenizer, texts, labels, use_generate=use_generate, **options)
        return outputs, [None] * len(outputs)
    if mode == "constrained":
        outputs = constrained_labels(model, tokenizer, texts, labels, **options)
        return outputs, [None] * len(outputs)
    if mode == "rank":
        ranked = rank_labels(model, tokenizer, texts, labels, **options)
        return [max(scores, key=scores.__getitem__) for scores in ranked], list(ranked)
    raise ValueError(f"Unknown mode {mode!r}; choose one of {list(MODES)}.")


def rank_with_shared_prompt(
    model: torch.nn.Module, prompts: list[list[int]], label_ids: list[list[int]], batch_size: int, show_progress: bool
) -> list[list[float]]:
    """Scores from each prompt's key/value cache: one forward pass over the label tokens after the prompt."""
    device = next(model.parameters()).device
    decoder = CachedDecoder(model, prompts)
    n_labels = len(label_ids)
    longest = max(len(ids) for ids in label_ids)
    # Row i * n_labels + j continues prompt i with label j's tokens but its last (the EOS, which is only
    # predicted); shorter labels are padded at the end, where causal attention hides the padding from the
    # positions that are scored, and no logits are computed for the padding.
    continuations = torch.tensor([ids[:-1] + [ids[-1]] * (longest - len(ids)) for ids in label_ids], device=device)
    scored = torch.tensor([[p < len(ids) - 1 for p in range(longest - 1)] for ids in label_ids], device=device)
    first_tokens = torch.tensor([ids[0] for ids in label_ids], device=device)
    # The scored positions of one prompt's rows in order: the token each predicts, and its label.
    targets = torch.tensor([token for ids in label_ids for token in ids[1:]], device=device)
    owners = torch.tensor([j for j, ids in enumerate(label_ids) for _ in ids[1:]], device=device)
    scores: list[list[float]] = [[] for _ in prompts]
    batches = decoder.batches(prompts, batch_size, new_tokens=longest - 1)  # all label tokens but the EOS are fed
    per_group = decoder.batches_per_projection(batch_size)
    with tqdm(total=len(batches), desc="Ranking labels", disable=not show_progress) as progress:
        for start in range(0, len(batches), per_group):
            group = batches[start : start + per_group]
            states = [decoder.start([prompts[i] for i in batch]) for batch in group]
            # The last prompt position predicts every label's first token: one projection for the group's rows.
            rows = sum(len(batch) for batch in group)
            first = decoder.log_probs(join_rows([state.last for state in states]), first_tokens.expand(rows, -1))
            label_outputs = []
            for batch in group:
                state = states.pop(0)  # released once its label tokens have run
                state.repeat_rows(n_labels)
                mask = scored.repeat(len(batch), 1)
                label_outputs.append(state.feed(continuations.repeat(len(batch), 1), logits_to_keep=mask))
            # Every scored label position of the group, projected together too.
            picked = decoder.log_probs(join_rows(label_outputs), targets.repeat(rows)[:, None]).view(rows, -1)
            totals = first.index_add(1, owners, picked)
            for index, row in zip((i for batch in group for i in batch), totals.tolist(), strict=True):
                scores[index] = row
            progress.update(len(group))
    return scores


def rank_full_sequences(
    model: torch.nn.Module, prompts: list[list[int]], label_ids: list[list[int]], batch_size: int, show_progress: bool
) -> list[list[float]]:
    """Scores from the model's training forward on every prompt + label sequence (equal lengths batched)."""
    groups: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
    for t, prompt in enumerate(prompts):
        for j, target in enumerate(label_ids):
            groups[(len(prompt), len(target))].append((t, j))
    batches = [
        (n_target, pairs[start : start + batch_size])
        for (_, n_target), pairs in sorted(groups.items())
        for start in range(0, len(pairs), batch_size)
    ]
    device = next(model.parameters()).device
    keep = supports_logits_to_keep(model)
    scores = [[0.0] * len(label_ids) for _ in prompts]
    for n_target, pairs in tqdm(batches, desc="Ranking labels", disable=not show_progress):
        input_ids = torch.tensor([prompts[t] + label_ids[j] for t, j in pairs], device=device)
        # Positions -n_target-1 .. -2 predict the label tokens and EOS; keep only those logits.
        extra = {"logits_to_keep": n_target + 1} if keep else {}
        logits = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **extra).logits
        logits = logits[:, -n_target - 1 : -1]
        targets = input_ids[:, -n_target:]
        log_probs = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[..., None])[..., 0].sum(dim=-1)
        for (t, j), value in zip(pairs, log_probs.tolist(), strict=True):
            scores[t][j] = value
    return scores


def generate_is_wrong(model: Any) -> bool:
    """Whether ``model.generate()`` gives wrong tokens even after :func:`~softprompt_hf.enable_soft_prompt_generate`:
    a peft prompt-learning adapter other than the three soft prompts (multitask prompt tuning, CPT), which that fix
    does not cover and whose peft 0.21.2 ``generate()`` mishandles its virtual tokens on transformers 5.24 as it
    does theirs."""
    config = prompt_learning_config(model)
    return config is not None and not fixes_generate(model)


@torch.no_grad()
def generate_with_model(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    encoded: Sequence[list[int]],
    max_new_tokens: int,
    batch_size: int,
    show_progress: bool,
    generation_kwargs: dict[str, Any] | None = None,
    description: str = "Generating labels",
    stops: Sequence[int] | None = None,
) -> list[list[int]]:
    """Greedy tokens after each prompt through ``model.generate()`` (or what ``generation_kwargs`` ask for instead
    of greedy decoding: beams, sampling): batches padded on the left, stopped at ``stops`` (default EOS), a soft
    prompt's ``generate()`` made right with ``soft_prompt_generate`` for the call (left on if it already was, as
    ``load_adapter`` leaves it); any other model's is the stock one, right as it is."""
    # Where each row stops: the template's stop tokens (default: EOS).
    stops = tuple(stops) if stops is not None else PromptTemplate().stop_ids(tokenizer)
    # The pad id only fills masked slots: a tokenizer without a pad token pads with EOS (or 0), as training does.
    pad = next((token for token in (tokenizer.pad_token_id, *stops) if token is not None), 0)
    device = next(model.parameters()).device
    batches = length_sorted_batches(encoded, batch_size)
    outputs: list[list[int]] = [[] for _ in encoded]
    with (
        eval_mode(model),  # no dropout; every module gets its own mode back, also on errors
        soft_prompt_generate(model) if fixes_generate(model) else contextlib.nullcontext(),
        tqdm(total=len(batches), desc=description, disable=not show_progress) as progress,
    ):
        for batch in batches:
            width = max(len(encoded[index]) for index in batch)
            pads = [width - len(encoded[index]) for index in batch]
            input_ids = torch.tensor(
                [[pad] * n + encoded[index] for n, index in zip(pads, batch, strict=True)], device=device
            )
            mask = torch.tensor([[0] * n + [1] * (width - n) for n in pads], device=device)
            sequences = model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                eos_token_id=list(stops) or None,
                pad_token_id=pad,
                **{**_GREEDY, **(generation_kwargs or {})},
            )
            for index, row in zip(batch, sequences[:, width:].tolist(), strict=True):
                # A finished row is filled up with pads after its stop token.
                outputs[index] = cut_at_stop(row, stops)
            progress.update(1)
    return outputs


def greedy_with_cache(
    decoder: CachedDecoder | MixedDecoder,
    batches: Sequence[Sequence[Any]],
    limits: Sequence[Sequence[int]],
    stops: Sequence[Sequence[Collection[int]]],
) -> list[list[list[int]]]:
    """Greedy tokens for a group of batches decoded in step, with the cache: each batch runs through the model on
    its own, and the last positions of all of them are projected onto the vocabulary together (more rows per
    pass over the output layer's weight). ``limits[b][r]`` and ``stops[b][r]``: how many tokens row ``r`` of batch
    ``b`` generates at most, and the tokens that stop it (EOS). A row that generated a stop token, or its limit,
    leaves its batch, so the next steps run the unfinished rows only (rows are independent: the others' tokens do
    not change)."""
    states: list[DecodingState | None] = [decoder.start(prompts) for prompts in batches]
    outputs: list[list[list[int]]] = [[[] for _ in prompts] for prompts in batches]
    rows = [list(range(len(prompts))) for prompts in batches]  # per batch, the prompt each row of its state holds
    while True:
        live = [(b, state) for b, state in enumerate(states) if state is not None]
        if not live:
            break
        all_tokens = decoder.argmax(join_rows([state.last for _, state in live]))
        for (b, state), next_tokens in zip(live, all_tokens.split([len(rows[b]) for b, _ in live]), strict=True):
            tokens = next_tokens.tolist()
            going = []
            for i, (row, token) in enumerate(zip(rows[b], tokens, strict=True)):
                outputs[b][row].append(token)
                if token not in stops[b][row] and len(outputs[b][row]) < limits[b][row]:
                    going.append(i)
            if not going:
                states[b] = None
                continue
            if len(going) < len(rows[b]):
                keep = torch.tensor(going, device=next_tokens.device)
                state.select_rows(keep)
                next_tokens = next_tokens[keep]
                rows[b] = [rows[b][i] for i in going]
            state.feed(next_tokens[:, None])
    return outputs


def greedy_full_forward(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    stops: Sequence[int],
    extra: dict[str, Any],
    device: torch.device,
) -> list[list[int]]:
    """Greedy tokens for one batch of equal-length prompts, running the model's full forward on the whole
    sequence at every step (no cache)."""
    sequences = torch.tensor([list(ids) for ids in prompts], device=device)
    finished = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    stop_tokens = torch.tensor(list(stops), dtype=torch.long, device=device)
    generated: list[torch.Tensor] = []
    for _ in range(max_new_tokens):
        logits = model(input_ids=sequences, attention_mask=torch.ones_like(sequences), **extra).logits[:, -1]
        # Rows are independent and attention is causal: what a finished row appends changes nothing.
        next_tokens = logits.argmax(dim=-1).masked_fill(finished, stops[0] if stops else 0)
        generated.append(next_tokens)
        finished |= torch.isin(next_tokens, stop_tokens)
        if finished.all():
            break
        sequences = torch.cat([sequences, next_tokens[:, None]], dim=1)
    return torch.stack(generated, dim=1).tolist()


def cut_at_stop(ids: list[int], stops: Collection[int]) -> list[int]:
    """``ids`` up to and including the first stop token (all of them if none is there)."""
    end = next((i for i, token in enumerate(ids) if token in stops), None)
    return ids if end is None else ids[: end + 1]


def decode_outputs(
    tokenizer: PreTrainedTokenizerBase, outputs: Sequence[Sequence[int]], stops: Sequence[int]
) -> list[str]:
    """The generated ids as texts: special tokens removed (EOS among them), a final stop token other than EOS
    dropped too (a chat template's end-of-turn token, which a tokenizer may hold as an added token that is not
    special), surrounding whitespace stripped."""
    eos = tokenizer.eos_token_id
    trimmed = [list(ids[:-1]) if ids and ids[-1] in stops and ids[-1] != eos else list(ids) for ids in outputs]
    return [text.strip() for text in tokenizer.batch_decode(trimmed, skip_special_tokens=True)]


def equal_length_batches(sequences: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    """Indices of ``sequences`` grouped by length (shortest first) and cut into batches of at most
    ``batch_size``: every batch can be stacked without padding."""
    by_length: dict[int, list[int]] = defaultdict(list)
    for index, ids in enumerate(sequences):
        by_length[len(ids)].append(index)
    return [
        indices[start : start + batch_size]
        for _, indices in sorted(by_length.items())
        for start in range(0, len(indices), batch_size)
    ]


def length_sorted_batches(sequences: Sequence[Sequence[int]], batch_size: int) -> list[list[int]]:
    """Indices of ``sequences`` sorted by length (shortest first) and cut into batches of at most ``batch_size``:
    each batch's rows are of similar lengths and carry little padding."""
    order = sorted(range(len(sequences)), key=lambda index: len(sequences[index]))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


class DecodingState:
    """A batch being decoded: the key/value cache, its attention mask, where each row's next token goes, and
    what each row's last position gave (``last``: its logits, or its output layer input, see
    :meth:`CachedDecoder.run`)."""

    def __init__(
        self,
        decoder: CachedDecoder,
        cache: Cache,
        mask: torch.Tensor,
        next_positions: torch.Tensor,
        last: torch.Tensor,
    ) -> None:
        self._decoder = decoder
        self.cache = cache
        self.mask = mask
        self.next_positions = next_positions
        self.last = last

    def feed(self, tokens: torch.Tensor, logits_to_keep: int | torch.Tensor = 1) -> torch.Tensor:
        """Appends ``tokens`` ``(batch, n)`` to every row; returns the outputs (see :meth:`CachedDecoder.run`)
        of the last ``logits_to_keep`` positions (``(batch, d)`` for 1, ``(batch, n, d)`` for 0, which keeps
        all), or of the ``True`` positions of a boolean ``(batch, n)`` mask (``(positions, d)``, row-major)."""
        n = tokens.shape[1]
        self.mask = torch.cat([self.mask, self.mask.new_ones(tokens.shape[0], n)], dim=1)
        positions = self.next_positions[:, None] + torch.arange(n, device=tokens.device)
        outputs = self._decoder.run(
            input_ids=tokens, cache=self.cache, mask=self.mask, positions=positions, logits_to_keep=logits_to_keep
        )
        self.next_positions = self.next_positions + n
        self.last = outputs[:, -1] if isinstance(logits_to_keep, int) and logits_to_keep == 1 else outputs
        return self.last

    def select_rows(self, indices: torch.Tensor) -> None:
        """Keeps only the rows at ``indices`` (in that order), e.g. those still decoding."""
        self.cache.batch_select_indices(indices)
        self.mask = self.mask[indices]
        self.next_positions = self.next_positions[indices]
        self.last = self.last[indices]

    def repeat_rows(self, repeats: int) -> None:
        """Repeats each row ``repeats`` times (row ``i`` becomes rows ``i * repeats ... i * repeats + repeats - 1``),
        so several continuations can share one prompt's cache."""
        self.cache.batch_repeat_interleave(repeats)
        self.mask = self.mask.repeat_interleave(repeats, dim=0)
        self.next_positions = self.next_positions.repeat_interleave(repeats, dim=0)
        self.last = self.last.repeat_interleave(repeats, dim=0)


class CachedDecoder:
    """Runs a causal LM, or the base model of a soft-prompt ``PeftModel``, with a key/value cache.

    For a soft prompt it builds what peft's forward builds, so cached decoding reads the same inputs at the
    same positions as the training forward: prompt tuning and P-tuning put the virtual token embeddings in
    front of the prompt's token embeddings (positions from 0); prefix tuning starts from a cache holding the
    prefix key/values (the real tokens at positions after the prefix). Causal attention makes the virtual
    tokens' key/values the same in every row, so for prompt tuning and P-tuning they are computed once per
    decoder (one row, the prompt encoder included) and every batch starts from them as prefix tuning starts
    from its own. For the same reason the tokens that all of the decoder's prompts start with (a template's
    fixed opening) are run once, after the virtual tokens, and each batch runs the rest of its prompts only.

    Prompts of different lengths share a batch when the model can be told each token's position: it takes
    ``position_ids``, or it derives positions from the attention mask (Bloom's ALiBi). Each prompt is padded
    on the right, the padding is masked out of attention, and each row's new tokens get the positions that
    follow its own prompt, so every row computes what it computes alone. Other models get equal-length
    batches without padding.

    Sliding-window attention (Mistral; Gemma 2/3 local layers) is placed by cache slot, not by position: in
    transformers 5.24 a query at slot ``s`` sees slots ``s - window + 1 ... s``, and a sliding cache layer keeps only
    the last ``window - 1`` of them. A row's pads take slots between its prompt and its new tokens, so its new
    tokens would see fewer of its own tokens than alone. Padding is therefore used only while a batch's slots all
    fit in the smallest window (virtual tokens + longest prompt + the tokens fed after it, see :meth:`batches`),
    where no window cuts anything; longer prompts are batched by equal length, without padding, which is exact
    (:meth:`run` refuses any padded batch beyond the window). Models with layers that keep other state
    (recurrent, linear attention), which pads would enter, get equal-length batches only.

    Where the model's logits are the output of a plain linear layer, the decoder applies that layer itself, a
    chunk of the vocabulary at a time (:class:`~softprompt_hf.inference.output_head.ChunkedOutputHead`), and keeps only
    what decoding and ranking need (the argmax, a few log-probabilities): ``run`` then returns the layer's
    inputs, and the model's own projection is skipped. The first forward checks that the model's logits are
    that layer's output; if not, the decoder keeps the model's logits.
    """

    _PROMPT_TYPES = (PeftType.PROMPT_TUNING, PeftType.P_TUNING)

    def __init__(
        self, model: torch.nn.Module, prompts: Sequence[Sequence[int]] = (), *, softcapped_head: bool = False
    ) -> None:
        self.peft_config = prompt_learning_config(model)
        self.model = model
        self.base: Any = model.get_base_model() if self.peft_config is not None else model  # type: ignore[operator]
        inner: Any = model.get_base_model() if isinstance(model, PeftModel) else model
        self._cache_argument = cache_argument(inner)
        self._keep = takes_logits_to_keep(inner)
        self._positions = "position_ids" in inspect.signature(inner.forward).parameters
        # Each layer's sliding window (None: it attends to the whole sequence), and whether every layer is
        # attention, full or windowed, whose padding the mask keeps out.
        self._layer_windows, plain_attention = attention_windows(getattr(self.base, "config", None))
        windows = [window for window in self._layer_windows if window is not None]
        self.window: int | None = min(windows) if windows else None
        self.mixed_lengths = plain_attention and (
            self._positions or positions_from_mask(getattr(inner, "config", None))
        )
        # softcapped_head: constrained decoding projects a few rows of the vocabulary, also for models that
        # soft-cap their logits (Gemma 2/3), where the head applies the same soft-capping.
        self.head = ChunkedOutputHead.of(self._target, softcap=softcapped_head)
        self._head_checked = False
        self.num_virtual_tokens = 0
        # What every row starts with, computed once as one row: the key/values of the virtual tokens (prompt
        # tuning, P-tuning) and then of the tokens that all prompts of this decoder start with.
        self._shared_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.shared_tokens: list[int] = []
        if self.peft_config is not None:
            self.num_virtual_tokens = self.peft_config.num_virtual_tokens
            if self.peft_config.peft_type in self._PROMPT_TYPES:
                self._shared_kv = self._virtual_token_cache()
        self._share_common_prefix(prompts)

    @torch.no_grad()
    def _virtual_token_cache(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Runs the soft prompt's virtual tokens alone, as peft's forward starts every row (at positions 0 to
        n - 1, attending only to each other), and returns their key/values per layer."""
        prompt = self.model.get_prompt(batch_size=1)  # type: ignore[operator]
        prompt = prompt.to(self.base.get_input_embeddings().weight.dtype)
        virtual = prompt.shape[1]
        cache: Cache = DynamicCache(config=self.base.config)
        mask = torch.ones(1, virtual, dtype=torch.long, device=prompt.device)
        positions = torch.arange(virtual, device=prompt.device)[None, :]
        self.run(inputs_embeds=prompt, cache=cache, mask=mask, positions=positions)
        return cache_key_values(cache)

    @torch.no_grad()
    def _share_common_prefix(self, prompts: Sequence[Sequence[int]]) -> None:
        """Runs once the tokens that all ``prompts`` start with (a template's fixed opening, say), after the
        virtual tokens; each batch then runs the rest of its prompts only. Every prompt keeps at least its last
        token, whose logits are the first prediction."""
        common = common_prefix(prompts)
        if not common:
            return
        virtual = self.num_virtual_tokens
        cache: Cache
        if self._shared_kv is not None:
            cache = prefix_cache(self._shared_kv, 1, self.base.config, length=virtual)
        elif self.peft_config is not None:  # prefix tuning: its key/values first, if they are a plain cache
            cache = prefix_cache_from_peft(self.model, batch_size=1, max_cache_len=virtual + len(common))
            if not is_plain_dynamic_cache(cache):
                return
        else:
            cache = DynamicCache(config=getattr(self.base, "config", None))
        device = next(self.model.parameters()).device
        input_ids = torch.tensor([common], device=device)
        mask = torch.ones(1, virtual + len(common), dtype=torch.long, device=device)
        positions = virtual + torch.arange(len(common), device=device)[None, :]
        self.run(input_ids=input_ids, cache=cache, mask=mask, positions=positions)
        self._shared_kv = cache_key_values(cache)
        self.shared_tokens = common

    @property
    def prefix_length(self) -> int:
        """How many positions each row's cache holds before its own tokens: the virtual tokens (or prefix tuning's
        key/values) and the shared tokens."""
        return self.num_virtual_tokens + len(self.shared_tokens)

    @torch.no_grad()
    def row_prefix(self) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """The key/values every row starts with, as one row (:attr:`prefix_length` positions): the shared
        key/values, or prefix tuning's own; ``None`` where they are not a plain cache (or the model has no soft
        prompt and its prompts share no tokens), whose rows cannot join another adapter's."""
        if self._shared_kv is not None:
            return self._shared_kv
        if self.peft_config is None:
            return None
        cache = prefix_cache_from_peft(self.model, batch_size=1, max_cache_len=self.num_virtual_tokens)
        return cache_key_values(cache) if is_plain_dynamic_cache(cache) else None

    @classmethod
    def supports(cls, model: torch.nn.Module) -> bool:
        """Whether the model can be decoded with a cache exactly: a plain causal LM, a ``PeftModel`` whose
        adapter is not a prompt-learning method, or prompt tuning, P-tuning and prefix tuning."""
        config = prompt_learning_config(model)
        return config is None or config.peft_type in (*cls._PROMPT_TYPES, PeftType.PREFIX_TUNING)

    def batches_per_projection(self, batch_size: int) -> int:
        """How many batches of ``batch_size`` prompts to decode in step, their positions projected onto the
        vocabulary together: on a CPU with the chunked head, enough for about ``PROJECTION_ROWS`` rows (per
        row, the chunked projection of 128 rows runs 1.4x faster than that of 32, ``benchmarks/RESULTS.md``);
        otherwise one. The batches' caches are held together, so memory grows with it as with a larger batch;
        the forward passes, whose activations would grow more, keep ``batch_size`` rows."""
        device = next(self.model.parameters()).device
        if self.head is None or device.type != "cpu":
            return 1
        return max(1, PROJECTION_ROWS // max(batch_size, 1))

    def batches(self, prompts: Sequence[Sequence[int]], batch_size: int, new_tokens: int = 0) -> list[list[int]]:
        """Indices of ``prompts`` in the batches this decoder can run exactly, when ``new_tokens`` tokens will be
        fed after each prompt (the generated tokens but the last; a label's tokens but its EOS): sorted by length
        (little padding) when lengths can be mixed, of equal lengths otherwise. With sliding-window attention,
        lengths are mixed only among the prompts whose virtual tokens + prompt + new tokens fit in the window
        (see the class docstring); the others are batched by equal length."""
        longest = None if self.window is None else self.window - self.num_virtual_tokens - new_tokens
        beyond = [] if longest is None else [i for i, ids in enumerate(prompts) if len(ids) > longest]
        if beyond and self.peft_config is not None:
            logger.warning_once(
                "%s attends within a %d-token sliding window in %d of its %d attention layers: there, with %d virtual "
                "tokens and %d new tokens, the last positions of a prompt longer than %d tokens no longer attend to "
                "the whole soft prompt (in training as in evaluation), so it steers them less. Results stay exact "
                "(such prompts are batched without padding); a shorter max_prompt_tokens or fewer virtual tokens "
                "keep the soft prompt in the window.",
                type(self.base).__name__,
                self.window,
                sum(window is not None for window in self._layer_windows),
                len(self._layer_windows),
                self.num_virtual_tokens,
                new_tokens,
                longest,
            )
        if not self.mixed_lengths:
            return equal_length_batches(prompts, batch_size)
        outside = set(beyond)
        within = [i for i in range(len(prompts)) if i not in outside]
        return [
            [indices[j] for j in batch]
            for indices, batching in ((within, length_sorted_batches), (beyond, equal_length_batches))
            for batch in batching([prompts[i] for i in indices], batch_size)
        ]

    def start(self, prompts: Sequence[Sequence[int]]) -> DecodingState:
        """Runs the prompts (token id lists, from those the decoder was made with, in one of :meth:`batches`)
        and returns the state holding their cache and the logits of each one's last position."""
        device = next(self.model.parameters()).device
        shared = len(self.shared_tokens)
        if any(list(ids[:shared]) != self.shared_tokens for ids in prompts):
            raise ValueError("These prompts do not start with the tokens this decoder shares; make a decoder for them.")
        prompts = [ids[shared:] for ids in prompts]
        batch = len(prompts)
        # The cache starts with the virtual tokens (prompt tuning, P-tuning: computed once per decoder; prefix
        # tuning: its key/values) and the shared tokens; the rest of each prompt follows them.
        offset = self.num_virtual_tokens + shared
        cache: Cache
        if self._shared_kv is not None:
            cache = prefix_cache(self._shared_kv, batch, self.base.config, length=offset)
        elif self.peft_config is not None:
            longest = max(len(ids) for ids in prompts)
            cache = prefix_cache_from_peft(self.model, batch_size=batch, max_cache_len=offset + longest)
        else:
            cache = DynamicCache(config=getattr(self.base, "config", None))
        prefix_mask = torch.ones(batch, offset, dtype=torch.long, device=device)
        return self.prefill(cache, prefix_mask, prompts, torch.full((batch,), offset, device=device))

    def prefill(
        self, cache: Cache, prefix_mask: torch.Tensor, prompts: Sequence[Sequence[int]], offsets: torch.Tensor
    ) -> DecodingState:
        """Runs ``prompts`` after what ``cache`` holds (each row's prefix: ``prefix_mask`` masks its slots, a row
        whose prefix is shorter than the longest is padded on the left), each from position ``offsets[row]`` (its
        own prefix length), and returns the state with each one's last position's outputs."""
        device = prefix_mask.device
        lengths = torch.tensor([len(ids) for ids in prompts], device=device)
        longest, shortest = int(lengths.max()), int(lengths.min())
        padded = longest != shortest or not bool(prefix_mask.all())
        if padded and not self.mixed_lengths:
            raise ValueError(f"{type(self.base).__name__} cannot decode prompts of different lengths in one batch.")
        # Right padding (with each row's own last token): causal attention keeps it out of the prompt's
        # positions, and the mask keeps it out of everything that follows.
        input_ids = torch.tensor([list(ids) + [ids[-1]] * (longest - len(ids)) for ids in prompts], device=device)
        batch = input_ids.shape[0]
        token_mask = (torch.arange(longest, device=device)[None, :] < lengths[:, None]).long()
        mask = torch.cat([prefix_mask, token_mask], dim=1)
        keep = longest - shortest + 1
        positions = offsets[:, None] + torch.arange(longest, device=device)
        inputs = {"input_ids": input_ids}
        if keep > 1 and self._keep:
            # Only each row's last prompt position: transformers >= 5.23 takes per-row positions (a (batch, 1)
            # integer tensor); a model that slices its own way is caught below.
            last_positions = (lengths - 1)[:, None]
            outputs = self.run(cache=cache, mask=mask, positions=positions, logits_to_keep=last_positions, **inputs)
            if outputs.shape[:2] == (batch, 1):
                return DecodingState(self, cache, mask, offsets + lengths, outputs[:, 0])
            raise RuntimeError(f"{type(self.base).__name__} ignored per-row logits_to_keep positions.")
        outputs = self.run(cache=cache, mask=mask, positions=positions, logits_to_keep=keep, **inputs)
        if keep == 1:
            last = outputs[:, -1]
        else:
            last = outputs[torch.arange(batch, device=device), lengths - 1 - (longest - keep)]
        return DecodingState(self, cache, mask, offsets + lengths, last)

    def run(
        self,
        *,
        cache: Cache,
        mask: torch.Tensor,
        positions: torch.Tensor,
        logits_to_keep: int | torch.Tensor = 1,
        **inputs: torch.Tensor,
    ) -> torch.Tensor:
        """Runs the model over ``inputs``, appending to ``cache``; returns, for the positions ``logits_to_keep``
        selects, their logits, or with :attr:`head` the output layer's inputs (which :meth:`argmax` and
        :meth:`log_probs` take either way)."""
        if self.window is not None and mask.shape[1] > self.window and not bool(mask.all()):
            # Padding inside a sliding window takes the place of a row's own tokens (see the class docstring).
            raise RuntimeError(
                f"A padded batch of {mask.shape[1]} positions crosses {type(self.base).__name__}'s "
                f"{self.window}-token sliding window, where its rows would not compute what they compute alone; "
                "batch the prompts with `CachedDecoder.batches(prompts, batch_size, new_tokens)`."
            )
        extra: dict[str, Any] = {"logits_to_keep": logits_to_keep} if self._keep else {}
        if self._positions:
            extra["position_ids"] = positions
        captured: list[torch.Tensor] = []
        handle = None
        if self.head is not None:
            # Keep the output layer's input; once the check below has passed, give the layer no position at all.
            skip = self._head_checked

            def capture(module: torch.nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
                captured.append(args[0])
                return (args[0][..., :0, :], *args[1:]) if skip else None

            handle = self.head.layer.register_forward_pre_hook(capture)
        try:
            outputs = self._target(
                attention_mask=mask, use_cache=True, **{self._cache_argument: cache}, **inputs, **extra
            )
        finally:
            if handle is not None:
                handle.remove()
        if self.head is not None and not self._head_checked:
            self._check_head(captured, outputs.logits)
        result = captured[-1] if self.head is not None else outputs.logits
        if not self._keep and isinstance(logits_to_keep, torch.Tensor) and logits_to_keep.dtype == torch.bool:
            result = result[logits_to_keep]
        elif not self._keep and isinstance(logits_to_keep, int) and logits_to_keep:
            result = result[:, -logits_to_keep:]
        return result

    @property
    def _target(self) -> Any:
        # The prefix of prompt methods is handled here, so the base model is called directly; a plain model or
        # another kind of adapter is called as it is.
        return self.base if self.peft_config is not None else self.model

    def _check_head(self, captured: list[torch.Tensor], logits: Any) -> None:
        """On the first forward: use the chunked head only if the model's logits are its layer's output."""
        assert self.head is not None
        if len(captured) == 1 and self.head.matches(captured[0], logits):
            self._head_checked = True
            return
        logger.info(
            "%s's logits are not its output layer's output (%d calls); decoding keeps the model's own logits.",
            type(self._target).__name__,
            len(captured),
        )
        self.head = None

    def argmax(self, outputs: torch.Tensor) -> torch.Tensor:
        """Each position's greedy token, from what :meth:`run` returned."""
        return self.head.argmax(outputs) if self.head is not None else outputs.argmax(dim=-1)

    def token_logits(self, outputs: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The logits of the vocabulary entries ``tokens`` (1-D token ids) at each position, ``(..., len(tokens))``,
        from what :meth:`run` returned: with :attr:`head`, only those rows of the output layer are computed."""
        if self.head is not None:
            return self.head.token_logits(outputs, tokens)
        return outputs[..., tokens]

    def log_probs(self, outputs: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Float32 log-probabilities of ``tokens`` (``(..., k)``) at each position, from what :meth:`run`
        returned."""
        if self.head is not None:
            return self.head.log_probs(outputs, tokens)
        return torch.log_softmax(outputs.float(), dim=-1).gather(-1, tokens)


class MixedDecoder:
    """Rows of several soft-prompt adapters on one base model (each a ``PeftModel`` around it) in the same batches.

    Each adapter keeps a :class:`CachedDecoder` of its own, which computes what all of its rows start with, once:
    its virtual tokens' key/values (prompt tuning, P-tuning) or its prefix key/values (prefix tuning), then its
    prompts' shared opening. A batch's cache holds each row's own prefix, padded on the left to the longest of the
    batch with masked slots; each row's tokens take the positions after its own prefix, as alone. So every row
    computes what it computes with its adapter alone (to float rounding: another batch shape is another matrix
    product). Mixing needs the model's per-row positions (``position_ids``, or Bloom's mask-derived ones); other
    models, and under a sliding window the rows whose padded slots would not fit in it (see
    :class:`CachedDecoder`), are batched by adapter and equal length, without padding. The base model is run
    through the first adapter's decoder (the same weights for all).
    """

    def __init__(self, decoders: Sequence[CachedDecoder], prefixes: Sequence[list[tuple[torch.Tensor, torch.Tensor]]]):
        self.decoders = list(decoders)
        self.runner = self.decoders[0]
        self.prefixes = list(prefixes)
        self.lengths = [decoder.prefix_length for decoder in self.decoders]

    @classmethod
    def of(
        cls, models: Sequence[torch.nn.Module], prompts: Sequence[Sequence[Sequence[int]]], *, softcapped_head: bool
    ) -> MixedDecoder | None:
        """The decoder for ``models`` (one per adapter, sharing one base model) and each one's prompts; ``None`` if
        some adapter's rows cannot share batches (it is not one of the three soft prompts, or its prefix is not a
        plain cache): then run each adapter alone."""
        bases = {id(model.get_base_model()) if isinstance(model, PeftModel) else id(model) for model in models}
        if len(bases) != 1 or not all(prompt_learning_config(model) is not None for model in models):
            return None
        if not all(CachedDecoder.supports(model) for model in models):
            return None
        decoders = [
            CachedDecoder(model, rows, softcapped_head=softcapped_head)
            for model, rows in zip(models, prompts, strict=True)
        ]
        prefixes = [decoder.row_prefix() for decoder in decoders]
        if any(prefix is None for prefix in prefixes):
            return None
        return cls(decoders, [prefix for prefix in prefixes if prefix is not None])

    def batches(
        self, rows: Sequence[tuple[int, Sequence[int]]], batch_size: int, new_tokens: Sequence[int]
    ) -> list[list[int]]:
        """Indices of ``rows`` (``(adapter, prompt ids)``; ``new_tokens[adapter]`` tokens fed after its prompts) in
        the batches that can run exactly: sorted by the length of what each row runs, adapters mixed, where the
        model takes per-row positions and (sliding window) the longest prefix, the prompt and the new tokens fit
        in the window; by adapter and equal length otherwise."""
        runner = self.runner
        rest = [len(ids) - len(self.decoders[adapter].shared_tokens) for adapter, ids in rows]
        longest_prefix = max(self.lengths)
        mixable = [
            i
            for i, (adapter, _) in enumerate(rows)
            if runner.mixed_lengths
            and (runner.window is None or longest_prefix + rest[i] + new_tokens[adapter] <= runner.window)
        ]
        chosen = set(mixable)
        by_key: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, (adapter, _) in enumerate(rows):
            if i not in chosen:
                by_key[(adapter, rest[i])].append(i)
        order = sorted(mixable, key=lambda i: rest[i])
        mixed = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
        alone = [
            indices[start : start + batch_size]
            for _, indices in sorted(by_key.items(), key=lambda item: (item[0][1], item[0][0]))
            for start in range(0, len(indices), batch_size)
        ]
        return mixed + alone

    def start(self, rows: Sequence[tuple[int, Sequence[int]]]) -> DecodingState:
        """Runs ``rows`` (``(adapter, prompt ids)``, one of :meth:`batches`) after each one's own prefix and returns
        the state holding their cache and each one's last position's outputs."""
        device = next(self.runner.model.parameters()).device
        prompts, lengths = [], []
        for adapter, ids in rows:
            shared = self.decoders[adapter].shared_tokens
            if list(ids[: len(shared)]) != shared:
                raise ValueError("A prompt does not start with the tokens its adapter's decoder shares.")
            prompts.append(list(ids[len(shared) :]))
            lengths.append(self.lengths[adapter])
        longest = max(lengths)
        layers = []
        for layer in range(len(self.prefixes[0])):
            keys, values = [], []
            for (adapter, _), length in zip(rows, lengths, strict=True):
                key, value = self.prefixes[adapter][layer]
                keys.append(torch.nn.functional.pad(key, (0, 0, longest - length, 0)))
                values.append(torch.nn.functional.pad(value, (0, 0, longest - length, 0)))
            layers.append((torch.cat(keys), torch.cat(values)))
        cache = cache_from_key_values(layers, self.runner.base.config, length=longest)
        offsets = torch.tensor(lengths, device=device)
        prefix_mask = (torch.arange(longest, device=device)[None, :] >= (longest - offsets)[:, None]).long()
        return self.runner.prefill(cache, prefix_mask, prompts, offsets)

    def batches_per_projection(self, batch_size: int) -> int:
        return self.runner.batches_per_projection(batch_size)

    def argmax(self, outputs: torch.Tensor) -> torch.Tensor:
        return self.runner.argmax(outputs)

    def token_logits(self, outputs: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.runner.token_logits(outputs, tokens)

    def log_probs(self, outputs: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.runner.log_probs(outputs, tokens)


@dataclass
class AdapterRows:
    """One adapter's rows in :func:`mixed_outputs`: its ``PeftModel``, each row's prompt ids, the tokens that stop a
    row and, by mode, the most tokens a row generates (``"generate"``) or the labels' texts and token ids, each
    ending with a stop token (``"rank"``, ``"constrained"``)."""

    model: torch.nn.Module
    prompts: list[list[int]]
    stops: tuple[int, ...]
    max_new_tokens: int = 4
    labels: list[str] | None = None
    label_ids: list[list[int]] | None = None


@torch.no_grad()
def mixed_outputs(
    adapters: Sequence[AdapterRows], mode: str, *, batch_size: int = 32, show_progress: bool = False
) -> list[list[Any]] | None:
    """Decodes the rows of several adapters on one base model in shared batches (:class:`MixedDecoder`).

    Returns, per adapter, per row, what its adapter alone gives: the generated ids, cut after the first stop token
    (``"generate"``), the log-likelihood of each label (``"rank"``) or the chosen label (``"constrained"``); or
    ``None`` where the adapters' rows cannot share batches (see :meth:`MixedDecoder.of`).
    """
    if mode not in MODES:
        raise ValueError(f"Unknown mode {mode!r}; choose one of {list(MODES)}.")
    tries: list[LabelTrie | None] = [None] * len(adapters)
    if mode != "generate":
        for a, adapter in enumerate(adapters):
            if adapter.labels is None or adapter.label_ids is None:
                raise ValueError(f"mode={mode!r} needs each adapter's labels and their token ids.")
            if mode == "constrained":
                tries[a] = LabelTrie(adapter.labels, adapter.label_ids, adapter.stops)
    models = [adapter.model for adapter in adapters]
    contexts = [eval_mode(model) for model in dict((id(model), model) for model in models).values()]
    with contextlib.ExitStack() as stack:
        for context in contexts:
            stack.enter_context(context)
        decoder = MixedDecoder.of(
            models, [adapter.prompts for adapter in adapters], softcapped_head=mode == "constrained"
        )
        if decoder is None:
            return None
        rows = [(a, ids) for a, adapter in enumerate(adapters) for ids in adapter.prompts]
        owners = [(a, r) for a, adapter in enumerate(adapters) for r in range(len(adapter.prompts))]
        if mode == "generate":
            new_tokens = [adapter.max_new_tokens - 1 for adapter in adapters]
        elif mode == "rank":
            new_tokens = [max(len(ids) for ids in adapter.label_ids or [[0]]) - 1 for adapter in adapters]
        else:
            new_tokens = [trie.depth - 1 if trie is not None else 0 for trie in tries]
        batches = decoder.batches(rows, batch_size, new_tokens)
        per_group = decoder.batches_per_projection(batch_size)
        stop_sets = [frozenset(adapter.stops) for adapter in adapters]
        results: list[list[Any]] = [[None] * len(adapter.prompts) for adapter in adapters]
        description = {"generate": "Generating", "rank": "Ranking labels", "constrained": "Decoding labels"}[mode]
        with tqdm(total=len(batches), desc=description, disable=not show_progress) as progress:
            for start in range(0, len(batches), per_group):
                group = batches[start : start + per_group]
                outputs: list[list[Any]]
                items = [[rows[i] for i in batch] for batch in group]
                if mode == "generate":
                    limits = [[adapters[rows[i][0]].max_new_tokens for i in batch] for batch in group]
                    stops = [[stop_sets[rows[i][0]] for i in batch] for batch in group]
                    # Each row ends at its first stop token: nothing to cut.
                    outputs = greedy_with_cache(decoder, items, limits, stops)
                elif mode == "constrained":
                    row_tries = [[tries[rows[i][0]] for i in batch] for batch in group]
                    outputs = constrained_with_cache(decoder, row_tries, items)  # type: ignore[arg-type]
                else:
                    outputs = _rank_rows_with_cache(decoder, items, [adapter.label_ids or [] for adapter in adapters])
                for index, output in zip(
                    (i for batch in group for i in batch), (o for part in outputs for o in part), strict=True
                ):
                    a, r = owners[index]
                    results[a][r] = output
                progress.update(len(group))
    return results


def _rank_rows_with_cache(
    decoder: MixedDecoder, batches: Sequence[Sequence[tuple[int, Sequence[int]]]], label_ids: Sequence[list[list[int]]]
) -> list[list[list[float]]]:
    """The rank scores of a group of batches whose rows (``(adapter, prompt ids)``) score their own adapter's labels
    (``label_ids[adapter]``), as :func:`rank_with_shared_prompt` scores one adapter's: each prompt is run once,
    then each of its labels' tokens but the EOS are fed after it in one more forward, the batches' positions
    projected together."""
    states = [decoder.start(rows) for rows in batches]
    device = states[0].last.device
    rows = [row for part in batches for row in part]
    counts = [len(label_ids[adapter]) for adapter, _ in rows]
    # The last prompt position predicts each label's first token: every row's candidates projected together.
    firsts = sorted({ids[0] for adapter, _ in rows for ids in label_ids[adapter]})
    column = {token: j for j, token in enumerate(firsts)}
    last = join_rows([state.last for state in states])
    first = decoder.log_probs(last, torch.tensor(firsts, device=device).expand(len(rows), -1))
    totals = [[float(first[r, column[ids[0]]]) for ids in label_ids[adapter]] for r, (adapter, _) in enumerate(rows)]
    longest = max(len(ids) for adapter, _ in rows for ids in label_ids[adapter])
    label_outputs, targets, owners = [], [], []
    row = 0
    for state, part in zip(states, batches, strict=True):
        if longest < 2:
            row += len(part)
            continue
        # Row r becomes one row per label of its adapter; each continues its prompt with that label's tokens but
        # the EOS, padded at the end (causal attention hides the padding from the scored positions).
        repeats = torch.tensor([counts[row + r] for r in range(len(part))], device=device)
        state.select_rows(torch.arange(len(part), device=device).repeat_interleave(repeats))
        continuations, scored = [], []
        for r, (adapter, _) in enumerate(part):
            for j, ids in enumerate(label_ids[adapter]):
                continuations.append(ids[:-1] + [ids[-1]] * (longest - len(ids)))
                scored.append([p < len(ids) - 1 for p in range(longest - 1)])
                targets.extend(ids[1:])
                owners.extend([(row + r, j)] * (len(ids) - 1))
        label_outputs.append(
            state.feed(
                torch.tensor(continuations, device=device)[:, : longest - 1],
                logits_to_keep=torch.tensor(scored, device=device),
            )
        )
        row += len(part)
    if targets:
        picked = decoder.log_probs(join_rows(label_outputs), torch.tensor(targets, device=device)[:, None])
        for (r, j), value in zip(owners, picked[:, 0].tolist(), strict=True):
            totals[r][j] += value
    out: list[list[list[float]]] = []
    row = 0
    for part in batches:
        out.append(totals[row : row + len(part)])
        row += len(part)
    return out


def join_rows(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """``torch.cat`` along the rows, without a copy for a single part (a batch's logits can be large)."""
    return parts[0] if len(parts) == 1 else torch.cat(list(parts))


def common_prefix(prompts: Sequence[Sequence[int]]) -> list[int]:
    """The longest token prefix of all ``prompts``, leaving each prompt at least one token of its own."""
    if not prompts:
        return []
    first = prompts[0]
    length = min(len(ids) for ids in prompts) - 1
    for ids in prompts[1:]:
        length = next((i for i in range(length) if ids[i] != first[i]), length)
    return list(first[: max(length, 0)])


def prompt_learning_config(model: torch.nn.Module) -> Any:
    """The active peft config if ``model`` is a ``PeftModel`` with a prompt-learning adapter, else ``None``."""
    if not isinstance(model, PeftModel):
        return None
    config = model.active_peft_config
    return config if config.is_prompt_learning else None


def supports_logits_to_keep(model: torch.nn.Module) -> bool:
    """Whether the (base) model's forward takes ``logits_to_keep``, to compute logits only where needed
    instead of full-vocabulary logits for every position."""
    base: Any = model.get_base_model() if hasattr(model, "get_base_model") else model  # type: ignore[operator]
    return takes_logits_to_keep(base)
