"""The recipes with ``--chat_template``: prompts through the base model's chat template, end to end.

The base model is a rigged Llama (tests/chat_models.py) that answers ``no complaint`` and ChatML's ``<|im_end|>``
after the chat template's prompt, and nothing a label matches after any other prompt; a soft prompt changes nothing
in it. So a run whose evaluation, saved adapter and ``softprompt-hf predict`` all answer ``no complaint`` used the
chat template in each of them.
"""

from __future__ import annotations

import csv
import json

import pytest
from chat_models import SYSTEM, USER, answering_model, chat_tokenizer
from conftest import METHODS
from hub_server import TOKEN, hub_fixture  # noqa: F401  (hub fixture)
from test_recipes import load_recipe
from trained_adapters import one_thread

from softprompt_hf import ChatTemplate, predict
from softprompt_hf.cli import main as cli_main
from softprompt_hf.steps import build_collator, build_metrics, load_run_data, load_run_tokenizer
from softprompt_hf.training.arguments import CHAT_USER_DEFAULT, parse_recipe_args

pytestmark = pytest.mark.usefixtures("restore_recipe_logging", one_thread.__name__)

# The embedded tweets' text column, as the template reads it.
TEXT_COLUMN = "Tweet text"
RUN = ["--max_train_samples", "16", "--validation_size", "16", "--num_train_epochs", "1", "--use_cpu", "true"]
RUN += ["--predict_unlabeled", "false", "--disable_tqdm", "true", "--per_device_train_batch_size", "8"]


@pytest.fixture(scope="module")
def chat_model_dir(tmp_path_factory):
    """The rigged ChatML model and its tokenizer (with the chat template), saved as a base model folder."""
    tokenizer = chat_tokenizer("chatml")
    chat = ChatTemplate(user=USER, system=SYSTEM, text_column=TEXT_COLUMN)
    folder = tmp_path_factory.mktemp("chat-base")
    answering_model(tokenizer, chat, "no complaint").save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_chat_template_flags_parse_and_default_to_the_text_alone():
    _, data, _, _ = parse_recipe_args("prompt_tuning", ["--chat_template", "true"])
    assert (data.chat_template, data.template, data.system_prompt) == (True, CHAT_USER_DEFAULT, None)
    assert data.prompt(TEXT_COLUMN) == ChatTemplate(user="{text}", text_column=TEXT_COLUMN)
    _, data, _, _ = parse_recipe_args(
        "prompt_tuning", ["--chat_template", "true", "--template", USER, "--system_prompt", SYSTEM]
    )
    assert data.prompt(TEXT_COLUMN) == ChatTemplate(user=USER, system=SYSTEM, text_column=TEXT_COLUMN)
    _, data, _, _ = parse_recipe_args("prompt_tuning", ["--template", USER])
    assert data.prompt(TEXT_COLUMN) == USER  # without the flag, the plain pattern as before


def test_a_system_prompt_without_the_chat_template_is_refused():
    with pytest.raises(ValueError, match=r"--system_prompt .* add --chat_template true"):
        parse_recipe_args("prompt_tuning", ["--system_prompt", SYSTEM])


def test_a_base_model_without_a_chat_template_names_the_model_and_the_flag(tmp_path):
    # The embedded model (the default) is a base model: its tokenizer has no chat template.
    with pytest.raises(ValueError, match=r"--chat_template true with '.*embedded.*': .*no chat template.*leave out"):
        load_recipe("prompt_tuning").main(["--chat_template", "true", "--output_dir", str(tmp_path), *RUN])
    assert not list(tmp_path.iterdir())  # refused before anything was written


