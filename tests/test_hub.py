"""Pushing adapters to the Hub, through the real huggingface_hub client, against the local server in hub_server.py."""

from __future__ import annotations

import json
import logging
import shlex

import pytest
import torch
from conftest import METHODS, labelled_rows, next_token_logits
from hub_server import BASE_ID, TOKEN, HubServer, hub_fixture, point_hub_client_at  # noqa: F401  (hub fixture)
from huggingface_hub import ModelCard
from peft import AutoPeftModelForCausalLM
from trained_adapters import LABELS, one_thread, train_tiny_adapter
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments
from transformers.utils import logging as hf_logging

from softprompt_hf import build_model_card, build_soft_prompt_model
from softprompt_hf.cli import main as cli_main
from softprompt_hf.generation import generate_label_ids
from softprompt_hf.hub import HubPushCallback, HubPushError, push_adapter, push_adapter_folder
from softprompt_hf.saving import save_adapter

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
    assert {
        "adapter_config.json",
        "adapter_model.safetensors",
        "README.md",
        "tokenizer.json",
        "softprompt_hf.json",
    } <= (repo.files.keys())
    assert json.loads(repo.files["adapter_config.json"])["base_model_name_or_path"] == BASE_ID
    card = ModelCard(repo.files["README.md"].decode())
    assert card.data.base_model == BASE_ID and card.data.library_name == "peft"
    settings = json.loads(repo.files["softprompt_hf.json"])
    assert settings["labels"] == LABELS and settings["method"] == method and settings["base_model"] == BASE_ID
    # Saved locally before the push, with the same files.
    assert callback.folder == tmp_path / "run" / "hub_adapter"
    assert sorted(p.name for p in callback.folder.iterdir()) == sorted(repo.files)

    seen = len(hub.requests)
    reloaded = AutoPeftModelForCausalLM.from_pretrained(repo_id)
    reloaded_tokenizer = AutoTokenizer.from_pretrained(repo_id)
    downloads = {path for verb, path in hub.requests[seen:] if verb == "GET"}
    assert any(p.startswith(f"/{BASE_ID}/resolve/") and p.endswith("/model.safetensors") for p in downloads)
    assert any(p.startswith(f"/{repo_id}/resolve/") and p.endswith("/adapter_model.safetensors") for p in downloads)
    assert any(p.startswith(f"/{repo_id}/resolve/") and p.endswith("/tokenizer.json") for p in downloads)

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
    "timeout": "did not answer within 0.3 s",
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
            extra_json={"labels": LABELS},
            **failing_push(kind, hub, monkeypatch),
        )
    message = str(failure.value)
    assert EXPECTED_PROBLEM[kind] in message
    assert f"softprompt-hf push {folder} alice/later" in message
    assert "alice/later" not in hub.repos or not hub.repos["alice/later"].files
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "README.md"} <= {
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


def test_trainer_push_failure_raises_after_saving(hub, tmp_path):
    callback = HubPushCallback("alice/denied", base_model_id=BASE_ID, token="hf_RejectedSecret999")
    with pytest.raises(HubPushError, match="rejected the token") as failure:
        train_tiny_adapter(hub.base_dir, "prefix_tuning", tmp_path / "run", callbacks=[callback], num_train_epochs=1)
    assert failure.value.folder == tmp_path / "run" / "hub_adapter"
    assert (failure.value.folder / "adapter_model.safetensors").is_file()


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


def test_card_written_for_a_local_base_model_names_the_hub_id_once_pushed_with_it(hub, tmp_path, monkeypatch):
    """A run from a local copy saves a card that says so; pushing it with --base-model-id rewrites the card too:
    no local path and no "only loads on this machine" note reach the Hub."""
    trainer = train_tiny_adapter(hub.base_dir, "p_tuning", tmp_path / "run", num_train_epochs=1)
    local = str(hub.base_dir)
    card = build_model_card(trainer.model, base_model=local, allow_local_base=True, labels=LABELS)
    assert f"the local base model `{local}`" in card.text and "only loads on a machine" in card.text
    folder = save_adapter(trainer.model, tmp_path / "adapter", tokenizer=trainer.processing_class, model_card=card)

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
