"""Training loss with logits only where labels are supervised.

A soft-prompt batch supervises a few positions per row (the label tokens and the EOS), yet the stock
causal-LM forward projects every position (virtual tokens, prompt, padding) onto the whole vocabulary. With
a large vocabulary (bloomz: 250,880 tokens) that projection, its softmax and their backward pass are most of
a training step. transformers 5 models can project only chosen positions (``logits_to_keep``) and take the
shifted labels of those positions (``shift_labels``); this module hands them both to the base model from the
labels it receives, so the loss is the same (the same terms, averaged the same way) at a fraction of the cost,
while the model, peft and the ``Trainer`` run unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from peft import PeftModel
from torch.utils.hooks import RemovableHandle
from transformers.utils import logging

from ..core.upstream import takes_label_only_loss

__all__ = ["enable_label_only_logits"]

logger = logging.get_logger(__name__)

_IGNORE_INDEX = -100


def enable_label_only_logits(model: torch.nn.Module, *, in_eval: bool = False) -> RemovableHandle | None:
    """Makes the training forward compute logits only at the positions whose next token is a label.

    A forward pre-hook on the base causal LM (the model itself if it is not a ``PeftModel``) reads the
    labels it is called with (for prompt tuning and P-tuning, after peft has prepended ``-100`` for the
    virtual tokens), and passes ``logits_to_keep`` (a boolean mask of the supervised positions) and
    ``shift_labels`` (their target tokens) along. The loss equals the full-logits loss up to float rounding,
    and so do the gradients; ``outputs.logits`` is then ``(supervised positions, vocab)`` instead of
    ``(batch, length, vocab)``. Calls without labels, or that already choose ``logits_to_keep`` or
    ``shift_labels``, are left alone, as are eval-mode calls unless ``in_eval=True`` (so that code reading
    the eval logits, e.g. a ``compute_metrics``, still gets them all).

    Args:
        model: A causal LM or a ``PeftModel`` around one, whose forward takes ``logits_to_keep`` and passes
            extra keyword arguments on to its loss function (transformers 5 causal LMs do).
        in_eval: Also trim the logits of eval-mode calls with labels (the ``Trainer``'s eval loss).
            ``GenerationMetrics`` drops the eval logits anyway, so with it this is safe and faster.

    Returns:
        The hook's handle (``handle.remove()`` restores the stock forward), or ``None`` if the model's
        forward cannot take these arguments; a warning then says so and nothing changes.

    Example:

    ```python
    >>> from transformers import Trainer
    >>> from softprompt_hf import SoftPromptDataCollator, build_soft_prompt_model
    >>> model = build_soft_prompt_model(base_model, method="prompt_tuning", tokenizer=tokenizer)
    >>> handle = enable_label_only_logits(model)  # training projects only the label positions
    >>> trainer = Trainer(model=model, args=args, train_dataset=data.train,
    ...                   data_collator=SoftPromptDataCollator(tokenizer))
    >>> trainer.train().global_step  # the Trainer also prints the run's summary
    {'train_runtime': ...}
    2
    >>> handle.remove()  # the stock forward again

    ```
    """
    base: Any = model.get_base_model() if isinstance(model, PeftModel) else model
    if not takes_label_only_loss(base):
        logger.warning(
            "%s.forward does not take logits_to_keep and loss keyword arguments; logits stay computed at every "
            "position.",
            type(base).__name__,
        )
        return None

    def keep_supervised_logits(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> Any:
        labels = kwargs.get("labels")
        if labels is None or (not module.training and not in_eval):
            return None
        if kwargs.get("shift_labels") is not None or _chooses_logits(kwargs.get("logits_to_keep")):
            return None
        # Position p predicts the token at p + 1: the same shift as the stock causal-LM loss.
        shifted = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=_IGNORE_INDEX)
        supervised = shifted != _IGNORE_INDEX
        kwargs["logits_to_keep"] = supervised
        kwargs["shift_labels"] = shifted[supervised]
        return args, kwargs

    return base.register_forward_pre_hook(keep_supervised_logits, with_kwargs=True)


def _chooses_logits(logits_to_keep: Any) -> bool:
    if logits_to_keep is None:
        return False
    if isinstance(logits_to_keep, int):
        return logits_to_keep != 0
    return True
