"""Pushing adapters to the Hub, through the real huggingface_hub client, against the local server in hub_server.py."""

from __future__ import annotations

import json
import logging
import re
import shlex
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import METHODS, labelled_rows, next_token_logits
from datasets import Dataset
from hub_server import BASE_ID, TOKEN, HubServer, hub_fixture, point_hub_client_at  # noqa: F401  (hub fixture)
from huggingface_hub import ModelCard, constants
from huggingface_hub.utils import _http
from peft import AutoPeftModelForCausalLM
from test_recipes import EMBEDDED_HUB_ID, load_recipe
from trained_adapters import LABELS, one_thread, train_tiny_adapter
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainerCallback, TrainerState, TrainingArguments
from transformers.utils import logging as hf_logging

from softprompt_hf import GenerationMetrics, SoftPromptDataCollator, build_soft_prompt_model
from softprompt_hf.adapter.card import model_card_inputs, render_model_card
from softprompt_hf.adapter.hub import HubPushError, push_adapter, push_adapter_folder
from softprompt_hf.adapter.hub_callback import HubPushCallback
from softprompt_hf.adapter.saving import save_adapter
from softprompt_hf.cli import main as cli_main
from softprompt_hf.embedded import EMBEDDED_MODEL_PATH
from softprompt_hf.inference.labels import generate_label_ids

pytestmark = pytest.mark.usefixtures(one_thread.__name__)


TEXTS = [row["Tweet text"] for row in labelled_rows(24)[8:16]]


@pytest.mark.parametrize("method", METHODS)
def test_trainer_pushes_and_auto_peft_model_loads_it_from_the_hub(hub, tmp_path, method):
    repo_id = f"alice/tiny-{method}"
    callback = HubPushCallback(repo_id, base_model_id=BASE_ID, token=TOKEN, dataset="ought/raft", license="apache-2.0")
    trainer = train_tiny_adapter(hub.base_dir, method, tmp_path / "run", callbacks=[callback])
    model, tokenizer = trainer.model, trainer.processing_class
    expected_ids = generate_label_ids(model, tokenizer, TEXTS, show_progress=False)
    expected_logits = next_token_logits(model, tokenizer, TEXTS)

    repo = hub.repos[repo_id]
    # The run's tokenizer is the base model's own: the repository names it instead of holding a copy.
    assert sorted(repo.files) == ["README.md", "adapter_config.json", "adapter_model.safetensors", "softprompt_hf.json"]
    assert json.loads(repo.files["adapter_config.json"])["base_model_name_or_path"] == BASE_ID
    card = ModelCard(repo.files["README.md"].decode())
    assert card.data.base_model == BASE_ID and card.data.library_name == "peft"
    settings = json.loads(repo.files["softprompt_hf.json"])
    assert settings["labels"] == LABELS and settings["method"] == method and settings["base_model"] == BASE_ID
    assert settings["tokenizer"] == "base_model"
    assert f"tokenizer = AutoTokenizer.from_pretrained({BASE_ID!r}, padding_side=" in card.text
    # Saved locally before the push, with the same files.
    assert callback.folder == tmp_path / "run" / "adapter"
    assert sorted(p.name for p in callback.folder.iterdir()) == sorted(repo.files)

    seen = len(hub.requests)
    reloaded = AutoPeftModelForCausalLM.from_pretrained(repo_id)
    reloaded_tokenizer = AutoTokenizer.from_pretrained(settings["base_model"])  # where softprompt_hf.json says
    downloads = {path for verb, path in hub.requests[seen:] if verb == "GET"}
    assert any(p.startswith(f"/{BASE_ID}/resolve/") and p.endswith("/model.safetensors") for p in downloads)
    assert any(p.startswith(f"/{repo_id}/resolve/") and p.endswith("/adapter_model.safetensors") for p in downloads)
    assert any(p.startswith(f"/{BASE_ID}/resolve/") and p.endswith("/tokenizer.json") for p in downloads)

    assert generate_label_ids(reloaded, reloaded_tokenizer, TEXTS, show_progress=False) == expected_ids
    torch.testing.assert_close(
        next_token_logits(reloaded, reloaded_tokenizer, TEXTS), expected_logits, rtol=1e-4, atol=1e-4
    )


