"""Decoding and rank scoring of labels, and generation of free text: the public functions behind
``GenerationMetrics`` and ``predict``.

Its public functions (all exported from ``softprompt_hf``):

- :func:`generate_texts`: free text after each prompt (a summary, an answer), greedy or through ``generate()``;
- :func:`generate_labels`: the greedy label text after each text's prompt (``mode="generate"``);
- :func:`rank_labels`: the log-likelihood of each label after each text's prompt (``mode="rank"``);
- :func:`constrained_labels`: greedy decoding over the tokens that continue some label (``mode="constrained"``).

``GenerationMetrics``, ``TextGenerationMetrics`` and ``predict`` also call :func:`label_outputs` (what a mode gives),
:func:`generate_label_ids` (the generated ids, before decoding) and :func:`check_generation_kwargs`. They all run on
the key/value-cache engine of :mod:`~softprompt_hf.inference.engine` through the loops of
:mod:`~softprompt_hf.inference.loops`; given several adapters (``load_adapters``, ``adapter_names=``), they hand the
rows to its ``predict``, which decodes them together with :mod:`~softprompt_hf.inference.mixed`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from ..constants import MODES
from ..data.prompt import PromptFormat, PromptInput, PromptTemplate
from ..modeling.methods import eval_mode
from .engine import CachedDecoder, equal_length_batches, prompt_learning_config, supports_logits_to_keep
from .loops import (
    LabelTrie,
    constrained_full_forward,
    constrained_with_cache,
    cut_at_stop,
    decode_outputs,
    generate_is_wrong,
    generate_with_model,
    greedy_full_forward,
    greedy_with_cache,
    rank_full_sequences,
    rank_with_shared_prompt,
)

__all__ = ["constrained_labels", "generate_labels", "generate_texts", "rank_labels"]


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
            step (the package's decoder only, ``inference.engine``).
        use_generate (`bool`, defaults to `False`): Decode greedily through ``model.generate()`` instead of the
            package's decoder (the same tokens).
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

    By default decoding does not go through ``generate()`` but through the package's decoder
    (``inference.engine``), built for evaluation's throughput. peft 0.21.2's ``PeftModel.generate`` with a soft prompt
    returns tokens other than the model's own greedy choice on transformers 5.24; ``enable_soft_prompt_generate`` fixes
    it (``use_generate=True`` decodes that way, as ``predict`` does), and both give the same labels. The decoder is the
    default because it is faster: on 160 rows (one CPU thread, batches of 32) it labels 1.1-1.5x the rows/s of the fixed
    ``generate()`` on the 4 MB embedded model and 2.3-2.7x on a Bloom with bloomz' 250,880-token vocabulary, with the
    same labels on every row (``benchmarks/engine_vs_generate.py``, ``benchmarks/RESULTS.md`` section 8).

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
            step (the package's decoder only, ``inference.engine``).
        use_generate (`bool`, defaults to `False`): Decode through ``model.generate()`` (greedy, batches padded on
            the left, made right for a soft prompt by ``soft_prompt_generate`` for the call) instead of the
            package's decoder. A prompt-learning adapter that fix does not cover (multitask prompt tuning, CPT)
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
