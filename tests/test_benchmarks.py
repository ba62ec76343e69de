"""Every benchmark script runs on a tiny model and prints its tables (marked slow); the generate() correctness
script runs in the default run and its table is checked."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import labelled_rows
from trained_adapters import one_thread

from softprompt_hf.constants import MODES
from softprompt_hf.embedded import EMBEDDED_MODEL_PATH

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO / "benchmarks"

SCRIPTS = {
    "train_throughput.py": ["--size", "tiny", "--steps", "1", "--batches", "1", "--repeats", "1"],
    "eval_throughput.py": ["--size", "tiny", "--rows", "12", "--repeats", "1", "--seed_repeats", "1"],
    "eval_ceiling.py": ["--size", "tiny", "--rows", "12", "--repeats", "1"],
    "eval_memory.py": ["--size", "tiny", "--rows", "8", "16", "--modes", "generate"],
    "engine_vs_generate.py": ["--models", "tiny", "--rows", "12", "--repeats", "1"],
    "text_decoding.py": ["--models", "tiny", "--rows", "6", "--max_new_tokens", "8", "--repeats", "1"],
    "eval_loss_pass.py": ["--models", "tiny", "--rows", "8", "--repeats", "1", "--methods", "prompt_tuning"],
    "gpu.py": ["--smoke"],
    "fsdp_memory.py": ["--size", "tiny"],
    "output_head.py": ["--shapes", "32x4096", "16x3000", "--rows", "4", "--repeats", "1"],
    "real_model.py": ["zero-shot", "--model_name_or_path", str(EMBEDDED_MODEL_PATH), "--rows", "4"],
    "real_text.py": ["zero-shot", "--model_name_or_path", str(EMBEDDED_MODEL_PATH), "--rows", "4"],
    "multi_adapters.py": [
        "--adapters", "1", "2", "--rows", "6", "--repeats", "1", "--batch_size", "4", "--threads", "1",
    ],
    "init_table.py": [
        "--model_name_or_path", str(EMBEDDED_MODEL_PATH), "--seeds", "0", "--threads", "1",
        "--", "--validation_size", "8", "--max_train_samples", "8", "--max_steps", "1",
    ],
}  # fmt: skip


def _run(script: str, args: list[str]) -> subprocess.CompletedProcess:
    """Run a benchmark script offline; it must exit 0."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True, env=env, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _table_rows(stdout: str) -> list[list[str]]:
    """The cells of every markdown table row printed, header rows included, separator rows left out."""
    lines = [line for line in stdout.splitlines() if line.startswith("| ") and "---" not in line]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_benchmark_script_runs(script):
    if script == "real_text.py" and importlib.util.find_spec("aclsum") is None:
        pytest.skip('real_text.py scores ACLSum: pip install -e ".[real]"')
    result = _run(script, SCRIPTS[script])
    assert len(_table_rows(result.stdout)) >= 2, result.stdout  # a header and at least one measured row
    assert "nan" not in result.stdout.lower()
    if script == "gpu.py":
        assert [title for title in GPU_PART_TITLES.values() if f"## {title}" not in result.stdout] == []


# The title each part of gpu.py prints above its table(s).
GPU_PART_TITLES = {
    "train": "Training throughput",
    "eval": "Evaluation throughput",
    "ceiling": "Evaluation: the compute-bound ceiling",
    "memory": "Peak memory of a full evaluation",
}


@pytest.mark.slow
def test_gpu_script_runs_only_the_parts_asked_for():
    result = _run("gpu.py", ["--smoke", "--parts", "ceiling", "memory"])
    printed = {part for part, title in GPU_PART_TITLES.items() if f"## {title}" in result.stdout}
    assert printed == {"ceiling", "memory"}, result.stdout


def test_generate_correctness_script_shows_stock_wrong_and_fixed_right():
    # Two models, one of which (Mistral) crosses its sliding window, and both prompt placements (virtual token
    # embeddings, prefix key/values); the script exits 1 if a fixed row differs from its full-forward reference.
    args = ["--models", "gpt2", "mistral", "--methods", "p_tuning_mlp", "prefix_tuning", "--texts", "3"]
    result = _run("generate_correctness.py", [*args, "--new-tokens", "4"])
    rows = _table_rows(result.stdout)[1:]
    assert [row[:3] for row in rows] == [
        [model, method, "3"] for model in ("gpt2", "mistral") for method in ("p_tuning_mlp", "prefix_tuning")
    ]
    assert all(row[5] == row[6] == "3/3" for row in rows), result.stdout
    assert any(cell != "3/3" for row in rows for cell in row[3:5]), result.stdout