def test_push_best_pushes_each_improvement_and_keeps_the_best(hub, tmp_path):
    callback = HubPushCallback("alice/best", base_model_id=BASE_ID, token=TOKEN, push_best=True)
    trainer = train_tiny_adapter(
        hub.base_dir,
        "prompt_tuning",
        tmp_path / "run",
        callbacks=[callback],
        num_train_epochs=4,
        metric_for_best_model="loss",
    )
    losses = [e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e]
    improvements = sum(loss < min(losses[:i], default=float("inf")) for i, loss in enumerate(losses))
    assert len(losses) == 4 and improvements >= 2
    assert hub.repos["alice/best"].commits == improvements  # one commit per new best, none at the end
    card = ModelCard(hub.repos["alice/best"].files["README.md"].decode())
    best = min(losses)
    assert card.data.eval_results and any(
        r.metric_type == "loss" and r.metric_value == best for r in card.data.eval_results
    )


def test_from_training_args_takes_the_repo_and_token_and_stops_the_trainers_own_push(hub, tmp_path):
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"), push_to_hub=True, hub_model_id="alice/flags", hub_token=TOKEN
    )
    callback = HubPushCallback.from_training_args(args, base_model_id=BASE_ID)
    assert args.push_to_hub is False and callback.repo_id == "alice/flags"
    train_tiny_adapter(hub.base_dir, "p_tuning", tmp_path / "run", callbacks=[callback], num_train_epochs=1)
    assert "adapter_model.safetensors" in hub.repos["alice/flags"].files
    with pytest.raises(ValueError, match="hub_model_id"):
        HubPushCallback.from_training_args(TrainingArguments(output_dir=str(tmp_path)), base_model_id=BASE_ID)


def test_the_trainers_own_push_is_refused_beside_the_callback(hub, tmp_path):
    callback = HubPushCallback("alice/twice", base_model_id=BASE_ID, token=TOKEN)
    with pytest.raises(ValueError, match="push_to_hub=False"):
        train_tiny_adapter(
            hub.base_dir,
            "p_tuning",
            tmp_path / "run",
            callbacks=[callback],
            push_to_hub=True,
            hub_model_id="alice/x",
            hub_token=TOKEN,
        )
    assert "alice/twice" not in hub.repos


def test_push_best_needs_metric_for_best_model(hub, tmp_path):
    callback = HubPushCallback("alice/best", base_model_id=BASE_ID, token=TOKEN, push_best=True)
    with pytest.raises(ValueError, match="metric_for_best_model"):
        train_tiny_adapter(hub.base_dir, "prompt_tuning", tmp_path / "run", callbacks=[callback])


def failing_push(kind: str, hub: HubServer, monkeypatch):
    """Keyword arguments for a push that fails with ``kind``."""
    if kind == "no token":
        return {"token": None}
    if kind == "rejected token":
        return {"token": "hf_RejectedSecret999"}
    if kind == "timeout":
        hub.delay = 2.0
        return {"token": TOKEN, "timeout": 0.3}
    # "network error": a server that has gone away
    with HubServer() as gone:
        endpoint = gone.endpoint
    point_hub_client_at(monkeypatch, endpoint, hub.home)
    return {"token": TOKEN}


EXPECTED_PROBLEM = {
    "no token": "no Hugging Face token",
    "rejected token": "rejected the token (HTTP 401",
    "timeout": "did not answer GET /api/whoami-v2 within 0.3 s, 1 attempt in a row",
    "network error": "could not reach the Hub",
}


@pytest.mark.parametrize("kind", list(EXPECTED_PROBLEM))
def test_failed_push_keeps_the_adapter_and_says_how_to_push_it_later(hub, tmp_path, monkeypatch, kind):
    trainer = train_tiny_adapter(hub.base_dir, "p_tuning", tmp_path / "run", num_train_epochs=1)
    endpoint = hub.endpoint
    folder = tmp_path / "adapter"
    with pytest.raises(HubPushError) as failure:
        push_adapter(
            trainer.model,
            "alice/later",
            base_model_id=BASE_ID,
            output_dir=folder,
            tokenizer=trainer.processing_class,
            labels=LABELS,
            **failing_push(kind, hub, monkeypatch),
        )
    message = str(failure.value)
    assert EXPECTED_PROBLEM[kind] in message
    assert f"softprompt-hf push {folder} alice/later" in message
    assert "alice/later" not in hub.repos or not hub.repos["alice/later"].files
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "softprompt_hf.json"} <= {
        p.name for p in folder.iterdir()
    }
    hub.delay = 0.0

    # The command from the message pushes the saved folder once the problem is gone.
    point_hub_client_at(monkeypatch, endpoint, hub.home)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    command = shlex.split(failure.value.command)
    assert command[0] == "softprompt-hf"
    assert cli_main(command[1:]) == 0
    assert (
        hub.repos["alice/later"].files["adapter_model.safetensors"]
        == (folder / "adapter_model.safetensors").read_bytes()
    )


