"""A recipe's push: the Trainer's own Hub push taken over before training, the saved adapter folder pushed after.

The Trainer would push with ``PeftModel.push_to_hub``, which on transformers 5.x replaces the card with a wrong one
(``core.upstream`` entry 21). A recipe turns that off (``take_over_hub_push``, checking first that the push can
work) and pushes the complete local ``adapter/`` folder once, at the end (``push_run``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from transformers import Trainer, TrainingArguments

from ..adapter.hub import check_push_access, push_adapter_folder
from ..constants import DEFAULT_TIMEOUT
from ..core.locations import is_hub_id
from ..training.arguments import ModelArguments
from .outputs import ADAPTER_DIRNAME

__all__ = ["HubTarget", "push_run", "take_over_hub_push"]


@dataclass
class HubTarget:
    """Where and how a recipe pushes its adapter (``take_over_hub_push``); the token stays out of its repr."""

    repo_id: str
    token: str | None = field(default=None, repr=False)
    private: bool | None = None
    timeout: float | None = DEFAULT_TIMEOUT

    def __str__(self) -> str:
        return self.repo_id


def take_over_hub_push(training_args: TrainingArguments, model_args: ModelArguments) -> HubTarget | None:
    """Turn the Trainer's own Hub push off and return where the recipe pushes to itself, if anywhere.

    The Trainer pushes with ``PeftModel.push_to_hub``, which on transformers 5.x replaces peft's card with a
    wrong one; the recipes push the complete local ``adapter/`` folder instead, once, at the end. What would
    make that push fail is refused here, before any training: no ``--hub_model_id``, a base model without a Hub
    id, offline mode, no token or one the Hub rejects, no write access to the namespace (``check_push_access``;
    every process calls this, and all refuse together).

    ``--hub_token`` moves from ``training_args`` into the returned ``HubTarget``: the Trainer pickles its
    ``TrainingArguments`` into every checkpoint (``training_args.bin``), so the token must not stay there.
    """
    token, training_args.hub_token = training_args.hub_token, None
    if not training_args.push_to_hub:
        return None
    if not training_args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id <user or org>/<repository>.")
    if not is_hub_id(model_args.base_model):
        raise ValueError(
            f"--push_to_hub: the base model {model_args.model_name_or_path} is a local folder, and an adapter that "
            "names it cannot be loaded by anyone else. Pass --base_model_id <its Hub id> (e.g. "
            "bigscience/bloomz-560m)."
        )
    target = HubTarget(
        training_args.hub_model_id,
        token=token,
        private=training_args.hub_private_repo,
        timeout=getattr(training_args, "push_timeout", DEFAULT_TIMEOUT),
    )
    check_push_access(target.repo_id, token=target.token, timeout=target.timeout)
    training_args.push_to_hub = False
    return target


def push_run(trainer: Trainer, repo: HubTarget | str, model_args: ModelArguments) -> None:
    """Push the run's saved ``adapter/`` folder to ``repo`` (main process only).

    ``repo`` is what ``take_over_hub_push`` returned (or a repository id: then the token is the saved login or
    ``HF_TOKEN``). Raises ``softprompt_hf.adapter.hub.HubPushError`` (which says what happened and gives the command
    that pushes the saved folder later) on failure.
    """
    if not trainer.is_world_process_zero():
        return
    target = repo if isinstance(repo, HubTarget) else HubTarget(repo, private=trainer.args.hub_private_repo)
    push_adapter_folder(
        Path(str(trainer.args.output_dir)) / ADAPTER_DIRNAME,
        target.repo_id,
        token=target.token,
        private=target.private,
        base_model_id=model_args.base_model,
        timeout=target.timeout,
    )