def test_engine_vs_generate_script_gives_the_same_labels_both_ways():
    # The decoder that GenerationMetrics runs and the generate() that predict runs, on both soft-prompt placements
    # and the embedded model: the script exits 1 if a row's tokens differ; the table says so per model and method.
    args = ["--models", "embedded", "--methods", "p_tuning", "prefix_tuning", "--rows", "10", "--repeats", "1"]
    rows = _table_rows(_run("engine_vs_generate.py", args).stdout)[1:]
    assert [row[:4] for row in rows] == [
        ["embedded", method, "10", "10/10"] for method in ("p_tuning", "prefix_tuning")
    ]


def test_every_script_is_smoke_tested():
    scripts = {path.name for path in BENCHMARKS.glob("*.py") if not path.name.startswith("_")}
    assert scripts == {*SCRIPTS, "generate_correctness.py"}


def test_train_throughput_measures_a_local_model_folder_with_its_own_tokenizer():
    # --model_name_or_path replaces the built Bloom (and the embedded tokenizer) with the folder's model and tokenizer.
    args = ["--model_name_or_path", str(EMBEDDED_MODEL_PATH), "--methods", "prompt_tuning", "--steps", "1"]
    result = _run("train_throughput.py", [*args, "--repeats", "1", "--skip", "breakdown", "--threads", "1"])
    assert f"Model: BloomForCausalLM from {EMBEDDED_MODEL_PATH}, vocab 2,048, hidden 128, 4 layers" in result.stdout
    rows = _table_rows(result.stdout)
    assert [row[0] for row in rows] == ["method", "prompt_tuning"]
    assert float(rows[1][3]) > 0  # our samples/s


@pytest.fixture(scope="module")
def real_model():
    """benchmarks/real_model.py imported into the test process (its functions are called directly: a subprocess
    would spend most of its time importing the libraries again)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("real_model", BENCHMARKS / "real_model.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


def _small_tweets_config(tmp_path: Path) -> Path:
    """The Gemma tweets config of the prompt-tuning recipe with 16 validation rows, for the embedded model."""
    config = yaml.safe_load((REPO / "recipes/configs/prompt_tuning_gemma-3-270m_tweets.yaml").read_text())
    config["validation_size"] = 16
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_real_model_tables_read_a_recipe_run_and_score_its_adapter_as_the_recipe_did(tmp_path, real_model, capsys):
    """collect reads a finished recipe run (its checkpoints, results, log and /usr/bin/time -v log); eval-modes
    scores its adapter on the same validation rows in every mode, generate giving the recipe's own figures."""
    config = _small_tweets_config(tmp_path)
    run = tmp_path / "prompt_tuning_tweets"
    recipe = [sys.executable, str(REPO / "recipes/prompt_tuning.py"), "--config", str(config), "--use_cpu", "true"]
    recipe += ["--model_name_or_path", str(EMBEDDED_MODEL_PATH), "--output_dir", str(run), "--max_steps", "2"]
    recipe += ["--eval_strategy", "steps", "--eval_steps", "1", "--save_strategy", "steps", "--save_steps", "1"]
    recipe += ["--disable_tqdm", "true", "--num_sample_predictions", "0", "--predict_unlabeled", "false"]
    timed = Path("/usr/bin/time").is_file()  # GNU time's -v gives the peak RSS
    if timed:
        recipe = ["/usr/bin/time", "-v", "-o", f"{run}.time.log", *recipe]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    with open(f"{run}.log", "w") as log:
        done = subprocess.run(recipe, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=600)
    assert done.returncode == 0, Path(f"{run}.log").read_text()[-3000:]

    real_model.collect(real_model.parse_args(["collect", str(run), "--json", str(tmp_path / "collect.json")]))
    (figures,) = json.loads((tmp_path / "collect.json").read_text())
    state = json.loads((run / "checkpoint-2" / "trainer_state.json").read_text())
    evaluations = [entry for entry in state["log_history"] if "eval_accuracy" in entry]
    final = json.loads((run / "eval_results.json").read_text())
    assert (figures["method"], figures["dataset"]) == ("prompt_tuning", "tweets")
    assert figures["eval_accuracy_by_epoch"] == [entry["eval_accuracy"] for entry in evaluations] and evaluations
    assert figures["eval_f1_by_epoch"] == [entry["eval_f1"] for entry in evaluations]
    assert (figures["final_accuracy"], figures["final_f1"]) == (final["eval_accuracy"], final["eval_f1"])
    assert figures["final_eval_rows_per_s"] == final["eval_samples_per_second"]
    # train_runtime comes from the run's log (no checkpoint holds it); 2 steps of 80 make 0.025 epochs.
    assert figures["train_runtime"] > 0 and f"{run}.log" in figures["logs"]
    assert figures["seconds_per_epoch"] == pytest.approx(figures["train_runtime"] / state["epoch"])
    if timed:
        assert figures["max_rss_kib"] > 100_000 and figures["wall_seconds"] > 0
    assert len(_table_rows(capsys.readouterr().out)) == 2

    args = ["eval-modes", str(run / "adapter"), "--config", str(config), "--json", str(tmp_path / "modes.json")]
    real_model.eval_modes(real_model.parse_args(args))
    scored = json.loads((tmp_path / "modes.json").read_text())
    assert [r["mode"] for r in scored] == ["generate", *(mode for mode in MODES if mode != "generate")]
    assert all(r["rows"] == 16 for r in scored)
    # The recipe's final evaluation generated on the same 16 rows with the same adapter.
    assert (scored[0]["accuracy"], scored[0]["f1"]) == (final["eval_accuracy"], final["eval_f1"])
    assert next(r for r in scored if r["mode"] == "rank")["invalid_rate"] == 0
    assert len(_table_rows(capsys.readouterr().out)) == 1 + len(MODES)


