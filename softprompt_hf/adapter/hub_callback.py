"""``HubPushCallback``: the Trainer pushes the trained adapter and its card to the Hub when training ends (or at each
new best evaluation), saved locally first."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState
from transformers.utils import logging

from ..constants import DEFAULT_TIMEOUT
from ..core.locations import is_hub_id
from ..core.sharding import gather_root
from ..core.upstream import saved_callback_state
from .card import ModelCardCallback
from .hub import HubPushError, check_base_model_id, check_push_access, push_adapter_folder
from .saving import save_adapter

__all__ = ["HubPushCallback"]

logger = logging.get_logger(__name__)


class HubPushCallback(TrainerCallback, ExportableState):
    """Pushes the adapter (with the tokenizer where it is not the base model's) and a model card to a Hub
    repository when training ends.

    On the main process only, the adapter is first saved with ``save_adapter`` into
    ``<output_dir>/<local_dir>`` (``<output_dir>/adapter``, the folder the recipes write too: the base model named
    by its Hub id, the card rendered from the data a ``ModelCardCallback`` collects during training,
    ``softprompt_hf.json`` for ``softprompt-hf predict``), then uploaded. If the upload fails at the end of
    training, ``trainer.train()`` raises a ``HubPushError`` that gives the command to push the saved folder.
    What can be checked before training is checked when training begins (``check_push_access``: offline mode,
    the token, write access to the namespace), on every process, so that a push that cannot work stops the run
    before its first step instead of after its last.

    With ``push_best=True`` the adapter is saved and pushed each time the evaluation improves
    ``metric_for_best_model`` (a failed push is logged and retried at the end of training), and the
    repository keeps the best adapter instead of the last one. The best score so far is saved in every
    checkpoint (``trainer_state.json``, this callback's ``state()``), so a resumed run pushes only evaluations
    that beat it. With ``restore_callback_states_from_checkpoint=True`` the Trainer rebuilds the callback from
    that state, without its token and ``metrics``: leave that option off, or log in / set ``HF_TOKEN``.

    Args:
        repo_id: ``namespace/name`` of the target repository.
        base_model_id: The base model's Hub id, even when the model was loaded from a local copy.
        token: A Hub token with write access; default: the saved login or ``HF_TOKEN``. Never logged or saved.
        private: Create the repository as private.
        push_best: Push at each new best evaluation rather than only the final adapter.
        metrics: The run's ``GenerationMetrics``, for the labels, confusion matrix and example texts in the card.
        labels: The label texts (default: ``metrics.labels``).
        template: The prompt template (default: the training collator's, else ``metrics.template``).
        text_column: The text column (default: the training collator's, else ``metrics.text_column``).
        dataset: The dataset's Hub id, for the card.
        dataset_config: The dataset's config, for the card.
        license: The license id, for the card.
        local_dir: Folder under ``args.output_dir`` where the adapter is saved before the push.
        timeout: Seconds any single Hub request may wait for an answer (see ``push_adapter_folder``).
        endpoint: The Hub's URL (default ``HF_ENDPOINT``).

    Example:

    ```python
    >>> from transformers import Trainer
    >>> from softprompt_hf import SoftPromptDataCollator
    >>> push = HubPushCallback("me/bloomz-complaints", base_model_id="bigscience/bloomz-560m")
    >>> trainer = Trainer(model=model, args=args, train_dataset=data.train,
    ...                   data_collator=SoftPromptDataCollator(tokenizer), callbacks=[push])
    >>> trainer.train().global_step  # pushes when training ends; the Trainer also prints the run's summary
    {'train_runtime': ...}
    2
    >>> from huggingface_hub import HfApi
    >>> HfApi().file_exists("me/bloomz-complaints", "adapter_model.safetensors")
    True

    ```
    """

    def __init__(
        self,
        repo_id: str,
        *,
        base_model_id: str,
        token: str | None = None,
        private: bool | None = None,
        push_best: bool = False,
        metrics: Any | None = None,
        labels: Sequence[str] | None = None,
        template: str | None = None,
        text_column: str | None = None,
        dataset: str | None = None,
        dataset_config: str | None = None,
        license: str | None = None,
        local_dir: str = "adapter",
        timeout: float | None = DEFAULT_TIMEOUT,
        endpoint: str | None = None,
    ) -> None:
        check_base_model_id(base_model_id)
        if not is_hub_id(repo_id) or "/" not in repo_id:
            raise ValueError(f"repo_id={repo_id!r} is not a Hub repository id; use 'namespace/name'.")
        self.repo_id = repo_id
        self.base_model_id = base_model_id
        self._token = token
        self.private = private
        self.push_best = push_best
        # What the card shows, collected during training (ModelCardCallback: hyperparameters, evaluations).
        facts: dict[str, Any] = {"labels": labels, "template": template, "text_column": text_column, "license": license}
        self.card = ModelCardCallback(
            base_model=base_model_id, metrics=metrics, dataset=dataset, dataset_config=dataset_config, **facts
        )
        self.local_dir = local_dir
        self.timeout = timeout
        self.endpoint = endpoint
        self.folder: Path | None = None
        self.pushed = False
        self._best: float | None = None
        self._saved = False  # whether output_dir/local_dir holds the adapter this callback saved

    @classmethod
    def from_training_args(cls, training_args: Any, *, base_model_id: str, **kwargs: Any) -> HubPushCallback:
        """The callback for a run started with ``--push_to_hub --hub_model_id <repo>``.

        Reads ``hub_model_id``, ``hub_token`` and ``hub_private_repo`` from the ``TrainingArguments`` and sets
        their ``push_to_hub`` to ``False``, so that the Trainer does not push on its own as well (it would
        upload at every save, with peft's card and the local base-model path). The token moves into the callback
        and ``hub_token`` is cleared: the Trainer pickles its ``TrainingArguments`` into every checkpoint
        (``training_args.bin``), which would otherwise hold the token. Call it before building the Trainer. Other
        keyword arguments go to the constructor.
        """
        if not training_args.hub_model_id:
            raise ValueError(
                "--push_to_hub needs --hub_model_id <namespace/name>: the repository to push the adapter to."
            )
        callback = cls(
            training_args.hub_model_id,
            base_model_id=base_model_id,
            token=kwargs.pop("token", None) or training_args.hub_token,
            private=kwargs.pop("private", training_args.hub_private_repo),
            **kwargs,
        )
        training_args.push_to_hub = False
        training_args.hub_token = None
        return callback

    @property
    def metrics(self) -> Any:
        """The run's ``GenerationMetrics`` (labels, confusion matrix and example texts for the card), or None."""
        return self.card.metrics

    @metrics.setter
    def metrics(self, metrics: Any) -> None:
        self.card.metrics = metrics

    def state(self) -> dict[str, Any]:
        # Saved by the Trainer into each checkpoint's trainer_state.json: JSON only, and never the token.
        return {
            "args": {
                "repo_id": self.repo_id,
                "base_model_id": self.base_model_id,
                "private": self.private,
                "push_best": self.push_best,
                "local_dir": self.local_dir,
                "timeout": self.timeout,
            },
            "attributes": {"_best": self._best, "pushed": self.pushed, "_saved": self._saved},
        }

    def __repr__(self) -> str:  # the token must never show up in logs
        return f"{type(self).__name__}(repo_id={self.repo_id!r}, base_model_id={self.base_model_id!r})"

    def on_train_begin(self, args, state, control, **kwargs):
        if args.push_to_hub:
            raise ValueError(
                "TrainingArguments(push_to_hub=True) makes the Trainer push on its own, with peft's card and at every "
                "save, beside HubPushCallback. Set push_to_hub=False (HubPushCallback.from_training_args does it)."
            )
        if self.push_best and not args.metric_for_best_model:
            raise ValueError(
                "HubPushCallback(push_best=True) needs TrainingArguments(metric_for_best_model=...), e.g. 'f1', "
                "and an eval_strategy, to know which evaluation is the best."
            )
        self._restore(args, state)
        check_push_access(self.repo_id, token=self._token, timeout=self.timeout, endpoint=self.endpoint)
        self.card.on_train_begin(args, state, control, **kwargs)

    def _restore(self, args, state) -> None:
        """Takes back the best score (and the adapter saved for it) from a resumed checkpoint's state."""
        name = type(self).__name__
        saved = saved_callback_state(state, name, self.state())
        if saved is None:
            return
        mine = [
            entry
            for entry in (saved if isinstance(saved, list) else [saved])
            if entry.get("args", {}).get("repo_id") == self.repo_id
        ]
        if not mine:
            return
        attributes = mine[0].get("attributes", {})
        self._best = attributes.get("_best")
        self.pushed = bool(attributes.get("pushed"))
        # The folder the checkpointed callback saved to: a checkpoint of softprompt_hf 0.1 names "hub_adapter",
        # its default then; what this callback saves from now on goes to its own local_dir.
        folder = Path(args.output_dir) / mine[0].get("args", {}).get("local_dir", self.local_dir)
        self._saved = bool(attributes.get("_saved")) and (folder / "adapter_config.json").is_file()
        self.folder = folder if self._saved else None
        if self._best is not None:
            logger.info(f"HubPushCallback: best {args.metric_for_best_model} so far {self._best} (from the checkpoint)")

    def on_evaluate(self, args, state, control, metrics=None, model=None, processing_class=None, **kwargs):
        self.card.on_evaluate(args, state, control, metrics=metrics, **kwargs)
        if self.push_best and metrics and model is not None:
            gather_root(model)  # FSDP2: every process gathers the soft prompt, which the main process saves
        if not (self.push_best and state.is_world_process_zero and metrics):
            return
        name = args.metric_for_best_model
        value = metrics.get(name if name.startswith("eval_") else f"eval_{name}")
        if value is None:
            raise ValueError(f"metric_for_best_model={name!r} is not among the evaluation metrics {sorted(metrics)}.")
        greater = args.greater_is_better if args.greater_is_better is not None else not name.endswith("loss")
        if self._best is not None and not (value > self._best if greater else value < self._best):
            return
        self._best = value
        self._save(args, state, model, processing_class, metrics)
        try:
            self._push(f"Best adapter so far: {name} = {value:.4f} at step {state.global_step}")
        except HubPushError as err:
            logger.warning(f"{err}\nTraining goes on; the push is retried when training ends.")

    def on_train_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        self.card.on_train_end(args, state, control, **kwargs)
        if model is not None:
            gather_root(model)  # FSDP2: every process gathers the soft prompt, which the main process saves
        if not state.is_world_process_zero:
            return
        if self.push_best and self.folder is not None:
            if not self.pushed:
                self._push(f"Best adapter: {args.metric_for_best_model} = {self._best:.4f}")
            return
        self._save(args, state, model, processing_class, None)
        self._push(f"Adapter after {state.global_step} training steps")

    def _save(self, args, state, model, tokenizer, metrics: Mapping[str, float] | None) -> None:
        if model is None:
            raise ValueError("HubPushCallback needs the model: pass it to the Trainer.")
        if tokenizer is None:
            logger.warning(
                "HubPushCallback got no tokenizer, so the card's usage snippet and softprompt-hf predict will use the "
                "base model's: pass processing_class=tokenizer to the Trainer if the run's tokenizer differs."
            )
        self.folder = save_adapter(
            model,
            Path(args.output_dir) / self.local_dir,
            tokenizer=tokenizer,
            base_model_id=self.base_model_id,
            card=self.card.card_data(model, metrics=metrics),  # the metrics of the evaluation saved for
            repo_id=self.repo_id,
        )
        self._saved = True
        self.pushed = False

    def _push(self, commit_message: str) -> None:
        if self.folder is None:
            raise RuntimeError("HubPushCallback has no saved adapter to push.")
        push_adapter_folder(
            self.folder,
            self.repo_id,
            token=self._token,
            private=self.private,
            commit_message=commit_message,
            timeout=self.timeout,
            endpoint=self.endpoint,
        )
        self.pushed = True
