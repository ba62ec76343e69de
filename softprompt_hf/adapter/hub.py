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
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, ModelCard, get_token
from huggingface_hub.errors import HfHubHTTPError
from transformers.utils import logging

from ..constants import DEFAULT_COMMIT_MESSAGE, DEFAULT_TIMEOUT
from ..core.files import replace_folder
from ..core.locations import is_hub_id
from .card import ModelCardInputs, render_model_card, with_base_model
from .hub_errors import Traffic, access_problem, describe, redact, watched_session
from .saving import CARD_KEY, INFERENCE_CONFIG_NAME, save_adapter

__all__ = [
    "DEFAULT_TIMEOUT",
    "HubPushError",
    "check_base_model_id",
    "check_push_access",
    "push_adapter",
    "push_adapter_folder",
    "push_command",
]

logger = logging.get_logger(__name__)


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
    problem = _shared_between_processes(lambda: access_problem(repo_id, token, timeout, endpoint))
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
    problem = access_problem(repo_id, token, timeout, endpoint)
    if problem:
        raise HubPushError(problem, folder=folder, repo_id=repo_id)
    api = HfApi(endpoint=endpoint, token=token)
    traffic = Traffic()
    created: bool | None = None  # unknown until create_repo has answered
    try:
        with watched_session(timeout, traffic), _staged(upload) as staged:
            created = _create_repo(api, repo_id, private)
            commit = api.upload_folder(folder_path=staged, repo_id=repo_id, commit_message=commit_message)
    except Exception as err:
        problem = redact(describe(err, api.endpoint, timeout, repo_id, traffic), token)
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
    check_base_model_id(base_model_id)
    folder = save_adapter(
        model, output_dir, tokenizer=tokenizer, base_model_id=base_model_id, card=card, repo_id=repo_id, **settings
    )
    push_adapter_folder(
        folder, repo_id, token=token, private=private, commit_message=commit_message, timeout=timeout, endpoint=endpoint
    )
    return folder


def check_base_model_id(base_model_id: str) -> None:
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
        check_base_model_id(base_model_id)
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


def _shared_between_processes(check: Callable[[], str | None]) -> str | None:
    """``check()`` on the main process, its answer on every process of a distributed run (or ``check()`` here)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return check()
    answer = [check() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(answer, src=0)
    return answer[0]
