"""A free-text task's whole path on the real Gemma 3 270M (slow): train, evaluate, push, load by id, generate.

Needs a folder prepared by ``softprompt-hf prepare-real`` (``SOFTPROMPT_HF_TEST_REAL_CACHE``, as
tests/test_real_e2e.py) and the ``[real]`` extra's ``aclsum`` package; skips without them. The prompt-tuning recipe
runs as a user runs it, in its own process, with its Gemma ACLSum config on a few training papers, and pushes to the
local Hub server of tests/hub_server.py, which also serves the prepared folder as the base model. A fresh process
then loads the adapter by repository id (tests/scripts/load_pushed_text_adapter.py) and generates with the model
card's snippet, ``predict`` and the model's own ``generate()``, and ``softprompt-hf predict`` generates from a file
of the template's columns.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from hub_server import TOKEN, HubServer
from test_real_e2e import GEMMA_HUB_ID, cli_command, prepared_gemma, read_csv, run, user_env

from softprompt_hf.real import load_aclsum
from softprompt_hf.training.arguments import ACLSUM_TEMPLATE

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "recipes" / "configs" / "prompt_tuning_gemma-3-270m_aclsum.yaml"
SCRIPT = Path(__file__).parent / "scripts" / "load_pushed_text_adapter.py"
REPO_ID = "alice/gemma-3-270m-prompt-tuning-aclsum"
# A CPU-sized run: 16 training papers, 4 steps of batch 4, then one evaluation of the 50 validation papers, each
# summary generated up to 24 tokens (EOS included). The path is what is tested here, not how well 4 steps learn:
# the config's own runs are in benchmarks/RESULTS.md.
BUDGET = 24
TRAINING_FLAGS = ["--max_train_samples", "16", "--num_train_epochs", "1", "--per_device_train_batch_size", "4"]
TRAINING_FLAGS += ["--max_target_length", str(BUDGET), "--per_device_eval_batch_size", "25"]
TRAINING_FLAGS += ["--eval_strategy", "no", "--load_best_model_at_end", "false", "--num_sample_predictions", "0"]
# Rows generated again after loading, greedy everywhere. The engine (the card's snippet) in other batches than the
# recipe's evaluation, and generate() with another padding and cache, compute the same logits up to float rounding,
# which may swap a near-tie: at most one row of 8 may differ from the recipe's text.
ROWS = 8
MAX_DIFFERENT = 1


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("aclsum") is None, reason='aclsum is not installed (pip install -e ".[real]")'
)
def test_a_free_text_adapter_trains_pushes_loads_by_id_and_generates_the_same_everywhere(tmp_path):
    folder = prepared_gemma()
    validation = load_aclsum("outcome", ["abstract"]).validation
    rows = [{column: row[column] for column in ("title", "text", "aspect")} for row in validation.select(range(ROWS))]
    rows_file = tmp_path / "rows.json"
    rows_file.write_text(json.dumps(rows))
    rows_jsonl = tmp_path / "rows.jsonl"
    rows_jsonl.write_text("".join(json.dumps(row) + "\n" for row in rows))

    with HubServer(tokens={TOKEN: "alice"}) as hub:
        hub.add_folder(GEMMA_HUB_ID, folder)
        out = tmp_path / "run"
        command = [
            sys.executable, str(REPO / "recipes" / "prompt_tuning.py"), "--config", str(CONFIG),
            "--model_name_or_path", str(folder), "--use_cpu", "true", "--output_dir", str(out), *TRAINING_FLAGS,
            "--disable_tqdm", "true", "--push_to_hub", "true", "--hub_model_id", REPO_ID,
            "--base_model_id", GEMMA_HUB_ID,
        ]  # fmt: skip
        recipe = run(command, user_env(hub, tmp_path / "hf-home-train", HF_TOKEN=TOKEN), tmp_path)
        pushed = hub.repos[REPO_ID].files

        home = tmp_path / "hf-home-user"
        loaded_json = tmp_path / "loaded.json"
        run([sys.executable, str(SCRIPT), str(rows_file), str(loaded_json), REPO_ID], user_env(hub, home), tmp_path)
        loaded = json.loads(loaded_json.read_text())
        cli_output = tmp_path / "cli.csv"
        command = [*cli_command(), "predict", REPO_ID, "--input", str(rows_jsonl), "--output", str(cli_output)]
        run(command, user_env(hub, home), tmp_path)
        cli = read_csv(cli_output)

    # The run: free-text metrics from generation, no loss pass, and the predictions file.
    results = json.loads((out / "eval_results.json").read_text())
    fractions = ("rouge1", "rouge2", "rougeL", "rougeLsum", "exact_match")  # 0 to 1; BLEU and chrF 0 to 100
    assert all(0 <= results[f"eval_{name}"] <= 1 for name in fractions) and "eval_loss" not in results
    assert 0 <= results["eval_bleu"] <= 100 and 0 < results["eval_chrf"] <= 100
    assert 0 < results["eval_gen_len"] <= BUDGET
    predictions = read_csv(out / "predictions.csv")
    assert len(predictions) == len(validation) and {"text", "reference", "output", "tokens"} <= set(predictions[0])
    assert [p["reference"] for p in predictions] == list(validation["summary"])
    assert "prompt_tuning: validation" in recipe.stdout

    # Pushed: the adapter names the base model's Hub id and records the task, template and generation budget.
    assert sorted(pushed) == ["README.md", "adapter_config.json", "adapter_model.safetensors", "softprompt_hf.json"]
    assert json.loads(pushed["adapter_config.json"])["base_model_name_or_path"] == GEMMA_HUB_ID
    settings = loaded["settings"]
    assert (settings["task"], settings["template"], settings["max_new_tokens"]) == ("text", ACLSUM_TEMPLATE, BUDGET)
    assert loaded["base_model_name_or_path"] == GEMMA_HUB_ID
    card = pushed["README.md"].decode()
    assert "text-generation" in card and "generate_texts(" in card

    # The same texts everywhere: the recipe's evaluation and the card's snippet (the engine), predict() and the CLI
    # (generate(), padded on the left), and generate() one row at a time.
    recipe_texts = [p["output"] for p in predictions[:ROWS]]
    assert [row["output"] for row in cli] == loaded["predict"]  # the same code on the same batch
    for other in ("engine", "predict", "generate"):
        different = [i for i, (a, b) in enumerate(zip(loaded[other], recipe_texts, strict=True)) if a != b]
        assert len(different) <= MAX_DIFFERENT, (other, [(loaded[other][i], recipe_texts[i]) for i in different])
    assert all(text.strip() for text in recipe_texts)