def test_the_runs_collator_and_metrics_build_the_chat_templates_ids(chat_model_dir, tmp_path):
    argv = ["--model_name_or_path", str(chat_model_dir), "--chat_template", "true", "--template", USER]
    argv += ["--system_prompt", SYSTEM, "--output_dir", str(tmp_path), *RUN]
    args = parse_recipe_args("prompt_tuning", argv)
    data = load_run_data(args.data, seed=args.training.seed)
    tokenizer = load_run_tokenizer(args.model, chat_template=args.data.chat_template)
    chat = ChatTemplate(user=USER, system=SYSTEM, text_column=TEXT_COLUMN)
    assert build_metrics(tokenizer, data, args.data, args.training).template == chat
    row = data.train[0]
    collator = build_collator(tokenizer, data, args.data)  # what recipes/train.py gives the Trainer
    assert collator.template == chat
    batch = collator([row])
    conversation = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": USER.format(text=row[TEXT_COLUMN])},
    ]
    prompt = list(tokenizer.apply_chat_template(conversation, add_generation_prompt=True, return_dict=False))
    target = chat.encode_target(tokenizer, row[data.target_column])
    assert batch["input_ids"][0].tolist() == prompt + target
    assert tokenizer.convert_ids_to_tokens(target[-1]) == "<|im_end|>"


@pytest.mark.parametrize("method", METHODS)
def test_a_recipe_trains_evaluates_saves_and_predicts_through_the_chat_template(chat_model_dir, tmp_path, method):
    out = tmp_path / method
    argv = ["--model_name_or_path", str(chat_model_dir), "--chat_template", "true", "--template", USER]
    argv += ["--system_prompt", SYSTEM, "--output_dir", str(out), "--eval_mode", "generate", *RUN]
    results = load_recipe(method).main(argv)
    # Every validation row answered "no complaint": the evaluation prompted through the chat template.
    with open(out / "predictions.csv", newline="", encoding="utf-8") as handle:
        predictions = list(csv.DictReader(handle))
    assert len(predictions) == 16 and {row["predicted"] for row in predictions} == {"no complaint"}
    assert results["eval_invalid_rate"] == 0.0
    assert results["eval_accuracy"] == pytest.approx(
        sum(row["gold"] == "no complaint" for row in predictions) / len(predictions)
    )
    adapter = out / "adapter"
    settings = json.loads((adapter / "softprompt_hf.json").read_text())
    assert settings["chat"] == {"user": USER, "system": SYSTEM} and settings["template"] == USER
    card = (adapter / "README.md").read_text()
    assert "the base model's chat template" in card
    texts = [row["text"] for row in predictions[:3]]
    assert [p.predicted for p in predict(str(adapter), texts, device="cpu")] == ["no complaint"] * 3
    assert [p.predicted for p in predict(str(adapter), texts, mode="constrained", device="cpu")] == ["no complaint"] * 3
    output = tmp_path / f"{method}.jsonl"
    assert cli_main(["predict", str(adapter), "--text", texts[0], "--device", "cpu", "--output", str(output)]) == 0
    assert json.loads(output.read_text())["predicted"] == "no complaint"


def test_a_chat_recipe_pushes_an_adapter_that_predicts_through_the_chat_template_from_the_hub(
    chat_model_dir, tmp_path, hub
):
    hub.add_folder("org/tiny-chat", chat_model_dir)  # the base model, as others would download it
    out = tmp_path / "run"
    argv = ["--model_name_or_path", str(chat_model_dir), "--chat_template", "true", "--template", USER]
    argv += ["--system_prompt", SYSTEM, "--output_dir", str(out), *RUN, "--push_to_hub", "true"]
    argv += ["--hub_model_id", "alice/chat-complaints", "--hub_token", TOKEN, "--base_model_id", "org/tiny-chat"]
    load_recipe("prompt_tuning").main([*argv, "--push_timeout", "30"])
    pushed = hub.repos["alice/chat-complaints"].files
    assert json.loads(pushed["softprompt_hf.json"])["chat"] == {"user": USER, "system": SYSTEM}
    card = pushed["README.md"].decode()
    assert "the base model's chat template" in card and f"ChatTemplate(user={USER!r}, system={SYSTEM!r}" in card
    # Anyone can predict with it by its id: the chat template is rebuilt from softprompt_hf.json.
    predictions = predict("alice/chat-complaints", ["@Acme my parcel never arrived", "hi"], device="cpu")
    assert [p.predicted for p in predictions] == ["no complaint"] * 2
