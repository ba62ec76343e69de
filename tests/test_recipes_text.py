"""The recipes train free-text targets (--task text): outputs, card, softprompt_hf.json and bad input."""

from __future__ import annotations

import csv
import importlib.util
import json
import re
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from softprompt_hf import PromptTemplate, generate_texts
from softprompt_hf.embedded import EMBEDDED_MODEL_PATH
from softprompt_hf.serving.predict import load_adapter
from softprompt_hf.steps import run_recipe

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = "Company : {company} Tweet : {tweet} Reply : "
COMPANIES = ["FastShip", "NovaBank", "SkyLink", "CityPower"]
ISSUES = ["my parcel is late", "my card was blocked", "my flight was cancelled", "the power is out again"]


def recipe(method: str):
    spec = importlib.util.spec_from_file_location(f"recipe_{method}", REPO / "recipes" / f"{method}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_replies(path: Path, rows: int) -> Path:
    """A JSONL file of tweets to companies and the reply to each: the free-text task of these tests."""
    with path.open("w", encoding="utf-8") as file:
        for i in range(rows):
            company, issue = COMPANIES[i % 4], ISSUES[i % 4]
            row = {
                "ID": i,
                "company": company,
                "tweet": f"@{company} {issue} #{i}",
                "reply": f"Sorry {company} is on it",
            }
            file.write(json.dumps(row) + "\n")
    return path


@pytest.fixture
def replies(tmp_path) -> Path:
    return write_replies(tmp_path / "replies.jsonl", 40)


def text_argv(replies: Path, output_dir: Path, *extra: str) -> list[str]:
    return [
        "--dataset", "files", "--train_file", str(replies), "--target_column", "reply", "--template", TEMPLATE,
        "--validation_size", "6", "--output_dir", str(output_dir), "--num_train_epochs", "1",
        "--max_target_length", "10", "--use_cpu", "true", "--disable_tqdm", "true", *extra,
    ]  # fmt: skip


def first_python_block(card: str) -> str:
    return re.search(r"```python\n(.*?)```", card, re.DOTALL).group(1)


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_a_recipe_trains_free_text_and_writes_its_outputs(tmp_path, replies, method, capsys, restore_recipe_logging):
    output_dir = tmp_path / "out"
    code = run_recipe(recipe(method).main, text_argv(replies, output_dir))
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    summary = captured.out.strip().splitlines()[-1]
    assert summary.startswith(f"{method}: validation rougeL ") and "gen_len" in summary and "(6 rows)" in summary

    results = json.loads((output_dir / "eval_results.json").read_text())
    assert {"eval_rouge1", "eval_rougeL", "eval_bleu", "eval_chrf", "eval_exact_match", "eval_gen_len"} <= set(results)
    with (output_dir / "predictions.csv").open(encoding="utf-8") as file:
        predictions = list(csv.DictReader(file))
    assert len(predictions) == 6 and list(predictions[0]) == ["text", "reference", "output", "tokens", "id"]
    assert all(row["reference"].startswith("Sorry ") and row["text"].startswith("@") for row in predictions)
    assert not (output_dir / "raft_submission.csv").exists()

    adapter = output_dir / "adapter"
    settings = json.loads((adapter / "softprompt_hf.json").read_text())
    assert settings["task"] == "text" and settings["max_new_tokens"] == 10 and settings["template"] == TEMPLATE
    assert "labels" not in settings and "eval_mode" not in settings and "text_column" not in settings
    card = (adapter / "README.md").read_text()
    assert "type: text-generation" in card and "name: ROUGE-L" in card and "writes free text" in card
    assert "text-classification" not in card

    # The card's snippet runs as written and generates what the run's predictions hold for those rows.
    snippet = first_python_block(card).replace("'path/to/adapter'", repr(str(adapter)))
    namespace: dict = {}
    exec(snippet, namespace)
    by_text = {row["text"]: row["output"] for row in predictions}
    assert namespace["outputs"] == [by_text[row["tweet"]] for row in namespace["rows"]]

    # generate_texts on the loaded adapter gives the recorded outputs too.
    loaded = load_adapter(str(adapter))
    rows = [{"company": row["text"].split()[0][1:], "tweet": row["text"]} for row in predictions]
    tokenizer = AutoTokenizer.from_pretrained(EMBEDDED_MODEL_PATH)
    template = PromptTemplate(TEMPLATE, label_tokenization=settings["label_tokenization"])
    outputs = generate_texts(loaded.model, tokenizer, rows, template=template, max_new_tokens=10, show_progress=False)
    assert outputs == [row["output"] for row in predictions]


def test_text_metrics_choose_what_is_reported_and_the_best_adapter(tmp_path, replies, capsys, restore_recipe_logging):
    output_dir = tmp_path / "out"
    argv = text_argv(replies, output_dir, "--text_metrics", "chrf", "--num_train_epochs", "2")
    code = run_recipe(recipe("prefix_tuning").main, argv)
    assert code == 0, capsys.readouterr().err[-3000:]
    results = json.loads((output_dir / "eval_results.json").read_text())
    assert "eval_chrf" in results and "eval_gen_len" in results and "eval_rougeL" not in results
    state = json.loads(next(output_dir.glob("checkpoint-*/trainer_state.json")).read_text())
    assert state["best_metric"] == max(e["eval_chrf"] for e in state["log_history"] if "eval_chrf" in e)


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--task", "text", "--dataset", "files", "--train_file", "{replies}"], r"--task text needs --target_column"),
        (["--target_column", "reply"], r"--task text reads your own text-to-text files \(dataset=files"),
        (["--max_target_length", "8"], r"--max_target_length apply to free-text targets \(--task text\)"),
        (
            ["--dataset", "files", "--train_file", "{replies}", "--target_column", "reply", "--text_metrics", "meteor"],
            r"--text_metrics meteor: unknown metric\(s\) \['meteor'\]; choose among rouge, bleu, chrf, exact_match",
        ),
        (
            ["--dataset", "files", "--train_file", "{replies}", "--target_column", "reply"],
            r"The template .* reads \{text\}: give --text_column",
        ),
        (
            ["--dataset", "files", "--train_file", "{replies}", "--target_column", "summary", "--template",
             TEMPLATE],
            r"no column\(s\) \['summary'\].*--target_column",
        ),
        (
            ["--dataset", "files", "--train_file", "{replies}", "--target_column", "reply", "--template",
             "Tweet : {tweet} Author : {author} Reply : "],
            r"no column\(s\) \['author'\]; available columns: \['ID', 'company', 'tweet', 'reply'\].*--template",
        ),
        (
            ["--dataset", "files", "--train_file", "{replies}", "--target_column", "reply", "--template", TEMPLATE,
             "--prompt_tuning_init", "CLASS_LABELS"],
            r"CLASS_LABELS",
        ),
    ],
)  # fmt: skip
def test_bad_text_task_input_gets_one_error_line(tmp_path, replies, argv, match, capsys, restore_recipe_logging):
    argv = [arg.replace("{replies}", str(replies)) for arg in argv]
    flags = ["--output_dir", str(tmp_path / "o"), "--use_cpu", "true", "--disable_tqdm", "true"]
    code = run_recipe(recipe("prompt_tuning").main, [*argv, *flags])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err, err
    message = err[err.rindex("error: ") :].strip()  # after the datasets library's "Generating train split" bar
    assert len(message.splitlines()) == 1 and re.search(match, message), message


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A prefix-tuning free-text adapter trained by the recipe (module-wide: the CLI tests share it)."""
    folder = tmp_path_factory.mktemp("text_run")
    path = write_replies(folder / "replies.jsonl", 24)
    import logging

    from transformers.utils import logging as hf_logging

    ours = logging.getLogger("softprompt_hf")
    level, verbosity = ours.level, hf_logging.get_verbosity()
    try:
        assert run_recipe(recipe("prefix_tuning").main, text_argv(path, folder / "out")) == 0
    finally:  # the recipe configures logging for its process: undo it for the tests that follow
        ours.setLevel(level)
        hf_logging.set_verbosity(verbosity)
    return folder / "out"


def test_the_cli_generates_text_for_rows_of_a_file(trained, tmp_path, capsys):
    from softprompt_hf.cli import main

    with (trained / "predictions.csv").open(encoding="utf-8") as file:
        recorded = list(csv.DictReader(file))
    rows = tmp_path / "rows.csv"
    with rows.open("w", encoding="utf-8", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["key", "company", "tweet"])
        writer.writeheader()
        for i, row in enumerate(recorded):
            writer.writerow({"key": f"k{i}", "company": row["text"].split()[0][1:], "tweet": row["text"]})
    output = tmp_path / "generated.csv"
    argv = ["predict", str(trained / "adapter"), "--input", str(rows), "--id-column", "key", "--output", str(output)]
    assert main([*argv, "--device", "cpu"]) == 0, capsys.readouterr().err
    with output.open(encoding="utf-8") as file:
        generated = list(csv.DictReader(file))
    assert list(generated[0]) == ["id", "text", "output", "tokens"]
    assert [row["id"] for row in generated] == [f"k{i}" for i in range(len(recorded))]
    # softprompt-hf predict goes through the fixed generate(); the run's evaluation through the engine: the same.
    assert [row["output"] for row in generated] == [row["output"] for row in recorded]
    assert all(0 < int(row["tokens"]) <= 10 for row in generated)


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--text", "@FastShip late"], r"reads the columns \['company', 'tweet'\]: pass --input"),
        (["--input", "{rows}", "--mode", "rank"], r"mode='rank' scores labels; this adapter writes free text"),
        (["--input", "{bad_rows}"], r"has no column\(s\) \['company'\], which the adapter's template reads"),
    ],
)
def test_the_cli_refuses_what_a_text_adapter_cannot_do(trained, tmp_path, extra, match, capsys):
    from softprompt_hf.cli import main

    (tmp_path / "rows.jsonl").write_text(json.dumps({"company": "FastShip", "tweet": "@FastShip late"}) + "\n")
    (tmp_path / "bad.jsonl").write_text(json.dumps({"tweet": "@FastShip late"}) + "\n")
    extra = [
        arg.replace("{rows}", str(tmp_path / "rows.jsonl")).replace("{bad_rows}", str(tmp_path / "bad.jsonl"))
        for arg in extra
    ]
    assert main(["predict", str(trained / "adapter"), *extra, "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and re.search(match, err), err


def test_a_recipe_trains_on_aclsum_with_its_own_splits_and_template(tmp_path, capsys, restore_recipe_logging):
    from softprompt_hf.real import ACLSUM_INSTALL, ExtraNotInstalledError, load_aclsum
    from softprompt_hf.training.arguments import ACLSUM_TEMPLATE

    try:
        validation = load_aclsum("approach").validation
    except ExtraNotInstalledError:
        pytest.skip(f"ACLSum is not installed ({ACLSUM_INSTALL})")
    output_dir = tmp_path / "out"
    argv = [
        "--dataset", "aclsum", "--aclsum_aspect", "approach", "--max_train_samples", "4", "--max_length", "96",
        "--max_target_length", "8", "--output_dir", str(output_dir), "--num_train_epochs", "1", "--use_cpu", "true",
        "--disable_tqdm", "true", "--num_virtual_tokens", "4", "--prompt_tuning_init", "RANDOM",
    ]  # fmt: skip
    assert run_recipe(recipe("prompt_tuning").main, argv) == 0, capsys.readouterr().err[-3000:]
    with (output_dir / "predictions.csv").open(encoding="utf-8") as file:
        predictions = list(csv.DictReader(file))
    assert [row["reference"] for row in predictions] == list(validation["summary"])  # the wheel's val split, whole
    assert [row["id"] for row in predictions] == list(validation["id"])
    settings = json.loads((output_dir / "adapter" / "softprompt_hf.json").read_text())
    assert settings["task"] == "text" and settings["template"] == ACLSUM_TEMPLATE