class RevokeToken(TrainerCallback):
    """Stands for a token revoked while the run trains: the server forgets it once training has begun."""

    def __init__(self, hub: HubServer, token: str) -> None:
        self.hub, self.token = hub, token

    def on_train_begin(self, args, state, control, **kwargs):
        self.hub.tokens.pop(self.token)


def test_trainer_push_failure_raises_after_saving(hub, tmp_path):
    hub.tokens["hf_RevokedSecret777"] = "alice"
    callback = HubPushCallback("alice/denied", base_model_id=BASE_ID, token="hf_RevokedSecret777")
    with pytest.raises(HubPushError, match="rejected the token") as failure:
        train_tiny_adapter(
            hub.base_dir,
            "prefix_tuning",
            tmp_path / "run",
            callbacks=[callback, RevokeToken(hub, "hf_RevokedSecret777")],
            num_train_epochs=1,
        )
    assert failure.value.folder == tmp_path / "run" / "adapter"
    assert (failure.value.folder / "adapter_model.safetensors").is_file()
    assert f"softprompt-hf push {failure.value.folder} alice/denied" in str(failure.value)


class CountSteps(TrainerCallback):
    def __init__(self) -> None:
        self.steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1


REFUSED_BEFORE_TRAINING = {
    "no token": ({"token": None}, "no Hugging Face token was found"),
    "rejected token": ({"token": "hf_RejectedSecret999"}, "rejected the token (HTTP 401"),
    "another user's namespace": ({"repo_id": "bob/x"}, "belongs to 'alice', who may not write to the namespace 'bob'"),
    "read-only organisation": ({"repo_id": "readers/x"}, "only read access to the organisation 'readers'"),
    "read-only token": ({"token": "hf_ReadOnlySecret555"}, "the token is read-only"),
    "offline mode": ({"offline": True}, "offline mode (HF_HUB_OFFLINE=1)"),
}


@pytest.mark.parametrize("kind", list(REFUSED_BEFORE_TRAINING))
def test_a_push_that_cannot_work_is_refused_before_the_first_step(hub, tmp_path, monkeypatch, kind):
    hub.orgs["alice"] = {"readers": "read", "writers": "write"}
    hub.tokens["hf_ReadOnlySecret555"] = "alice"
    hub.roles["hf_ReadOnlySecret555"] = "read"
    settings, expected = REFUSED_BEFORE_TRAINING[kind]
    if settings.get("offline"):
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    repo_id = settings.get("repo_id", "alice/refused")
    callback = HubPushCallback(repo_id, base_model_id=BASE_ID, token=settings.get("token", TOKEN))
    steps = CountSteps()
    with pytest.raises(ValueError, match="Nothing was trained") as failure:
        train_tiny_adapter(hub.base_dir, "p_tuning", tmp_path / "run", callbacks=[callback, steps])
    assert expected in str(failure.value) and f"Cannot push to the Hub repository {repo_id!r}" in str(failure.value)
    assert steps.steps == 0 and not (tmp_path / "run" / "adapter").exists()
    assert not any(path.endswith(("/preupload/main", "/commit/main")) for _, path in hub.requests)


def test_an_organisation_the_user_may_write_to_is_accepted(hub, tmp_path):
    hub.orgs["alice"] = {"writers": "write"}
    callback = HubPushCallback("writers/team-adapter", base_model_id=BASE_ID, token=TOKEN)
    train_tiny_adapter(hub.base_dir, "prompt_tuning", tmp_path / "run", callbacks=[callback], num_train_epochs=1)
    assert "adapter_model.safetensors" in hub.repos["writers/team-adapter"].files


@pytest.fixture
def no_retry_sleeps(monkeypatch):
    """huggingface_hub's back-off sleeps (1, 2, 4, 8, 8 s), recorded instead of slept."""
    sleeps: list[float] = []
    monkeypatch.setattr(_http, "time", SimpleNamespace(sleep=sleeps.append))
    return sleeps


@pytest.fixture
def saved_folder(hub, tmp_path):
    trainer = train_tiny_adapter(hub.base_dir, "prompt_tuning", tmp_path / "run", num_train_epochs=1)
    return save_adapter(
        trainer.model, tmp_path / "adapter", tokenizer=trainer.processing_class, base_model_id=BASE_ID, labels=LABELS
    )