def test_real_model_zero_shot_scores_the_recipe_template_with_and_without_the_instruction(tmp_path, real_model, capsys):
    config = yaml.safe_load((REPO / "recipes/configs/prompt_tuning_gemma-3-270m_tweets.yaml").read_text())
    args = ["zero-shot", "--model_name_or_path", str(EMBEDDED_MODEL_PATH), "--datasets", "tweets", "--rows", "4"]
    real_model.zero_shot(real_model.parse_args([*args, "--modes", "rank", "--json", str(tmp_path / "zero.json")]))
    scored = json.loads((tmp_path / "zero.json").read_text())
    assert [(r["dataset"], r["mode"], r["rows"]) for r in scored] == [("tweets", "rank", 4)] * 2
    assert [r["template_text"] for r in scored] == [
        config["template"],
        config["prompt_tuning_init_text"] + config["template"],
    ]
    assert all(0 <= r["accuracy"] <= 1 and r["invalid_rate"] == 0 for r in scored)
    assert len(_table_rows(capsys.readouterr().out)) == 3


def test_real_model_zero_shot_scores_a_chat_config_against_the_plain_prompt(tmp_path, real_model, capsys):
    """With the SmolLM2 configs, on a rigged ChatML model that answers "no complaint" after the chat prompt only: the
    chat template's rows all answer, the plain prompts' none."""
    from chat_models import answering_model, chat_tokenizer

    from softprompt_hf import ChatTemplate

    config = yaml.safe_load((REPO / "recipes/configs/prompt_tuning_smollm2-135m-instruct_tweets.yaml").read_text())
    tokenizer = chat_tokenizer("chatml")
    chat = ChatTemplate(user=config["template"], text_column="Tweet text")
    answering_model(tokenizer, chat, "no complaint").save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    args = ["zero-shot", "--configs_of", "smollm2-135m-instruct", "--model_name_or_path", str(tmp_path / "model")]
    args += ["--datasets", "tweets", "--rows", "4", "--modes", "generate", "--json", str(tmp_path / "zero.json")]
    real_model.zero_shot(real_model.parse_args(args))
    scored = json.loads((tmp_path / "zero.json").read_text())
    plain = "{text_column} : {text} Label : "
    assert [r["template_text"] for r in scored] == [
        {"chat": {"user": config["template"], "system": None}},
        plain,
        config["prompt_tuning_init_text"] + plain,
    ]
    assert [r["invalid_rate"] for r in scored] == [0, 1, 1]
    assert scored[0]["accuracy"] == 0.5  # 4 rows taken from each label in turn: 2 of them "no complaint"
    assert len(_table_rows(capsys.readouterr().out)) == 4


def test_real_model_takes_a_subset_of_rows_from_every_label_in_turn(real_model):
    from types import SimpleNamespace

    from datasets import Dataset

    # BBC News' validation split lists its topics one after the other: the first rows would all be "business".
    labels = ["business"] * 4 + ["sports"] * 3 + ["tech"] * 2
    validation = Dataset.from_dict({"text_label": labels, "i": list(range(len(labels)))})
    recipe = SimpleNamespace(data=SimpleNamespace(validation=validation, target_column="text_label"))
    picked = real_model._rows(recipe, 7)
    assert picked["i"] == [0, 1, 2, 4, 5, 7, 8]  # in split order, classes as even as they allow
    assert real_model._rows(recipe, None) is validation and len(real_model._rows(recipe, 20)) == len(labels)


