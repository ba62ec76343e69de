"""The decoding loops, run over the engine's decoders (:mod:`~softprompt_hf.inference.engine`) or the model's full
forward, and what turns their ids into texts:

- greedy decoding (:func:`greedy_with_cache`, :func:`greedy_full_forward`), and decoding through ``model.generate()``
  (:func:`generate_with_model`; :func:`generate_is_wrong` says where that cannot be right);
- constrained decoding over the labels' prefix tree (:class:`LabelTrie`, :func:`choose_tokens`,
  :func:`constrained_with_cache`, :func:`constrained_full_forward`);
- rank scoring (:func:`rank_with_shared_prompt`, :func:`rank_full_sequences`);
- the generated ids cut at their stop token and decoded (:func:`cut_at_stop`, :func:`decode_outputs`).

The public functions that run them are in :mod:`~softprompt_hf.inference.labels`.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Collection, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from ..data.prompt import PromptTemplate
from ..modeling.methods import eval_mode
from .engine import (
    CachedDecoder,
    DecodingState,
    MixedDecoder,
    join_rows,
    length_sorted_batches,
    prompt_learning_config,
    supports_logits_to_keep,
)
from .generate import fixes_generate, soft_prompt_generate

__all__ = [
    "LabelTrie",
    "choose_tokens",
    "constrained_full_forward",
    "constrained_with_cache",
    "cut_at_stop",
    "decode_outputs",
    "generate_is_wrong",
    "generate_with_model",
    "greedy_full_forward",
    "greedy_with_cache",
    "rank_full_sequences",
    "rank_with_shared_prompt",
]

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