def test_a_timeout_message_says_how_many_attempts_were_made(hub, saved_folder, no_retry_sleeps):
    hub.delays["/preupload/"] = 2.0
    with pytest.raises(HubPushError) as failure:
        push_adapter_folder(saved_folder, "alice/slow", token=TOKEN, timeout=0.3)
    message = str(failure.value)
    preuploads = hub.count("POST", "/api/models/alice/slow/preupload/")
    assert preuploads == 6 and len(no_retry_sleeps) == 5  # huggingface_hub 2.4: 1 try + 5 retries
    assert "did not answer POST /api/models/alice/slow/preupload/main within 0.3 s, 6 attempts in a row" in message
    first_push_request = next(i for i, (_, path) in enumerate(hub.requests) if path == "/api/repos/create")
    assert f"gave up after {len(hub.requests) - first_push_request} requests" in message
    assert "'alice/slow' was created by this push and holds none of the adapter's files" in message
    assert hub.repos["alice/slow"].files == {}


def test_a_failed_commit_says_what_became_of_the_repository(hub, saved_folder, no_retry_sleeps):
    hub.fail_commits = 100
    with pytest.raises(HubPushError) as failure:
        push_adapter_folder(saved_folder, "alice/broken", token=TOKEN)
    message = str(failure.value)
    assert hub.count("POST", "/api/models/alice/broken/commit/") == 6
    assert (
        "answered HTTP 500 to POST /api/models/alice/broken/commit/main (6 attempts: huggingface_hub retried it)"
        in message
    )
    assert "'alice/broken' was created by this push and holds none of the adapter's files" in message
    assert hub.repos["alice/broken"].files == {}

    hub.fail_commits = 0
    push_adapter_folder(saved_folder, "alice/broken", token=TOKEN)
    files = dict(hub.repos["alice/broken"].files)
    hub.fail_commits = 100
    with pytest.raises(HubPushError) as failure:
        push_adapter_folder(saved_folder, "alice/broken", token=TOKEN, commit_message="second")
    assert "'alice/broken' existed already and is unchanged" in str(failure.value)
    assert "created by this push" not in str(failure.value) and hub.repos["alice/broken"].files == files


def pushed_card(hub: HubServer, repo_id: str) -> ModelCard:
    return ModelCard(hub.repos[repo_id].files["README.md"].decode())


def test_a_card_is_rendered_for_the_repository_it_is_pushed_to(hub, saved_folder, monkeypatch):
    assert "adapter = 'path/to/adapter'" in (saved_folder / "README.md").read_text()
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    for repo_id in ("alice/first", "alice/other"):
        assert cli_main(["push", str(saved_folder), repo_id]) == 0
        card = pushed_card(hub, repo_id)
        assert card.text.lstrip().startswith(f"# {repo_id}\n") and card.data.model_name == repo_id
        assert f"adapter = {repo_id!r}" in card.text and f"softprompt-hf predict {repo_id} " in card.text
        assert "path/to/adapter" not in card.content
    assert "alice/first" not in pushed_card(hub, "alice/other").content
    assert (saved_folder / "README.md").read_text() == pushed_card(hub, "alice/other").content

    # A card edited by hand is the user's: pushed as it is.
    edited = (saved_folder / "README.md").read_text() + "\nMy own notes.\n"
    (saved_folder / "README.md").write_text(edited)
    assert cli_main(["push", str(saved_folder), "alice/third"]) == 0
    assert pushed_card(hub, "alice/third").content == edited


def tiny_trainer(hub, output_dir: Path, callbacks, **overrides) -> Trainer:
    """A plain Trainer (the stock one, no softprompt_hf callbacks but the metrics') on the tiny Bloom."""
    tokenizer = AutoTokenizer.from_pretrained(hub.base_dir)
    torch.manual_seed(0)
    model = build_soft_prompt_model(
        AutoModelForCausalLM.from_pretrained(hub.base_dir),
        method="prompt_tuning",
        prompt_tuning_init="RANDOM",
        num_virtual_tokens=4,
    )
    rows = labelled_rows(24)
    metrics = GenerationMetrics(tokenizer, LABELS, rows[:8], batch_size=8)
    values = dict(
        output_dir=str(output_dir), per_device_train_batch_size=8, learning_rate=3e-2, eval_strategy="epoch",
        save_strategy="epoch", remove_unused_columns=False, report_to=[], logging_steps=1, seed=0, use_cpu=True,
        disable_tqdm=True,
    )  # fmt: skip
    args = overrides.pop("args", None) or TrainingArguments(**{**values, **overrides})
    kwargs = metrics.trainer_kwargs()
    return Trainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        eval_dataset=Dataset.from_list(rows[:8]),
        data_collator=SoftPromptDataCollator(tokenizer),
        processing_class=tokenizer,
        compute_metrics=kwargs["compute_metrics"],
        preprocess_logits_for_metrics=kwargs["preprocess_logits_for_metrics"],
        callbacks=[*kwargs["callbacks"], *callbacks(metrics)],
    )


