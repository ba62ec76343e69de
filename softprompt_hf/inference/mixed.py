"""Rows of several adapters on one base model decoded in the same batches, each with its own soft prompt, prompts,
stop tokens and labels: :func:`mixed_outputs` (which ``serving/multi.py`` calls) runs each mode's loop over the
engine's :class:`~softprompt_hf.inference.engine.MixedDecoder`, and gives each row what its adapter alone gives.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from ..constants import MODES
from ..modeling.methods import eval_mode
from .engine import MixedDecoder, join_rows
from .loops import LabelTrie, constrained_with_cache, greedy_with_cache

__all__ = ["AdapterRows", "mixed_outputs"]


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
