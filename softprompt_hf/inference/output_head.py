"""The vocabulary projection of greedy decoding and label scoring, computed a chunk of the vocabulary at a time.

Decoding and rank classification need little from a position's logits: the argmax token, or the
log-probabilities of a few given tokens (a log-sum-exp over the vocabulary and a handful of values). Materialising
``(positions, vocab)`` logits for that is the costliest step of evaluation with a large vocabulary (bloomz' 250,880
tokens: a 32-row projection is 32 MB of float32 logits, written and read back). :class:`ChunkedOutputHead`
projects onto a slice of the vocabulary at a time and reduces each slice at once, so the logits never exist
whole. On a CPU, slices of about 64K logits stay in the cache, and the projection runs 1.15-1.5x faster than
one large matrix product (``benchmarks/output_head.py``, ``benchmarks/RESULTS.md``); on an accelerator the
slices are as large as a memory budget allows, usually the whole vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["ChunkedOutputHead"]

# Config settings of transformers models whose forward transforms the logits after the output layer (soft-capping,
# scaling): the head's own output would not be the model's logits.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "output_multiplier")

# Logits per chunk: on a CPU what stays in a core's cache; elsewhere a memory budget (float32 logits).
_CPU_CHUNK_ELEMENTS = 1 << 16
_CPU_CHUNK_BOUNDS = (512, 2048)
_DEVICE_CHUNK_BYTES = 256 << 20


class ChunkedOutputHead:
    """A causal LM's output layer (``nn.Linear`` from hidden size to vocabulary), applied in vocabulary chunks.

    ``hidden`` arguments are the output layer's inputs, ``(..., hidden_size)``; results have the leading shape.
    Per chunk, the logits are exactly what the layer computes for those vocabulary rows (its weight's rows and
    bias), up to the float rounding of a matrix product of another shape, then soft-capped as the model's forward
    soft-caps them when ``softcap`` is set (``tanh(logits / softcap) * softcap``, Gemma 2/3's
    ``final_logit_softcapping``).
    """

    def __init__(self, layer: torch.nn.Linear, softcap: float | None = None) -> None:
        if type(layer) is not torch.nn.Linear:
            raise TypeError(f"ChunkedOutputHead needs a plain torch.nn.Linear layer, not {type(layer).__name__}.")
        self.layer = layer
        self.softcap = softcap

    @classmethod
    def of(cls, model: torch.nn.Module, *, softcap: bool = False) -> ChunkedOutputHead | None:
        """The output layer of ``model`` (a causal LM) as a chunked head, or ``None`` if its logits are not the
        output of a plain linear layer: an adapter on the layer (LoRA), or a model that soft-caps or scales its
        logits afterwards (Gemma 2, Cohere, Granite, ...). With ``softcap=True``, a model whose only transform is
        ``final_logit_softcapping`` gets a head that soft-caps its logits the same way."""
        get_output_embeddings = getattr(model, "get_output_embeddings", None)
        layer = get_output_embeddings() if callable(get_output_embeddings) else None
        if type(layer) is not torch.nn.Linear:
            return None
        config = getattr(model, "config", None)
        cap = None
        for part in (config, getattr(config, "text_config", None)):
            for name in _LOGIT_TRANSFORMS:
                value = getattr(part, name, None)
                if value in (None, 1, 1.0):
                    continue
                if softcap and name == "final_logit_softcapping":
                    cap = float(value)
                    continue
                return None
        return cls(layer, softcap=cap)

    @property
    def vocab_size(self) -> int:
        return self.layer.out_features

    def chunk_size(self, rows: int, device: torch.device) -> int:
        """Vocabulary rows projected at a time for ``rows`` positions."""
        if device.type == "cpu":
            low, high = _CPU_CHUNK_BOUNDS
            size = max(low, min(high, _CPU_CHUNK_ELEMENTS // max(rows, 1)))
        else:
            size = max(_CPU_CHUNK_BOUNDS[1], _DEVICE_CHUNK_BYTES // (4 * max(rows, 1)))
        return min(size, self.vocab_size)

    def _logit_chunks(self, hidden: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
        """``(start, logits of vocabulary rows start..start + n)`` for 2-D ``hidden``, chunk by chunk."""
        weight, bias = self.layer.weight, self.layer.bias
        step = self.chunk_size(hidden.shape[0], hidden.device)
        for start in range(0, self.vocab_size, step):
            chunk_bias = None if bias is None else bias[start : start + step]
            yield start, self._capped(torch.nn.functional.linear(hidden, weight[start : start + step], chunk_bias))

    def _capped(self, logits: torch.Tensor) -> torch.Tensor:
        # The same operations, in the same order and dtype, as transformers 5.24's Gemma 2/3 forwards.
        if self.softcap is None:
            return logits
        return torch.tanh(logits / self.softcap) * self.softcap

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """All the logits, as the layer computes them (for checks; the point of this class is not to)."""
        return self._capped(torch.nn.functional.linear(hidden, self.layer.weight, self.layer.bias))

    def token_logits(self, hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """The logits of the vocabulary entries ``tokens`` (1-D token ids) only, ``(..., len(tokens))``: the
        layer's weight rows (and bias) of those tokens, so that a few allowed tokens cost a few rows of a large
        vocabulary's projection. Equal to ``logits(hidden)[..., tokens]`` up to float rounding."""
        if ((tokens < 0) | (tokens >= self.vocab_size)).any():
            raise ValueError(f"Token ids must be in [0, {self.vocab_size}).")
        bias = None if self.layer.bias is None else self.layer.bias[tokens]
        return self._capped(torch.nn.functional.linear(hidden, self.layer.weight[tokens], bias))

    def argmax(self, hidden: torch.Tensor) -> torch.Tensor:
        """The index of each position's largest logit (the first one on ties, like ``torch.argmax``)."""
        flat = hidden.reshape(-1, hidden.shape[-1])
        best_values: torch.Tensor | None = None
        best_tokens = torch.zeros(flat.shape[0], dtype=torch.long, device=flat.device)
        for start, logits in self._logit_chunks(flat):
            tokens = logits.argmax(dim=-1, keepdim=True)
            values = logits.gather(-1, tokens)[:, 0]
            if best_values is None:
                best_values, best_tokens = values, tokens[:, 0] + start
                continue
            better = values > best_values  # strictly: an earlier chunk keeps a tie
            best_values = torch.where(better, values, best_values)
            best_tokens = torch.where(better, tokens[:, 0] + start, best_tokens)
        return best_tokens.view(hidden.shape[:-1])

    def log_probs(self, hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """``log_softmax(logits.float())`` at ``tokens`` (``(..., k)`` token ids per position), in float32."""
        flat = hidden.reshape(-1, hidden.shape[-1])
        wanted = tokens.reshape(flat.shape[0], -1)
        if ((wanted < 0) | (wanted >= self.vocab_size)).any():
            raise ValueError(f"Token ids must be in [0, {self.vocab_size}).")
        # A running log-sum-exp: the largest logit so far and the sum of exp(logit - it).
        peak = torch.full((flat.shape[0],), -torch.inf, device=flat.device)
        total = torch.zeros(flat.shape[0], device=flat.device)
        picked = torch.zeros(wanted.shape, device=flat.device)
        for start, chunk in self._logit_chunks(flat):
            logits = chunk.float()
            new_peak = torch.maximum(peak, logits.amax(dim=-1))
            total = total * torch.exp(peak - new_peak) + torch.exp(logits - new_peak[:, None]).sum(dim=-1)
            peak = new_peak
            inside = (wanted >= start) & (wanted < start + logits.shape[1])
            values = logits.gather(-1, (wanted - start).clamp(0, logits.shape[1] - 1))
            picked = torch.where(inside, values, picked)
        return (picked - (peak + torch.log(total))[:, None]).view(tokens.shape)

    def matches(self, hidden: torch.Tensor, logits: Any) -> bool:
        """Whether the model's ``logits`` for these positions are this layer's output on ``hidden``, within float
        rounding: the check that the model does nothing to its logits after the layer."""
        if not isinstance(logits, torch.Tensor) or logits.shape[-1] != self.vocab_size or hidden.numel() == 0:
            return False
        ours = self.logits(hidden.reshape(-1, hidden.shape[-1])).float()
        theirs = logits.reshape(-1, logits.shape[-1]).float()
        if ours.shape != theirs.shape:
            return False
        scale = float(theirs.abs().max()) or 1.0
        tolerance = (1e-5 if logits.dtype == torch.float32 else 2e-2) * scale
        return bool((ours - theirs).abs().max() <= tolerance)