def files_holding(folder: Path, secret: str) -> list[str]:
    return [str(p) for p in folder.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_from_training_args_keeps_the_token_out_of_every_checkpoint(hub, tmp_path):
    out = tmp_path / "run"
    args = TrainingArguments(
        output_dir=str(out), push_to_hub=True, hub_model_id="alice/no-leak", hub_token=TOKEN, num_train_epochs=2,
        per_device_train_batch_size=8, eval_strategy="epoch", save_strategy="epoch", remove_unused_columns=False,
        report_to=[], use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    callback = HubPushCallback.from_training_args(args, base_model_id=BASE_ID)
    trainer = tiny_trainer(hub, out, lambda metrics: [callback], args=args)
    trainer.train()
    assert (out / "checkpoint-6" / "training_args.bin").is_file()
    assert files_holding(out, TOKEN) == []
    assert "adapter_model.safetensors" in hub.repos["alice/no-leak"].files
    assert f"Bearer {TOKEN}" in hub.authorizations  # pushed with that token


class ScriptedScore(TrainerCallback):
    """Puts a chosen ``eval_score`` into each evaluation's metrics, before HubPushCallback reads them."""

    SCORES = {1: 0.5, 2: 0.9, 3: 0.7}

    def __init__(self, seen: list[float]) -> None:
        self.seen = seen

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        metrics["eval_score"] = self.SCORES[round(state.epoch)]
        self.seen.append(metrics["eval_score"])


class StopAfterEpoch(TrainerCallback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, args, state, control, **kwargs):
        if round(state.epoch) == self.epoch:
            control.should_training_stop = True  # this epoch is still evaluated and saved


def test_push_best_keeps_its_best_score_across_a_resume(hub, tmp_path):
    out = tmp_path / "run"
    settings = dict(num_train_epochs=3, metric_for_best_model="score", greater_is_better=True)

    seen: list[float] = []

    def callbacks(*more):
        return lambda metrics: [
            ScriptedScore(seen),
            HubPushCallback("alice/best-resumed", base_model_id=BASE_ID, token=TOKEN, push_best=True, metrics=metrics),
            *more,
        ]

    tiny_trainer(hub, out, callbacks(StopAfterEpoch(2)), **settings).train()
    repo = hub.repos["alice/best-resumed"]
    assert repo.commits == 2  # epochs 1 (0.5) and 2 (0.9)
    state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["stateful_callbacks"]["HubPushCallback"]["attributes"]["_best"] == 0.9
    assert TOKEN not in json.dumps(state)

    resumed = tiny_trainer(hub, out, callbacks(), **settings)
    resumed.train(resume_from_checkpoint=str(out / "checkpoint-6"))
    assert resumed.state.global_step == 9 and seen == [0.5, 0.9, 0.7]
    assert repo.commits == 2  # epoch 3 (0.7) does not beat 0.9: nothing pushed, neither then nor at the end
    card = pushed_card(hub, "alice/best-resumed")
    assert {r.metric_type: r.metric_value for r in card.data.eval_results}["score"] == 0.9


def test_the_token_never_reaches_logs_cards_or_files(hub, tmp_path, capsys, caplog):
    hf_logging.set_verbosity_debug()
    hf_logging.enable_propagation()
    hub_logger = logging.getLogger("huggingface_hub")
    previous_level = hub_logger.level
    hub_logger.setLevel(logging.DEBUG)
    caplog.set_level(logging.DEBUG)
    try:
        callback = HubPushCallback("alice/secret", base_model_id=BASE_ID, token=TOKEN)
        train_tiny_adapter(
            hub.base_dir, "prompt_tuning", tmp_path / "run", callbacks=[callback], num_train_epochs=1, hub_token=TOKEN
        )
        with pytest.raises(HubPushError) as failure:
            push_adapter_folder(callback.folder, "alice/secret", token="hf_RejectedSecret999")
        logging.getLogger("test").info("%s %r %r", failure.value, callback, failure.value)
    finally:
        hf_logging.set_verbosity_warning()
        hf_logging.disable_propagation()
        hub_logger.setLevel(previous_level)
    # The token was really used (the server saw it) ...
    assert f"Bearer {TOKEN}" in hub.authorizations and "Bearer hf_RejectedSecret999" in hub.authorizations
    # ... and appears nowhere else.
    captured = capsys.readouterr()
    logs = caplog.text + captured.out + captured.err + str(failure.value)
    assert "Pushed" in caplog.text  # the logs were captured
    saved = [p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()]
    pushed = list(hub.repos["alice/secret"].files.values())
    for secret in (TOKEN, "hf_RejectedSecret999"):
        assert secret not in logs
        assert all(secret.encode() not in data for data in saved + pushed)


def test_local_base_model_path_is_refused_unless_a_hub_id_is_given(hub, tmp_path):
    trainer = train_tiny_adapter(hub.base_dir, "prompt_tuning", tmp_path / "run", num_train_epochs=1)
    folder = save_adapter(trainer.model, tmp_path / "adapter", tokenizer=trainer.processing_class)
    local = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert local == str(hub.base_dir)
    with pytest.raises(ValueError, match="not a Hub id"):
        push_adapter_folder(folder, "alice/local", token=TOKEN)
    assert "alice/local" not in hub.repos
    with pytest.raises(ValueError, match="local path"):
        HubPushCallback("alice/local", base_model_id=str(hub.base_dir))

    push_adapter_folder(folder, "alice/local", token=TOKEN, base_model_id=BASE_ID)
    assert json.loads(hub.repos["alice/local"].files["adapter_config.json"])["base_model_name_or_path"] == BASE_ID
    # The card rendered from its data again, for the Hub id: no local path reaches the Hub.
    assert str(hub.base_dir) not in pushed_card(hub, "alice/local").content
    assert pushed_card(hub, "alice/local").data.base_model == BASE_ID

    # A card of the user's own is theirs: pushed as it is, only its YAML base_model set to the Hub id (one that
    # names the local folder is refused: test_a_file_that_would_upload_a_local_path_or_the_token_is_refused...).
    own = ModelCard("---\nlicense: mit\n---\n\n# My adapter\n\nTrained on my own copy of the base model.\n")
    folder = save_adapter(trainer.model, tmp_path / "own", tokenizer=trainer.processing_class, card=own)
    push_adapter_folder(folder, "alice/own", token=TOKEN, base_model_id=BASE_ID)
    pushed = pushed_card(hub, "alice/own")
    assert pushed.text == own.text and pushed.data.base_model == BASE_ID and pushed.data.license == "mit"
    assert "card" not in json.loads(hub.repos["alice/own"].files["softprompt_hf.json"])


def test_card_written_for_a_local_base_model_names_the_hub_id_once_pushed_with_it(hub, tmp_path, monkeypatch):
    """A run from a local copy saves a card that says so; pushing it with --base-model-id rewrites the card too:
    no local path and no "only loads on this machine" note reach the Hub."""
    trainer = train_tiny_adapter(hub.base_dir, "p_tuning", tmp_path / "run", num_train_epochs=1)
    local = str(hub.base_dir)
    card_data = model_card_inputs(trainer.model, base_model=local, allow_local_base=True, labels=LABELS)
    card = render_model_card(card_data)
    assert f"the local base model `{local}`" in card.text and "only loads on a machine" in card.text
    folder = save_adapter(trainer.model, tmp_path / "adapter", tokenizer=trainer.processing_class, card=card_data)

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert cli_main(["push", str(folder), "alice/from-local", "--base-model-id", BASE_ID]) == 0
    pushed = ModelCard(hub.repos["alice/from-local"].files["README.md"].decode())
    assert pushed.data.base_model == BASE_ID
    assert local not in pushed.content and "only loads on a machine" not in pushed.content
    assert f"[`{BASE_ID}`](https://huggingface.co/{BASE_ID})" in pushed.text
    assert json.loads(pushed.text.split("```json\n")[1].split("```")[0])["base_model_name_or_path"] == BASE_ID
    assert ModelCard.load(folder / "README.md").content == pushed.content  # the local copy says the same


def test_text_initialised_prompt_keeps_no_local_tokenizer_path(hub, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(hub.base_dir)
    model = build_soft_prompt_model(AutoModelForCausalLM.from_pretrained(hub.base_dir), tokenizer=tokenizer)
    assert model.peft_config["default"].tokenizer_name_or_path == str(hub.base_dir)
    push_adapter(
        model, "alice/text-init", base_model_id=BASE_ID, output_dir=tmp_path / "a", tokenizer=tokenizer, token=TOKEN
    )
    config = json.loads(hub.repos["alice/text-init"].files["adapter_config.json"])
    assert config["base_model_name_or_path"] == config["tokenizer_name_or_path"] == BASE_ID
    card = hub.repos["alice/text-init"].files["README.md"].decode()
    assert str(hub.base_dir) not in card and "## PEFT config" in card


def test_a_card_built_without_a_text_column_names_the_column_the_model_was_trained_on(hub, tmp_path):
    """HubPushCallback without text_column or metrics: the card and softprompt_hf.json name the training
    collator's column ('Tweet text'), never 'text', a column the model never saw."""
    trainer = tiny_trainer(hub, tmp_path / "run", lambda metrics: [HubPushCallback("alice/column", **PUSH)])
    trainer.train()
    card = pushed_card(hub, "alice/column")
    assert "(`{text_column}` = `'Tweet text'`)" in card.text and "text_column='text'" not in card.text
    assert card.text.count(".format(text_column='Tweet text', text=text)") == 2
    assert "--text-column 'Tweet text'" in card.text
    assert json.loads(hub.repos["alice/column"].files["softprompt_hf.json"])["text_column"] == "Tweet text"


PUSH = {"base_model_id": BASE_ID, "token": TOKEN}


def test_the_pushed_card_labels_the_runs_validation_texts(hub, tmp_path):
    callback = HubPushCallback("alice/texts", **PUSH)
    trainer = train_tiny_adapter(hub.base_dir, "prompt_tuning", tmp_path / "run", callbacks=[callback])
    card = pushed_card(hub, "alice/texts")
    first = [row["Tweet text"] for row in trainer.metrics_callback.eval_rows[:2]]
    assert re.findall(r"^texts = (\[.*\])$", card.text, re.MULTILINE) == [repr(first)] * 2
    assert "@Acme my parcel never arrived" not in card.text


def test_a_run_resumed_from_a_checkpoint_of_the_old_hub_adapter_folder_pushes_that_folder(hub, saved_folder):
    """Checkpoints of softprompt_hf 0.1 name local_dir 'hub_adapter' (its default then): a resumed push_best run
    takes its best adapter from there, and saves new ones to 'adapter'."""
    out = saved_folder.parent / "run"
    shutil.copytree(saved_folder, out / "hub_adapter")
    callback = HubPushCallback("alice/old-folder", **PUSH, push_best=True)
    assert callback.local_dir == "adapter"
    saved = {"repo_id": "alice/old-folder", "local_dir": "hub_adapter", "push_best": True}
    state = TrainerState()
    state.stateful_callbacks["HubPushCallback"] = {
        "args": saved,
        "attributes": {"_best": 0.9, "pushed": False, "_saved": True},
    }
    state.is_world_process_zero = True
    args = TrainingArguments(output_dir=str(out), metric_for_best_model="f1", report_to=[], use_cpu=True)
    callback.on_train_begin(args, state, None)
    assert callback.folder == out / "hub_adapter" and callback._best == 0.9
    callback.on_train_end(args, state, None)  # the best adapter was never pushed: it is pushed now
    files = hub.repos["alice/old-folder"].files
    assert files["adapter_model.safetensors"] == (out / "hub_adapter" / "adapter_model.safetensors").read_bytes()
    assert not (out / "adapter").exists()


# ----------------------------------------------------------------------------------------------------------
# A failed push changes nothing; nothing pushed holds a local path, the user's name or the token
# ----------------------------------------------------------------------------------------------------------


def folder_state(folder: Path) -> dict[str, bytes]:
    """Every file of ``folder`` and of the folder around it (a leftover temporary folder shows), with its bytes."""
    return {str(p.relative_to(folder.parent)): p.read_bytes() for p in sorted(folder.parent.rglob("*")) if p.is_file()}


@pytest.fixture
def local_base_folder(hub, tmp_path):
    """An adapter saved as a run from a local copy of the base model saves it: its config, card data and card name
    the local folder, so a push with the base model's Hub id changes all three."""
    trainer = train_tiny_adapter(hub.base_dir, "p_tuning", tmp_path / "run", num_train_epochs=1)
    data = model_card_inputs(trainer.model, base_model=str(hub.base_dir), allow_local_base=True, labels=LABELS)
    return save_adapter(trainer.model, tmp_path / "saved" / "adapter", tokenizer=trainer.processing_class, card=data)


FAILED_PUSHES = {
    "rejected token (401)": ("hf_RejectedSecret999", "rejected the token (HTTP 401"),
    "no token": (None, "no Hugging Face token was found"),
    "no write access (403)": (TOKEN, "may not write to 'alice' (HTTP 403)"),
    "Hub error (500)": (TOKEN, "answered HTTP 500 to GET /api/whoami-v2"),
    "500 on the commit": (TOKEN, "answered HTTP 500 to POST /api/models/alice/some-repo/commit/main"),
    "server down": (TOKEN, "could not reach the Hub"),
    "timeout": (TOKEN, "did not answer GET /api/whoami-v2 within 0.3 s"),
}


@pytest.mark.parametrize("kind", list(FAILED_PUSHES))
def test_a_failed_push_leaves_the_folder_byte_identical(
    hub, local_base_folder, monkeypatch, capsys, no_retry_sleeps, kind
):
    folder = local_base_folder
    (folder / "notes").mkdir()  # a subfolder of the user's own is pushed and kept
    (folder / "notes" / "run.txt").write_text("lr 3e-2, 1 epoch\n")
    token, expected = FAILED_PUSHES[kind]
    endpoint = hub.endpoint
    if kind == "no write access (403)":
        hub.failures["/commit/"] = 403
    elif kind == "Hub error (500)":
        hub.failures["/api/whoami-v2"] = 500
    elif kind == "500 on the commit":
        hub.fail_commits = 100
    elif kind == "server down":
        with HubServer() as gone:
            point_hub_client_at(monkeypatch, gone.endpoint, hub.home)
    elif kind == "timeout":
        hub.delay = 2.0
    if token is not None:
        monkeypatch.setenv("HF_TOKEN", token)
    before = folder_state(folder)
    push = ["push", str(folder), "alice/some-repo", "--base-model-id", BASE_ID, "--timeout", "0.3"]
    assert cli_main(push) == 1
    assert expected in capsys.readouterr().err
    assert folder_state(folder) == before
    assert not hub.repos.get("alice/some-repo", SimpleNamespace(files={})).files

    # Once the problem is gone, the same command pushes, and only then the local folder says what was pushed.
    hub.failures.clear()
    hub.fail_commits, hub.delay = 0, 0.0
    point_hub_client_at(monkeypatch, endpoint, hub.home)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert cli_main(push) == 0
    said = capsys.readouterr().out
    assert f"{folder}: README.md, adapter_config.json, softprompt_hf.json updated as pushed" in said
    pushed = hub.repos["alice/some-repo"].files
    changed = {name for name in pushed if (folder / name).read_bytes() != before[f"adapter/{name}"]}
    assert changed == {"README.md", "adapter_config.json", "softprompt_hf.json"}
    assert all((folder / name).read_bytes() == data for name, data in pushed.items())
    assert pushed["notes/run.txt"] == b"lr 3e-2, 1 epoch\n"


def test_nothing_pushed_holds_a_local_path_the_users_name_or_the_token(hub, tmp_path, monkeypatch):
    """The issue's path: a recipe trains on a local base-model folder in the user's home, then the adapter is
    pushed with --base-model-id. Every pushed file is scanned."""
    home = tmp_path / "home" / "zelda-local-user"
    monkeypatch.setenv("HOME", str(home))
    base = Path(shutil.copytree(EMBEDDED_MODEL_PATH, home / "models" / "embedded-bloom"))
    out = home / "runs" / "complaints"
    flags = ["--model_name_or_path", str(base), "--output_dir", str(out), "--use_cpu", "true", "--max_steps", "2"]
    flags += ["--disable_tqdm", "true", "--predict_unlabeled", "false", "--prompt_tuning_init", "TEXT"]
    load_recipe("prompt_tuning").main(flags)
    saved = json.loads((out / "adapter" / "softprompt_hf.json").read_text())
    assert saved["card"]["peft_config"]["base_model_name_or_path"] == str(base)  # the run itself was local

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert cli_main(["push", str(out / "adapter"), "alice/from-home", "--base-model-id", EMBEDDED_HUB_ID]) == 0
    pushed = hub.repos["alice/from-home"].files
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "softprompt_hf.json"} <= set(pushed)
    for name, data in pushed.items():
        for trace in (str(tmp_path), str(home), "zelda-local-user", str(base), TOKEN):
            assert trace.encode() not in data, (name, trace)
    card = json.loads(pushed["softprompt_hf.json"])["card"]
    assert card["peft_config"]["base_model_name_or_path"] == card["peft_config"]["tokenizer_name_or_path"]
    assert card["peft_config"]["base_model_name_or_path"] == EMBEDDED_HUB_ID == card["base_model"]


def test_a_file_that_would_upload_a_local_path_or_the_token_is_refused_before_anything_is_sent(hub, saved_folder):
    card = (saved_folder / "README.md").read_text()
    for extra, problem in ((f"\nSaved in {saved_folder}.\n", "names the local path"), (TOKEN, "Hub token")):
        (saved_folder / "README.md").write_text(card + extra)
        before = folder_state(saved_folder)
        requests = len(hub.requests)
        with pytest.raises(ValueError, match=f"README.md in the adapter folder .*{problem}.*Nothing was pushed"):
            push_adapter_folder(saved_folder, "alice/leak", token=TOKEN)
        assert len(hub.requests) == requests and folder_state(saved_folder) == before