def test_init_table_compares_every_init_of_each_method_over_seeds(tmp_path, capsys):
    """benchmarks/init_table.py on the embedded model: one row per init, mean ± sd over the seeds, and inits that
    start differently (the embedded model's own instruction against a random prompt). Every method and init runs
    in the slow smoke test (test_benchmark_script_runs)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("init_table", BENCHMARKS / "init_table.py")
    init_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(init_table)
    args = ["--model_name_or_path", str(EMBEDDED_MODEL_PATH), "--methods", "prompt_tuning"]
    args += ["--inits", "TEXT", "CLASS_LABELS", "RANDOM", "--seeds", "0", "1", "--json", str(tmp_path / "t.json")]
    args += ["--", "--validation_size", "8", "--max_train_samples", "8", "--max_steps", "1"]
    init_table.main(init_table.parse_args(args))
    rows = _table_rows(capsys.readouterr().out)
    assert rows[0] == init_table.HEADERS
    assert [row[:2] for row in rows[1:]] == [["prompt_tuning", init] for init in ("TEXT", "CLASS_LABELS", "RANDOM")]
    assert all(row[3] == "2" and all(" ± " in cell for cell in row[4:]) for row in rows[1:])
    assert [row[2] for row in rows[1:]] == ["12", "20", "20"]  # TEXT: the init text's 12 tokens
    results = json.loads((tmp_path / "t.json").read_text())
    assert len(results) == 6 and {r["validation_rows"] for r in results} == {8}
    loss_before = {(r["init"], r["seed"]): r["loss_before"] for r in results}
    # The embedded model's own instruction starts right; a random prompt does not, nor, differently, the labels.
    for seed in (0, 1):
        assert loss_before["TEXT", seed] < 0.1 < loss_before["RANDOM", seed]
        assert loss_before["CLASS_LABELS", seed] not in (loss_before["TEXT", seed], loss_before["RANDOM", seed])
    # A seed changes the random draws, not the text init.
    assert loss_before["RANDOM", 0] != loss_before["RANDOM", 1]
    assert loss_before["TEXT", 0] == loss_before["TEXT", 1]
    assert all(0 <= r[name] <= 1 for r in results for name in ("accuracy_before", "accuracy_after", "f1_after"))
    # --resume keeps the runs already in the JSON and runs only the missing ones (here seed 2 of one init).
    again = ["--model_name_or_path", str(EMBEDDED_MODEL_PATH), "--methods", "prompt_tuning", "--inits", "RANDOM"]
    again += ["--seeds", "0", "1", "2", "--json", str(tmp_path / "t.json"), "--resume", *args[args.index("--") :]]
    resumed = init_table.main(init_table.parse_args(again))
    assert resumed[:6] == results and [(r["init"], r["seed"]) for r in resumed[6:]] == [("RANDOM", 2)]
    assert json.loads((tmp_path / "t.json").read_text()) == resumed
    rows = _table_rows(capsys.readouterr().out)
    assert [(row[1], row[3]) for row in rows[1:]] == [("TEXT", "2"), ("CLASS_LABELS", "2"), ("RANDOM", "3")]
    with pytest.raises(SystemExit):
        init_table.parse_args(["--resume"])  # nothing to resume from without --json


@pytest.fixture
def real_text(real_model):
    spec = importlib.util.spec_from_file_location("real_text", BENCHMARKS / "real_text.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_real_text_collect_reads_a_free_text_recipe_run(tmp_path, real_text, capsys):
    """collect reads a finished free-text run: ROUGE-L at each evaluation (the first before training), the best
    adapter's final figures and the recipe's eval rows/s."""
    rows = [{"tweet": row["Tweet text"], "reply": row["text_label"]} for row in labelled_rows(24)]
    data = tmp_path / "replies.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    run = tmp_path / "prompt_tuning_replies"
    recipe = [sys.executable, str(REPO / "recipes/prompt_tuning.py"), "--use_cpu", "true", "--disable_tqdm", "true"]
    recipe += ["--dataset", "files", "--train_file", str(data), "--target_column", "reply", "--validation_size", "8"]
    recipe += ["--template", "Tweet : {tweet} Reply : ", "--output_dir", str(run), "--max_steps", "2"]
    recipe += ["--eval_strategy", "steps", "--eval_steps", "1", "--save_strategy", "steps", "--save_steps", "1"]
    recipe += ["--eval_on_start", "true", "--num_sample_predictions", "0", "--prompt_tuning_init", "RANDOM"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    with open(f"{run}.log", "w") as log:
        done = subprocess.run(recipe, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=600)
    assert done.returncode == 0, Path(f"{run}.log").read_text()[-3000:]

    real_text.collect(real_text.parse_args(["collect", str(run), "--json", str(tmp_path / "collect.json")]))
    (figures,) = json.loads((tmp_path / "collect.json").read_text())
    state = json.loads((run / "checkpoint-2" / "trainer_state.json").read_text())
    evaluations = [entry for entry in state["log_history"] if "eval_rougeL" in entry]
    final = json.loads((run / "eval_results.json").read_text())
    assert figures["method"] == "prompt_tuning" and len(evaluations) == 3  # at the start, then after each step
    assert figures["rougeL_by_epoch"] == [[entry["epoch"], entry["eval_rougeL"]] for entry in evaluations]
    assert figures["final"] == {key: final[f"eval_{key}"] for key in real_text.NAMES}
    assert figures["final_eval_rows_per_s"] == final["eval_samples_per_second"]
    assert figures["train_runtime"] > 0 and figures["seconds_per_epoch"] > figures["train_seconds_per_epoch"] > 0
    assert len(_table_rows(capsys.readouterr().out)) == 2


@pytest.fixture
def multi_adapters():
    spec = importlib.util.spec_from_file_location("multi_adapters", BENCHMARKS / "multi_adapters.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.usefixtures(one_thread.__name__)
def test_multi_adapters_times_both_batchings_on_the_same_rows_and_counts_rows_that_differ(
    tmp_path, multi_adapters, capsys, monkeypatch
):
    """benchmarks/multi_adapters.py on the embedded model, without its memory processes (the slow smoke test runs
    them): one table row per number of adapters and mode, both batchings timed, their results compared row by row;
    a batching that changes one row's result is caught (the negative control)."""
    folders = multi_adapters.save_adapters(str(EMBEDDED_MODEL_PATH), 4, tmp_path / "adapters")
    configs = [json.loads((Path(f) / "adapter_config.json").read_text()) for f in folders.values()]
    assert [(c["peft_type"], c["num_virtual_tokens"]) for c in configs] == [
        ("PROMPT_TUNING", 8), ("P_TUNING", 12), ("PREFIX_TUNING", 16), ("PROMPT_TUNING", 20)
    ]  # fmt: skip
    assert sorted(multi_adapters.row_adapters(["a", "b", "c"], 7).count(n) for n in "abc") == [2, 2, 3]

    args = ["--adapters", "1", "3", "--rows", "6", "--repeats", "1", "--batch_size", "4"]
    args += ["--no_memory", "--device", "cpu"]
    results = multi_adapters.main(multi_adapters.parse_args([*args, "--json", str(tmp_path / "m.json")]))
    rows = _table_rows(capsys.readouterr().out)
    assert rows[0] == multi_adapters.HEADERS
    assert [row[:4] for row in rows[1:]] == [
        ["embedded", n, mode, "6"] for n in ("1", "3") for mode in ("generate", "rank")
    ]
    assert all(float(row[4]) > 0 and float(row[5]) > 0 and row[7:] == ["-", "-", "0"] for row in rows[1:])
    saved = json.loads((tmp_path / "m.json").read_text())
    assert saved["results"] == results and saved["device"] == "cpu"
    for result in results:
        assert {b: len(s) for b, s in result["seconds"].items()} == {"mixed": 1, "per_adapter": 1}
        assert result["rows_per_s"]["mixed"] == pytest.approx(6 / result["seconds"]["mixed"][0])

    # Negative controls: a batching that changes one row's label, or one rank score, is counted.
    real = multi_adapters.predict_adapters

    def tampered(change):
        def predict_adapters(*a, batching, **k):
            predictions = real(*a, batching=batching, **k)
            if batching == "mixed":
                predictions[2] = dataclasses.replace(predictions[2], **change(predictions[2]))
            return predictions

        return predict_adapters

    for change in (
        lambda p: {"predicted": "tampered"},
        lambda p: {"scores": {label: score + 0.01 for label, score in p.scores.items()}},
    ):
        monkeypatch.setattr(multi_adapters, "predict_adapters", tampered(change))
        args = ["--adapters", "2", "--rows", "4", "--repeats", "1", "--modes", "rank", "--no_memory", "--device", "cpu"]
        assert [r["rows_differing"] for r in multi_adapters.main(multi_adapters.parse_args(args))] == [1]
