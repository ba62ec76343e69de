"""Push a trained soft prompt to the Hugging Face Hub: saved locally first, then uploaded.

The adapter is always written to a local folder (``save_adapter``) before any network step, so a missing
or rejected token, a network error or a timeout never loses it; the ``HubPushError`` then says what went
wrong and gives the command that pushes the saved folder later::

    softprompt-hf push outputs/run/adapter me/bloomz-complaints

Uploads go through ``huggingface_hub`` (``HfApi.create_repo`` + ``HfApi.upload_folder``), not
``PeftModel.push_to_hub``, which rejects ``safe_serialization`` on transformers 5 and replaces the card
with a generic one (listed in ``softprompt_hf.core.upstream``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, ModelCard, constants, get_token, set_client_factory
from huggingface_hub.errors import HfHubHTTPError
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState
from transformers.utils import logging

from ..constants import DEFAULT_COMMIT_MESSAGE, DEFAULT_TIMEOUT
from ..core.files import replace_folder
from ..core.locations import is_hub_id
from ..core.sharding import gather_root
from ..core.upstream import current_client_factory, http_library, saved_callback_state
from .card import ModelCardCallback, ModelCardInputs, render_model_card, with_base_model
from .saving import CARD_KEY, INFERENCE_CONFIG_NAME, save_adapter

__all__ = [
    "DEFAULT_TIMEOUT",
    "HubPushCallback",
    "HubPushError",
    "check_push_access",
    "push_adapter",
    "push_adapter_folder",
    "push_command",
]

logger = logging.get_logger(__name__)

_TOKEN_HELP = (
    "Create a token with write access at https://huggingface.co/settings/tokens, then run `hf auth login` or set "
    "the HF_TOKEN environment variable"
)


class HubPushError(RuntimeError):
    """A push to the Hub failed; the adapter is saved in ``folder`` and ``command`` pushes it later."""

    def __init__(self, problem: str, *, folder: str | os.PathLike[str], repo_id: str) -> None:
        self.folder = Path(folder)
        self.repo_id = repo_id
        self.command = push_command(folder, repo_id)
        super().__init__(
            f"Could not push the adapter to the Hub repository {repo_id!r}: {problem} The adapter is saved in "
            f"{str(self.folder)!r}; once the problem is fixed, push it with:\n    {self.command}"
        )


def push_command(folder: str | os.PathLike[str], repo_id: str) -> str:
    """The shell command that pushes a saved adapter folder to ``repo_id`` (``softprompt-hf push``)."""
    return f"softprompt-hf push {shlex.quote(str(folder))} {shlex.quote(repo_id)}"


def check_push_access(
    repo_id: str,
    *,
    token: str | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    endpoint: str | None = None,
) -> None:
    """Checks, before any training, that a push to ``repo_id`` can work, and refuses with the problem otherwise.

    Checked: huggingface_hub is not in offline mode, a token exists (``token``, the saved login or
    ``HF_TOKEN``), the Hub accepts it (``whoami``), it is not read-only, and its user may write to the
    repository's namespace (the user's own name, or an organisation where the user has more than read access;
    a fine-grained token must grant ``repo.write`` there or on the repository). Whether an existing repository
    accepts this token's commits cannot be asked without writing; the namespace check stands for it.

    In a distributed run every process must call it: the main process asks the Hub and tells the others, so
    that all refuse together (none trains on, waiting for a main process that stopped).

    Raises:
        ValueError: What is wrong, what to do, and that nothing was trained.
    """
    problem = _shared_between_processes(lambda: _access_problem(repo_id, token, timeout, endpoint))
    if problem:
        raise ValueError(
            f"Cannot push to the Hub repository {repo_id!r}: {problem} Nothing was trained. Fix this and start "
            "again, or train without pushing and push the saved adapter later (softprompt-hf push <folder> "
            f"{repo_id})."
        )


def push_adapter_folder(
    folder: str | os.PathLike[str],
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
    base_model_id: str | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    endpoint: str | None = None,
) -> str:
    """Uploads a saved adapter folder (from ``save_adapter``) to a Hub model repository.

    What is uploaded is prepared in memory first: a card rendered by softprompt_hf (its data is in
    ``softprompt_hf.json``) is rendered again from that data for ``repo_id`` (and ``base_model_id``), so that its
    title, model-index name, usage snippet and base model name the repository it is pushed to and the model others
    can download; a card edited by hand, or one of the caller's own, is pushed as it is, with only its YAML
    ``base_model`` set to ``base_model_id``. A text file that would still carry a local path (the folder, the local
    base model, the home folder) or the token is refused before anything is sent. Then the token and the namespace
    are checked (``check_push_access``), the repository is created if needed, and the folder is uploaded in one
    commit. The local folder is left byte for byte as it was unless the push succeeds; then the files the push
    changed (card, ``softprompt_hf.json``, ``adapter_config.json``) are written there too, as pushed, and the log
    says so. Only the main process should call this.

    Args:
        folder: The adapter folder: ``adapter_config.json``, weights, ``README.md`` card, ``softprompt_hf.json``
            and the tokenizer where it is not the base model's.
        repo_id: ``namespace/name`` of the target repository.
        token: A Hub token with write access; default: the saved login or ``HF_TOKEN``.
        private: Create the repository as private (ignored if it exists).
        commit_message: The commit's message.
        base_model_id: The base model's Hub id, written into ``adapter_config.json`` and the card first when the
            folder names a local path (pitfall: ``AutoPeftModelForCausalLM`` could not find it for anyone else).
        timeout: Seconds any single request may wait for an answer (``None``: forever, the ``huggingface_hub``
            default). huggingface_hub retries timed-out and failed (HTTP 5xx) upload requests a few times; the
            error says how many attempts were made and how long the push waited in total.
        endpoint: The Hub's URL; default ``HF_ENDPOINT`` or https://huggingface.co.

    Returns:
        The URL of the commit.

    Raises:
        ValueError: If the folder holds no adapter, its base model is a local path and no ``base_model_id`` is
            given, or a file to upload names a local path or holds the token (nothing is sent).
        HubPushError: If the push fails (offline mode, no token, token rejected or without write access to the
            namespace, network error, timeout, Hub error); its message says what happened, what became of the
            repository and the command to retry.
    """
    folder = Path(folder)
    if not (folder / "adapter_config.json").is_file():
        raise ValueError(f"{str(folder)!r} holds no adapter_config.json: save the adapter there first (save_adapter).")
    changed = _files_for_push(folder, repo_id, base_model_id)
    token = token or get_token()
    upload = _upload_contents(folder, changed)
    _check_nothing_local(upload, _local_names(folder), token)
    problem = _access_problem(repo_id, token, timeout, endpoint)
    if problem:
        raise HubPushError(problem, folder=folder, repo_id=repo_id)
    api = HfApi(endpoint=endpoint, token=token)
    traffic = _Traffic()
    created: bool | None = None  # unknown until create_repo has answered
    try:
        with _watched_session(timeout, traffic), _staged(upload) as staged:
            created = _create_repo(api, repo_id, private)
            commit = api.upload_folder(folder_path=staged, repo_id=repo_id, commit_message=commit_message)
    except Exception as err:
        problem = _redact(_describe(err, api.endpoint, timeout, repo_id, traffic), token)
        raise HubPushError(problem + _repo_state(repo_id, created), folder=folder, repo_id=repo_id) from None
    logger.info(f"Pushed {folder} to {api.endpoint}/{repo_id} ({commit.oid[:8]})")
    if changed:
        # Only now that the repository holds them: the local folder then says what the repository says.
        replace_folder(folder, lambda new: _copy_with(folder, new, changed))
        logger.info(
            f"Updated {', '.join(sorted(changed))} in {folder} as pushed (the card rendered for {repo_id}, the base "
            "model named by its Hub id)."
        )
    return str(commit.commit_url)


def _create_repo(api: HfApi, repo_id: str, private: bool | None) -> bool:
    """Creates the repository if it does not exist; returns whether this call created it."""
    try:
        api.create_repo(repo_id, private=private, exist_ok=False)
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        if status == 409:  # it exists
            return False
        # The Hub answers 403 to a create in an organisation where the token may write but not create repositories.
        if status == 403 and api.repo_exists(repo_id):
            return False
        raise
    return True


def _repo_state(repo_id: str, created: bool | None) -> str:
    if created is None:
        return ""
    if created:
        return (
            f" The repository {repo_id!r} was created by this push and holds none of the adapter's files (the upload "
            "is a single commit, and it failed)."
        )
    return (
        f" The repository {repo_id!r} existed already and is unchanged (the upload is a single commit, and it failed)."
    )


def push_adapter(
    model: Any,
    repo_id: str,
    *,
    base_model_id: str,
    output_dir: str | os.PathLike[str],
    tokenizer: Any | None = None,
    card: ModelCardInputs | ModelCard | None = None,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
    timeout: float | None = DEFAULT_TIMEOUT,
    endpoint: str | None = None,
    **settings: Any,
) -> Path:
    """Saves a trained adapter to ``output_dir`` (atomically, with ``save_adapter``), then pushes that folder to
    ``repo_id``.

    For use outside the Trainer (``HubPushCallback`` does the same at the end of training). ``card`` and
    ``settings`` (``labels``, ``template``, ``text_column``, ``label_tokenization``, ``class_names``, ``eval_mode``)
    are ``save_adapter``'s: without ``card``, the card is rendered from the model and ``settings``. Card data
    (``ModelCardInputs``) is kept in ``softprompt_hf.json``, so that a later push to another repository renders the
    card for that one; a ``huggingface_hub.ModelCard`` given here is pushed as it is.

    Returns:
        The local folder, which holds the complete adapter even when the push fails.

    Raises:
        ValueError: If ``base_model_id`` is not a Hub id.
        HubPushError: If the push fails; the adapter is saved all the same.

    Example:

    ```python
    >>> push_adapter(model, "me/bloomz-complaints", base_model_id="bigscience/bloomz-560m",
    ...              output_dir="outputs/adapter", tokenizer=tokenizer)
    PosixPath('outputs/adapter')
    >>> from huggingface_hub import HfApi
    >>> HfApi().file_exists("me/bloomz-complaints", "adapter_model.safetensors")
    True

    ```
    """
    _check_base_model_id(base_model_id)
    folder = save_adapter(
        model, output_dir, tokenizer=tokenizer, base_model_id=base_model_id, card=card, repo_id=repo_id, **settings
    )
    push_adapter_folder(
        folder, repo_id, token=token, private=private, commit_message=commit_message, timeout=timeout, endpoint=endpoint
    )
    return folder


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
        _check_base_model_id(base_model_id)
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


def _check_base_model_id(base_model_id: str) -> None:
    if not is_hub_id(base_model_id):
        raise ValueError(
            f"base_model_id={base_model_id!r} is a local path, not a Hub id: adapter_config.json and the card would "
            "point others at a folder only you have. Pass the Hub id the base model comes from, e.g. "
            "base_model_id='bigscience/bloomz-560m'."
        )


def _files_for_push(folder: Path, repo_id: str, base_model_id: str | None) -> dict[str, str]:
    """The files of the saved folder that the push changes (name -> new content), for ``repo_id`` and the base
    model's Hub id; nothing is written here.

    Refused: a folder whose adapter names a local base model, unless ``base_model_id`` replaces it. The Hub id goes
    into ``adapter_config.json`` (and replaces a local ``tokenizer_name_or_path``, recorded by TEXT-initialised
    prompt tuning: the tokenizer is the base model's) and ``softprompt_hf.json`` (its card data's PEFT config
    too). A card rendered from the data in ``softprompt_hf.json``, and unchanged since, is rendered again from that
    data for ``repo_id`` and the base model; any other card (edited by hand, a caller's own, or from an older
    softprompt_hf) is kept as it is, with only its YAML ``base_model`` set (``ModelCardData``) when
    ``base_model_id`` is given.
    """
    config_path = folder / "adapter_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    current = config.get("base_model_name_or_path") or ""
    if base_model_id is None and not is_hub_id(current):
        raise ValueError(
            f"{config_path} names the base model {current!r}, which is not a Hub id: nobody else could load "
            "the adapter. Pass the base model's Hub id (base_model_id=... or --base-model-id) to write it "
            "into the adapter and its card before the push."
        )
    if base_model_id is not None:
        _check_base_model_id(base_model_id)
    base = base_model_id or current
    files: dict[str, str] = {}
    updates = {}
    if current != base:
        updates["base_model_name_or_path"] = base
    tokenizer_source = config.get("tokenizer_name_or_path")
    if tokenizer_source and not is_hub_id(tokenizer_source):
        updates["tokenizer_name_or_path"] = base
    if updates:
        files[config_path.name] = _json_text({**config, **updates})
    settings_path = folder / INFERENCE_CONFIG_NAME
    settings = json.loads(settings_path.read_text(encoding="utf-8")) if settings_path.is_file() else {}
    settings = settings if isinstance(settings, dict) else {}
    new_settings = {**settings, "base_model": base_model_id} if base_model_id is not None and settings else settings
    stored = settings.get(CARD_KEY)
    stored = stored if isinstance(stored, dict) else None
    data = ModelCardInputs.from_dict(stored) if stored is not None else None
    card_path = folder / "README.md"
    text = card_path.read_text(encoding="utf-8") if card_path.is_file() else None
    rendered = data is not None and text == render_model_card(data, repo_id=data.repo_id).content
    if data is not None and base_model_id is not None and base_model_id != data.base_model:
        data = with_base_model(data, base_model_id)
        new_settings = {**new_settings, CARD_KEY: data.to_dict()}
    if data is not None and rendered:
        data = data.replace(repo_id=repo_id)
        files["README.md"] = render_model_card(data, repo_id=repo_id).content
        new_settings = {**new_settings, CARD_KEY: data.to_dict()}
    elif text is not None:
        if stored is not None:
            older = {spec.name for spec in dataclasses.fields(ModelCardInputs)} - set(stored)
            why = (
                "was written by an older softprompt_hf (save the adapter again for a card rendered for the repository)"
                if older
                else "was edited after softprompt_hf wrote it"
            )
            logger.warning(f"{card_path} {why}, so it is pushed as it is; check that it names {repo_id!r}.")
        card = ModelCard(text)
        metadata: Any = card.data  # a ModelCardData (typed as its base class)
        if base_model_id is not None and metadata.base_model != base_model_id:
            metadata.base_model = base_model_id
            files["README.md"] = card.content
    if new_settings != settings:
        files[INFERENCE_CONFIG_NAME] = _json_text(new_settings)
    return files


def _upload_contents(folder: Path, changed: Mapping[str, str]) -> dict[str, Path | bytes]:
    """What the push uploads (path in the repository -> file or content): every file of ``folder`` outside hidden
    folders and files (temporary and cache files), those in ``changed`` with their new content."""
    upload: dict[str, Path | bytes] = {}
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if path.is_file() and not any(part.startswith(".") for part in name.split("/")):
            upload[name] = changed[name].encode("utf-8") if name in changed else path
    return upload


@contextlib.contextmanager
def _staged(upload: Mapping[str, Path | bytes]) -> Iterator[Path]:
    """A temporary folder outside the adapter's holding what ``upload`` says, for ``HfApi.upload_folder``: the
    adapter folder itself is not touched before the push has succeeded."""
    with tempfile.TemporaryDirectory(prefix="softprompt_hf-push-") as root:
        staged = Path(root) / "adapter"
        for name, content in upload.items():
            target = staged / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                shutil.copyfile(content, target)
        yield staged


def _local_names(folder: Path) -> list[str]:
    """Names that only mean something on this machine: the adapter folder, the local base model and tokenizer it
    was saved with, and the home folder (which holds the user's name)."""
    names = {str(folder.absolute()), str(folder.resolve()), str(Path.home())}
    config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    for key in ("base_model_name_or_path", "tokenizer_name_or_path"):
        value = config.get(key)
        if isinstance(value, str) and value and not is_hub_id(value):
            names |= {value, str(Path(value).expanduser().absolute())}
    # One character or the root ("/", "C:\\") would match everything.
    return sorted(name for name in names if len(name.strip("/\\")) > 2)


def _check_nothing_local(upload: Mapping[str, Path | bytes], local_names: Sequence[str], token: str | None) -> None:
    """Refuses, before anything is sent, an upload whose text files hold a local path or the token.

    The push writes the Hub ids into every field it knows (``_files_for_push``); this is the last look at what
    actually leaves the machine, including a card or file the user wrote.
    """
    for name, content in upload.items():
        data = content if isinstance(content, bytes) else content.read_bytes()
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            continue  # weights and other binary files
        if token and token.encode() in data:
            raise ValueError(
                f"{name} in the adapter folder holds the Hub token, which must never be uploaded: remove it from "
                "the file, then push again. Nothing was pushed."
            )
        for local in local_names:
            if local.encode() in data:
                raise ValueError(
                    f"{name} in the adapter folder names the local path {local!r}, which would be uploaded for "
                    "everyone to read and means nothing on their machines. Edit it out (a base model is named by "
                    "its Hub id: --base-model-id / base_model_id=...), then push again. Nothing was pushed."
                )


def _json_text(payload: Any) -> str:
    return json.dumps(payload, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def _copy_with(source: Path, target: Path, files: Mapping[str, str]) -> None:
    """Fills ``target`` with what ``source`` holds (subfolders too), the files named in ``files`` with their new
    content."""
    for path in source.iterdir():
        if path.is_dir():
            shutil.copytree(path, target / path.name)
        elif path.name not in files:
            shutil.copy2(path, target / path.name)
    for name, content in files.items():
        (target / name).write_text(content, encoding="utf-8")


def _access_problem(repo_id: str, token: str | None, timeout: float | None, endpoint: str | None) -> str | None:
    """What stops a push to ``repo_id`` before anything is uploaded, or None. Never raises: in a distributed run
    the answer is shared with every process."""
    if constants.is_offline_mode():
        return (
            "huggingface_hub is in offline mode (HF_HUB_OFFLINE=1), so nothing can be uploaded. Unset HF_HUB_OFFLINE "
            "on a machine that reaches the Hub."
        )
    token = token or get_token()
    if not token:
        return f"no Hugging Face token was found. {_TOKEN_HELP}."
    traffic = _Traffic()
    api = HfApi(endpoint=endpoint, token=token)
    try:
        with _watched_session(timeout, traffic):
            identity = api.whoami(token=token)
    except Exception as err:
        return _redact(_describe(err, api.endpoint, timeout, repo_id, traffic), token)
    return _namespace_problem(identity, repo_id)


def _namespace_problem(identity: Mapping[str, Any], repo_id: str) -> str | None:
    """Whether ``whoami``'s answer lets the token write to ``repo_id``'s namespace; None when it does (or when the
    answer does not say)."""
    namespace = repo_id.split("/")[0]
    user = identity.get("name")
    orgs = {org.get("name"): org.get("roleInOrg") for org in identity.get("orgs") or [] if isinstance(org, dict)}
    access = (identity.get("auth") or {}).get("accessToken") or {}
    role = access.get("role")
    if role == "read":
        return f"the token is read-only (role 'read'), so it can neither create nor write a repository. {_TOKEN_HELP}."
    if namespace != user and namespace not in orgs:
        yours = ", ".join(repr(name) for name in [user, *orgs] if name)
        return (
            f"the token belongs to {user!r}, who may not write to the namespace {namespace!r} (the token's "
            f"namespaces: {yours}). Push to one of those, e.g. {user}/{repo_id.split('/')[-1]}, or use a token of "
            f"a member of {namespace!r} with write access."
        )
    if namespace in orgs and orgs[namespace] == "read":
        return (
            f"{user!r} has only read access to the organisation {namespace!r}. Ask an admin of {namespace!r} for "
            "write access, or push to your own namespace."
        )
    if role == "fineGrained":
        scoped = (access.get("fineGrained") or {}).get("scoped")
        if isinstance(scoped, list):
            writable = {
                (entry.get("entity") or {}).get("name")
                for entry in scoped
                if isinstance(entry, dict) and "repo.write" in (entry.get("permissions") or [])
            }
            if namespace not in writable and repo_id not in writable:
                return (
                    f"the fine-grained token grants no write access ('repo.write') to {namespace!r} or {repo_id!r}. "
                    "Add that permission at https://huggingface.co/settings/tokens, or use a token with write access."
                )
    return None


def _shared_between_processes(check: Callable[[], str | None]) -> str | None:
    """``check()`` on the main process, its answer on every process of a distributed run (or ``check()`` here)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return check()
    answer = [check() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(answer, src=0)
    return answer[0]


@dataclasses.dataclass
class _Traffic:
    """The requests a push sent (method and path of each attempt, retries included) and when it started."""

    attempts: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    started: float = dataclasses.field(default_factory=time.monotonic)

    def record(self, request: Any) -> None:
        self.attempts.append((request.method, request.url.path))

    def last_request(self) -> tuple[str, int]:
        """The last request (``"POST /api/..."``) and how many attempts in a row it got."""
        if not self.attempts:
            return "a request", 0
        last = self.attempts[-1]
        tries = 0
        for attempt in reversed(self.attempts):
            if attempt != last:
                break
            tries += 1
        return f"{last[0]} {last[1]}", tries


@contextlib.contextmanager
def _watched_session(timeout: float | None, traffic: _Traffic) -> Iterator[None]:
    """huggingface_hub's shared HTTP client, with ``timeout`` on every request and each request recorded.

    The shared client has no timeout (a silent server would hang the end of training), and huggingface_hub
    closes and rebuilds it after a connection error, so the timeout and the recording go into the client factory
    for as long as the push runs. The previous factory is read from huggingface_hub 2.4's private state
    (``softprompt_hf.core.upstream.current_client_factory``): there is no public getter.
    """
    previous = current_client_factory()
    http = http_library()

    def factory() -> Any:
        client = previous()
        client.timeout = http.Timeout(timeout)
        client.event_hooks["request"].append(traffic.record)
        return client

    set_client_factory(factory)  # closes the current client: the next request gets one of ours
    try:
        yield
    finally:
        set_client_factory(previous)


def _describe(err: Exception, endpoint: str, timeout: float | None, repo_id: str, traffic: _Traffic) -> str:
    request, tries = traffic.last_request()
    total = len(traffic.attempts)
    waited = time.monotonic() - traffic.started
    retried = f" ({tries} attempts: huggingface_hub retried it)" if tries > 1 else ""
    summary = f" The push gave up after {total} request{'s' if total != 1 else ''} and {waited:.1f} s in total."
    if isinstance(err, HfHubHTTPError) and err.response is not None:
        status = err.response.status_code
        if status == 401:
            return f"the Hub at {endpoint} rejected the token (HTTP 401: invalid or expired). {_TOKEN_HELP}."
        if status == 403:
            namespace = repo_id.split("/")[0]
            return (
                f"the token may not write to {namespace!r} (HTTP 403). Use a token with write access to that "
                "namespace, or push to your own namespace."
            )
        first_line = str(err).strip().splitlines()[0]
        return f"the Hub at {endpoint} answered HTTP {status} to {request}{retried}: {first_line}.{summary}"
    http = http_library()
    if isinstance(err, http.TimeoutException):
        return (
            f"the Hub at {endpoint} did not answer {request} within {timeout} s, {tries} "
            f"attempt{'s' if tries != 1 else ''} in a row (huggingface_hub retries timed-out requests).{summary} "
            "Check your connection, or push later with a longer timeout (--timeout, or --push_timeout in the "
            "recipes)."
        )
    if isinstance(err, http.TransportError | OSError):
        return (
            f"could not reach the Hub at {endpoint} (network error: {err}; {request}, {tries} "
            f"attempt{'s' if tries != 1 else ''}).{summary} Check the connection and HF_ENDPOINT."
        )
    return f"{type(err).__name__}: {err}."


def _redact(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text
