"""Push a trained soft prompt to the Hugging Face Hub: saved locally first, then uploaded.

The adapter is always written to a local folder (``save_adapter``) before any network step, so a missing
or rejected token, a network error or a timeout never loses it; the ``HubPushError`` then says what went
wrong and gives the command that pushes the saved folder later::

    softprompt-hf push outputs/run/hub_adapter me/bloomz-complaints

Uploads go through ``huggingface_hub`` (``HfApi.create_repo`` + ``HfApi.upload_folder``), not
``PeftModel.push_to_hub``, which rejects ``safe_serialization`` on transformers 5 and replaces the card
with a generic one.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shlex
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, ModelCard, constants, get_session, get_token
from huggingface_hub.errors import HfHubHTTPError
from transformers import TrainerCallback
from transformers.utils import logging

from .card import build_model_card, is_hub_id, name_base_model_in_card
from .saving import INFERENCE_CONFIG_NAME, atomic_write_json, atomic_write_text, inference_settings, save_adapter

__all__ = [
    "DEFAULT_TIMEOUT",
    "HubPushCallback",
    "HubPushError",
    "push_adapter",
    "push_adapter_folder",
    "push_command",
]

logger = logging.get_logger(__name__)

#: Seconds a single Hub request may stay silent before the push is abandoned (huggingface_hub waits forever).
DEFAULT_TIMEOUT = 60.0
_DEFAULT_COMMIT_MESSAGE = "Upload soft-prompt adapter with softprompt_hf"
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


def push_adapter_folder(
    folder: str | os.PathLike[str],
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str = _DEFAULT_COMMIT_MESSAGE,
    base_model_id: str | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    endpoint: str | None = None,
) -> str:
    """Uploads a saved adapter folder (from ``save_adapter``) to a Hub model repository.

    The repository is created if needed (``exist_ok``), then the folder is uploaded in one commit. Only the
    main process should call this.

    Args:
        folder: The adapter folder: ``adapter_config.json``, weights, tokenizer, ``README.md`` card.
        repo_id: ``namespace/name`` of the target repository.
        token: A Hub token with write access; default: the saved login or ``HF_TOKEN``.
        private: Create the repository as private (ignored if it exists).
        commit_message: The commit's message.
        base_model_id: The base model's Hub id, written into ``adapter_config.json`` and the card first when the
            folder names a local path (pitfall: ``AutoPeftModelForCausalLM`` could not find it for anyone else).
        timeout: Seconds any single request may take before the push fails (``None``: wait forever, the
            ``huggingface_hub`` default).
        endpoint: The Hub's URL; default ``HF_ENDPOINT`` or https://huggingface.co.

    Returns:
        The URL of the commit.

    Raises:
        ValueError: If the folder holds no adapter, or its base model is a local path and no
            ``base_model_id`` is given.
        HubPushError: If the push fails (no token, token rejected, network error, timeout, Hub error); its
            message says what happened and the command to retry.
    """
    folder = Path(folder)
    config_path = folder / "adapter_config.json"
    if not config_path.is_file():
        raise ValueError(f"{str(folder)!r} holds no adapter_config.json: save the adapter there first (save_adapter).")
    _name_base_model(folder, base_model_id)
    if constants.is_offline_mode():
        raise HubPushError(
            "huggingface_hub is in offline mode (HF_HUB_OFFLINE=1), so nothing can be uploaded. Unset HF_HUB_OFFLINE "
            "on a machine that reaches the Hub.",
            folder=folder,
            repo_id=repo_id,
        )
    token = token or get_token()
    if not token:
        raise HubPushError(f"no Hugging Face token was found. {_TOKEN_HELP}.", folder=folder, repo_id=repo_id)
    api = HfApi(endpoint=endpoint, token=token)
    endpoint = api.endpoint
    try:
        with _request_timeout(timeout):
            api.create_repo(repo_id, private=private, exist_ok=True)
            commit = api.upload_folder(
                folder_path=folder, repo_id=repo_id, commit_message=commit_message, ignore_patterns=[".*"]
            )
    except Exception as err:
        problem = _redact(_describe(err, endpoint, timeout, repo_id), token)
        raise HubPushError(problem, folder=folder, repo_id=repo_id) from None
    logger.info(f"Pushed {folder} to {endpoint}/{repo_id} ({commit.oid[:8]})")
    return str(commit.commit_url)


def push_adapter(
    model: Any,
    repo_id: str,
    *,
    base_model_id: str,
    output_dir: str | os.PathLike[str],
    tokenizer: Any | None = None,
    model_card: ModelCard | None = None,
    extra_json: dict[str, Any] | None = None,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str = _DEFAULT_COMMIT_MESSAGE,
    timeout: float | None = DEFAULT_TIMEOUT,
    endpoint: str | None = None,
) -> Path:
    """Saves a trained adapter to ``output_dir`` (atomically), then pushes that folder to ``repo_id``.

    For use outside the Trainer (the callback does the same at the end of training). Without ``model_card``
    a card is built from ``extra_json``'s labels and template (see ``build_model_card``).

    Returns:
        The local folder, which holds the complete adapter even when the push fails.

    Raises:
        ValueError: If ``base_model_id`` is not a Hub id.
        HubPushError: If the push fails; the adapter is saved all the same.

    Example:

    ```python
    >>> push_adapter(model, "me/bloomz-complaints", base_model_id="bigscience/bloomz-560m",
    ...              output_dir="outputs/adapter", tokenizer=tokenizer)  # doctest: +SKIP
    ```
    """
    _check_base_model_id(base_model_id)
    extra = extra_json or {}
    if model_card is None:
        model_card = build_model_card(
            model,
            base_model=base_model_id,
            labels=extra.get("labels"),
            template=extra.get("template"),
            text_column=extra.get("text_column"),
            repo_id=repo_id,
        )
    folder = save_adapter(
        model,
        output_dir,
        tokenizer=tokenizer,
        base_model_id=base_model_id,
        model_card=model_card,
        extra_json=extra_json,
    )
    push_adapter_folder(
        folder, repo_id, token=token, private=private, commit_message=commit_message, timeout=timeout, endpoint=endpoint
    )
    return folder


class HubPushCallback(TrainerCallback):
    """Pushes the adapter, the tokenizer and a model card to a Hub repository when training ends.

    On the main process only, the adapter is first saved with ``save_adapter`` into
    ``<output_dir>/<local_dir>`` (the base model named by its Hub id, the card built by ``build_model_card``,
    ``softprompt_hf.json`` for ``softprompt-hf predict``), then uploaded. If the upload fails at the end of
    training, ``trainer.train()`` raises a ``HubPushError`` that gives the command to push the saved folder.

    With ``push_best=True`` the adapter is saved and pushed each time the evaluation improves
    ``metric_for_best_model`` (a failed push is logged and retried at the end of training), and the
    repository keeps the best adapter instead of the last one.

    Args:
        repo_id: ``namespace/name`` of the target repository.
        base_model_id: The base model's Hub id, even when the model was loaded from a local copy.
        token: A Hub token with write access; default: the saved login or ``HF_TOKEN``. Never logged or saved.
        private: Create the repository as private.
        push_best: Push at each new best evaluation rather than only the final adapter.
        metrics: The run's ``GenerationMetrics``, for the labels, template and confusion matrix in the card.
        labels: The label texts (default: ``metrics.labels``).
        template: The prompt template (default: ``metrics.template``).
        text_column: The text column (default: ``metrics.text_column``).
        dataset: The dataset's Hub id, for the card.
        dataset_config: The dataset's config, for the card.
        license: The license id, for the card.
        local_dir: Folder under ``args.output_dir`` where the adapter is saved before the push.
        timeout: Seconds any single Hub request may take.
        endpoint: The Hub's URL (default ``HF_ENDPOINT``).

    Example:

    ```python
    >>> trainer = Trainer(..., callbacks=[HubPushCallback("me/bloomz-complaints",
    ...                                                   base_model_id="bigscience/bloomz-560m")])  # doctest: +SKIP
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
        local_dir: str = "hub_adapter",
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
        self.metrics = metrics
        self.labels = labels
        self.template = template
        self.text_column = text_column
        self.dataset = dataset
        self.dataset_config = dataset_config
        self.license = license
        self.local_dir = local_dir
        self.timeout = timeout
        self.endpoint = endpoint
        self.folder: Path | None = None
        self.pushed = False
        self._best: float | None = None

    @classmethod
    def from_training_args(cls, training_args: Any, *, base_model_id: str, **kwargs: Any) -> HubPushCallback:
        """The callback for a run started with ``--push_to_hub --hub_model_id <repo>``.

        Reads ``hub_model_id``, ``hub_token`` and ``hub_private_repo`` from the ``TrainingArguments`` and sets
        their ``push_to_hub`` to ``False``, so that the Trainer does not push on its own as well (it would
        upload at every save, with peft's card and the local base-model path). Call it before building the
        Trainer. Other keyword arguments go to the constructor.
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
        return callback

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

    def on_evaluate(self, args, state, control, metrics=None, model=None, processing_class=None, **kwargs):
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
        if not state.is_world_process_zero:
            return
        if self.push_best and self.folder is not None:
            if not self.pushed:
                self._push(f"Best adapter: {args.metric_for_best_model} = {self._best:.4f}")
            return
        self._save(args, state, model, processing_class, _last_eval_metrics(state.log_history))
        self._push(f"Adapter after {state.global_step} training steps")

    def _save(self, args, state, model, tokenizer, metrics: Mapping[str, float] | None) -> None:
        if model is None:
            raise ValueError("HubPushCallback needs the model: pass it to the Trainer.")
        if tokenizer is None:
            logger.warning(
                "HubPushCallback got no tokenizer, so the pushed repository will hold none and the card's usage "
                "snippet will not run: pass processing_class=tokenizer to the Trainer."
            )
        generation_metrics = self.metrics
        labels = self.labels or (list(generation_metrics.labels) if generation_metrics is not None else None)
        template = self.template or getattr(generation_metrics, "template", None)
        text_column = self.text_column or getattr(generation_metrics, "text_column", None)
        card = build_model_card(
            model,
            base_model=self.base_model_id,
            metrics=metrics,
            report=getattr(generation_metrics, "last_report", None),
            training_args=args,
            log_history=state.log_history,
            dataset=self.dataset,
            dataset_config=self.dataset_config,
            labels=labels,
            template=template,
            text_column=text_column,
            license=self.license,
            repo_id=self.repo_id,
        )
        self.folder = save_adapter(
            model,
            Path(args.output_dir) / self.local_dir,
            tokenizer=tokenizer,
            base_model_id=self.base_model_id,
            model_card=card,
            extra_json=inference_settings(
                model, labels=labels, template=template, text_column=text_column, base_model=self.base_model_id
            ),
        )
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


def _last_eval_metrics(log_history: Sequence[Mapping[str, Any]]) -> dict[str, float] | None:
    for entry in reversed(log_history):
        if any(key.startswith("eval_") for key in entry):
            return {k: v for k, v in entry.items() if k.startswith("eval_")}
    return None


def _check_base_model_id(base_model_id: str) -> None:
    if not is_hub_id(base_model_id):
        raise ValueError(
            f"base_model_id={base_model_id!r} is a local path, not a Hub id: adapter_config.json and the card would "
            "point others at a folder only you have. Pass the Hub id the base model comes from, e.g. "
            "base_model_id='bigscience/bloomz-560m'."
        )


def _name_base_model(folder: Path, base_model_id: str | None) -> None:
    """Refuses a folder whose adapter names a local base model, unless ``base_model_id`` replaces it.

    A local ``tokenizer_name_or_path`` (recorded by TEXT-initialised prompt tuning) is replaced by the base
    model's Hub id too: the tokenizer is the base model's, and a path on this machine means nothing to others.
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
    updates = {}
    if current != base:
        updates["base_model_name_or_path"] = base
    tokenizer_source = config.get("tokenizer_name_or_path")
    if tokenizer_source and not is_hub_id(tokenizer_source):
        updates["tokenizer_name_or_path"] = base
    if updates:
        logger.info(f"Naming the base model by its Hub id in {config_path}: {updates}")
        atomic_write_json(config_path, {**config, **updates})
    if base_model_id is None:
        return
    inference_path = folder / INFERENCE_CONFIG_NAME
    if inference_path.is_file():
        inference = json.loads(inference_path.read_text(encoding="utf-8"))
        if inference.get("base_model") != base_model_id:
            atomic_write_json(inference_path, {**inference, "base_model": base_model_id})
    card_path = folder / "README.md"
    if card_path.is_file():
        card = ModelCard.load(card_path)
        before = card.content
        if current and current != base_model_id:
            name_base_model_in_card(card, current, base_model_id)
        card.data.base_model = base_model_id
        if card.content != before:
            atomic_write_text(card_path, card.content)


def _http_library() -> Any:
    """The HTTP library of huggingface_hub's client (``httpx2`` in 2.x, ``httpx`` in 1.x), for its timeout and
    error types, without depending on either name."""
    return importlib.import_module(type(get_session()).__module__.split(".")[0])


@contextlib.contextmanager
def _request_timeout(timeout: float | None) -> Iterator[None]:
    # huggingface_hub's shared HTTP client has no timeout: a silent server would hang the end of training.
    session = get_session()
    previous = session.timeout
    session.timeout = _http_library().Timeout(timeout)
    try:
        yield
    finally:
        session.timeout = previous


def _describe(err: Exception, endpoint: str, timeout: float | None, repo_id: str) -> str:
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
        return f"the Hub at {endpoint} answered HTTP {status}: {str(err).strip().splitlines()[0]}."
    http = _http_library()
    if isinstance(err, http.TimeoutException):
        return (
            f"the Hub at {endpoint} did not answer within {timeout} s (timeout). Check your connection, or push "
            "later with a longer timeout (--timeout)."
        )
    if isinstance(err, http.TransportError | OSError):
        return f"could not reach the Hub at {endpoint} (network error: {err}). Check the connection and HF_ENDPOINT."
    return f"{type(err).__name__}: {err}."


def _redact(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text
