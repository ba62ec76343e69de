"""SoftPromptTrainingArguments holds the recipes' defaults; a YAML config sets parser defaults; options per method."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import pickle
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest
from conftest import METHODS
from transformers import TrainingArguments

from softprompt_hf.modeling.methods import SoftPromptArguments, build_peft_config
from softprompt_hf.steps import run_recipe
from softprompt_hf.training.arguments import _ARGUMENT_CLASSES, SoftPromptTrainingArguments, parse_recipe_args

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("restore_recipe_logging")

# The recipes' training defaults: the seed guide's optimisation and the per-epoch evaluation and selection.
RECIPE_DEFAULTS = {
    "learning_rate": 3e-2,
    "num_train_epochs": 3,
    "per_device_train_batch_size": 16,
    "per_device_eval_batch_size": 32,
    "warmup_steps": 0,
    "remove_unused_columns": False,
    "save_total_limit": 2,
    "load_best_model_at_end": True,
    "metric_for_best_model": "f1",
    "greater_is_better": True,
    "logging_steps": 10,
    "seed": 42,
    "ddp_find_unused_parameters": False,
    # A recipe run's own options.
    "eval_mode": "generate",
    "num_sample_predictions": 4,
    "early_stopping_patience": None,
    "predict_unlabeled": True,
    "label_only_logits": True,
    "shared_prompt": True,
}


def help_text(method: str, argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        parse_recipe_args(method, [*argv, "--help"])
    assert exit_info.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines


def shown_default(text: str, flag: str) -> str:
    """The default that ``--help`` shows for ``--flag``: in its entry below "options:", not in the usage line."""
    match = re.search(rf"(?<![\w-])--{flag}[ ,].*?\(default: (.*?)\)", text[text.index(" options: ") :])
    assert match, flag
    return match.group(1)


def test_python_users_get_the_recipe_defaults(tmp_path):
    args = SoftPromptTrainingArguments(output_dir=str(tmp_path), use_cpu=True)
    assert isinstance(args, TrainingArguments)
    for name, value in RECIPE_DEFAULTS.items():
        assert getattr(args, name) == value, name
    assert (args.eval_strategy.value, args.save_strategy.value, args.lr_scheduler_type.value) == (
        "epoch",
        "epoch",
        "linear",
    )
    assert args.report_to == [] and args.push_timeout > 0
    # The recipe parser gives the same arguments (only output_dir is the recipe's).
    parsed = parse_recipe_args("p_tuning", ["--output_dir", str(tmp_path), "--use_cpu", "true"]).training
    assert parsed == args


@pytest.mark.parametrize(
    "asks",
    [{"metric_for_best_model": "loss", "greater_is_better": False}, {"include_for_metrics": ["loss"]}],
)
def test_the_eval_loss_is_on_where_the_arguments_ask_for_it(tmp_path, asks):
    assert SoftPromptTrainingArguments(output_dir=str(tmp_path), use_cpu=True).eval_loss is False
    assert SoftPromptTrainingArguments(output_dir=str(tmp_path), use_cpu=True, **asks).eval_loss is True


@pytest.mark.parametrize("method", METHODS)
def test_help_shows_the_recipe_defaults(method, capsys):
    text = help_text(method, [], capsys)
    assert shown_default(text, "output_dir") == f"outputs/{method}"
    for name, value in RECIPE_DEFAULTS.items():
        assert shown_default(text, name) == str(value), name
    assert shown_default(text, "eval_strategy") == "epoch" and shown_default(text, "save_strategy") == "epoch"


def test_help_of_the_script_shows_the_defaults_and_those_of_a_config(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("learning_rate: 1e-3\nnum_virtual_tokens: 12\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, str(REPO / "recipes" / "prefix_tuning.py"), "--config", str(config), "--help"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    text = " ".join(result.stdout.split())
    # The config's values are the defaults now; everything else keeps the recipe's.
    assert shown_default(text, "learning_rate") == "1e-3" and shown_default(text, "num_virtual_tokens") == "12"
    assert shown_default(text, "per_device_train_batch_size") == "16"
    assert shown_default(text, "output_dir") == "outputs/prefix_tuning"


def test_training_arguments_pickle_and_keep_no_token(tmp_path):
    """The Trainer pickles its arguments into every checkpoint (training_args.bin): the class must load again,
    and the recipe's first step (take_over_hub_push) takes the token out."""
    from softprompt_hf.steps import take_over_hub_push

    secret = "hf_NotForCheckpoints123"
    args = parse_recipe_args("p_tuning", ["--output_dir", str(tmp_path), "--hub_token", secret, "--use_cpu", "true"])
    assert args.training.hub_token == secret
    take_over_hub_push(args.training, args.model)
    assert args.training.hub_token is None
    data = pickle.dumps(args.training)
    assert secret.encode() not in data
    assert pickle.loads(data) == args.training


# Each setting once as YAML and once as the flag a user would type: the parsed arguments must be equal and of
# the same types (YAML 1.1 reads 3e-2 as a string and 0.01 as a float; ints go into float fields).
YAML_AND_FLAGS = [
    ("learning_rate: 3e-2", ["--learning_rate", "3e-2"]),
    ("weight_decay: 0.01", ["--weight_decay", "0.01"]),
    ("num_train_epochs: 2", ["--num_train_epochs", "2"]),
    ("per_device_train_batch_size: 4", ["--per_device_train_batch_size", "4"]),
    ("bf16: false", ["--bf16", "false"]),
    ("load_best_model_at_end: false", ["--load_best_model_at_end", "false"]),
    ("eval_strategy: steps", ["--eval_strategy", "steps"]),
    ("report_to: tensorboard", ["--report_to", "tensorboard"]),
    ("label_names: labels", ["--label_names", "labels"]),
    ("include_for_metrics: [inputs, loss]", ["--include_for_metrics", "inputs", "loss"]),
    ("lr_scheduler_kwargs: {power: 2.0}", ["--lr_scheduler_kwargs", '{"power": 2.0}']),
    ("validation_size: 10", ["--validation_size", "10"]),
    ("max_length: 48", ["--max_length", "48"]),
    ("raft_subset: 123", ["--raft_subset", "123"]),
    ("num_virtual_tokens: 6", ["--num_virtual_tokens", "6"]),
    ("prefix_projection: true", ["--prefix_projection", "true"]),
    ("encoder_hidden_size: 64", ["--encoder_hidden_size", "64"]),
    ("eval_mode: rank", ["--eval_mode", "rank"]),
    ("early_stopping_patience: 2", ["--early_stopping_patience", "2"]),
    ("shared_prompt: false", ["--shared_prompt", "false"]),
    ("push_timeout: 5", ["--push_timeout", "5"]),
]


def typed(args) -> dict:
    values = {}
    for group in args:
        for spec in dataclasses.fields(group):
            value = getattr(group, spec.name)
            values[spec.name] = (type(value), value)
    return values


def test_a_config_gives_the_values_and_types_of_the_flags(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("\n".join(line for line, _ in YAML_AND_FLAGS) + "\n")
    flags = [flag for _, pair in YAML_AND_FLAGS for flag in pair]
    out = ["--output_dir", str(tmp_path / "out"), "--eval_steps", "5", "--save_steps", "5"]
    from_yaml = parse_recipe_args("prefix_tuning", ["--config", str(config), *out])
    from_flags = parse_recipe_args("prefix_tuning", [*flags, *out])
    assert typed(from_yaml) == typed(from_flags)
    training = from_yaml.training
    assert type(training.learning_rate) is float and training.learning_rate == 3e-2
    assert type(training.num_train_epochs) is float and training.num_train_epochs == 2
    assert training.report_to == ["tensorboard"] and training.label_names == ["labels"]
    assert training.include_for_metrics == ["inputs", "loss"]
    assert training.lr_scheduler_kwargs == {"power": 2.0}
    assert from_yaml.data.validation_size == 10.0 and from_yaml.data.raft_subset == "123"
    assert from_yaml.prompt.prefix_projection is True and training.eval_mode == "rank"


def test_flags_override_a_config_and_a_config_overrides_the_defaults(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("learning_rate: 0.1\nnum_train_epochs: 7\nshared_prompt: false\nmax_length: 40\n")
    args = parse_recipe_args("p_tuning", ["--config", str(config), "--num_train_epochs", "2", "--max_length", "30"])
    assert args.training.num_train_epochs == 2 and args.data.max_length == 30  # flags win
    assert args.training.learning_rate == 0.1 and args.training.shared_prompt is False  # then the file
    assert args.training.per_device_train_batch_size == 16  # then the recipe's defaults
    # A flag before --config overrides it too: the file only sets defaults.
    args = parse_recipe_args("p_tuning", ["--num_train_epochs", "4", "--config", str(config)])
    assert args.training.num_train_epochs == 4


def test_recipes_train_py_takes_the_method_from_the_flag_then_the_config_then_prompt_tuning(tmp_path):
    """parse_recipe_args(None, ...) is recipes/train.py's: --method wins, then the config's method, then the
    first method; a method's own script (a method given) refuses another one."""
    config = tmp_path / "run.yaml"
    config.write_text("method: prefix_tuning\nnum_virtual_tokens: 7\n")
    assert parse_recipe_args(None, []).prompt.method == "prompt_tuning"
    assert parse_recipe_args(None, ["--method", "p_tuning"]).prompt.method == "p_tuning"
    from_config = parse_recipe_args(None, ["--config", str(config)])
    assert from_config.prompt.method == "prefix_tuning" and from_config.prompt.num_virtual_tokens == 7
    assert str(from_config.training.output_dir) == "outputs/prefix_tuning"  # the method's own default folder
    with pytest.raises(ValueError, match="is a config for method 'prefix_tuning'"):
        parse_recipe_args(None, ["--config", str(config), "--method", "p_tuning"])
    with pytest.raises(ValueError, match="Unknown method 'lora'; expected one of prompt_tuning, p_tuning"):
        parse_recipe_args(None, ["--method", "lora"])
    with pytest.raises(ValueError, match="This recipe trains p_tuning; for prompt_tuning run"):
        parse_recipe_args("p_tuning", ["--method", "prompt_tuning"])


def test_parsing_settles_the_defaults_that_depend_on_other_flags(tmp_path):
    """The label boundary follows the base model (the embedded one's is 'separate', others 'joint'), and a
    free-text run picks its best adapter by ROUGE-L (else the first metric asked for) where F1 was left."""
    from softprompt_hf.embedded import EMBEDDED_LABEL_TOKENIZATION

    assert parse_recipe_args("p_tuning", []).data.label_tokenization == EMBEDDED_LABEL_TOKENIZATION
    assert parse_recipe_args("p_tuning", ["--label_tokenization", "joint"]).data.label_tokenization == "joint"
    other = tmp_path / "model"
    other.mkdir()
    assert parse_recipe_args("p_tuning", ["--model_name_or_path", str(other)]).data.label_tokenization == "joint"
    text = ["--task", "text", "--dataset", "files", "--train_file", "rows.csv", "--target_column", "summary"]
    args = parse_recipe_args("prompt_tuning", text)
    assert args.training.metric_for_best_model == "rougeL" and args.training.greater_is_better is True
    args = parse_recipe_args("prompt_tuning", [*text, "--text_metrics", "bleu,chrf"])
    assert args.training.metric_for_best_model == "bleu"
    args = parse_recipe_args("prompt_tuning", [*text, "--metric_for_best_model", "exact_match"])
    assert args.training.metric_for_best_model == "exact_match"  # the user's choice stays
    assert parse_recipe_args("prompt_tuning", []).training.metric_for_best_model == "f1"  # labels: macro-F1


def test_null_in_a_config_keeps_the_default(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("learning_rate: null\nid_column: null\n")
    args = parse_recipe_args("p_tuning", ["--config", str(config)])
    assert args.training.learning_rate == 3e-2 and args.data.id_column == "ID"


@pytest.mark.parametrize(
    ("yaml_text", "match"),
    [
        ("dataset: tweets\n", r"dataset='tweets': choose one of embedded, raft, files"),
        ("eval_mode: vote\n", r"--eval_mode 'vote': choose one of generate, rank"),
        ("push_timeout: 0\n", r"--push_timeout 0.0: give a value above 0 \(seconds\)"),
        ("learning_rat: 0.1\n", r"unknown setting 'learning_rat'\. Did you mean 'learning_rate'"),
    ],
)
def test_a_config_value_is_checked_like_the_flag(tmp_path, yaml_text, match):
    config = tmp_path / "run.yaml"
    config.write_text(yaml_text)
    with pytest.raises(ValueError, match=match):
        parse_recipe_args("p_tuning", ["--config", str(config)])


# An option of one method, set for another: refused with the option, the method and who takes it.
FOREIGN = [
    ("p_tuning", {"prefix_projection": True}, r"prefix_projection=True does not apply to p_tuning: only prefix_tuning"),
    ("prefix_tuning", {"prompt_tuning_init": "RANDOM"}, r"prompt_tuning_init='RANDOM' does not apply to prefix_tuning"),
    ("prompt_tuning", {"encoder_hidden_size": 64}, r"encoder_hidden_size=64 does not apply to prompt_tuning: only "),
    ("prompt_tuning", {"encoder_num_layers": 3}, r"encoder_num_layers=3 does not apply to prompt_tuning: only p_tun"),
    ("p_tuning", {"prompt_tuning_init_text": "Hi"}, r"prompt_tuning_init_text='Hi' does not apply to p_tuning"),
    ("prefix_tuning", {"encoder_dropout": 0.1}, r"encoder_dropout=0.1 does not apply to prefix_tuning"),
    ("prefix_tuning", {"encoder_hidden_size": 64}, r"encoder_hidden_size=64 does not apply to prefix_tuning without"),
]


@pytest.mark.parametrize(("method", "options", "match"), FOREIGN)
def test_an_option_of_another_method_is_refused(method, options, match):
    with pytest.raises(ValueError, match=match):
        SoftPromptArguments(method=method, **options)
    with pytest.raises(ValueError, match=match):
        build_peft_config(method=method, **options)
    flags = [item for key, value in options.items() for item in (f"--{key}", str(value).replace("True", "true"))]
    with pytest.raises(ValueError, match=match):
        parse_recipe_args(method, flags)


def test_each_method_takes_its_own_options_and_the_defaults_of_the_others():
    for method in METHODS:
        assert SoftPromptArguments(method=method).method == method
    assert SoftPromptArguments(method="prompt_tuning", prompt_tuning_init="random", num_virtual_tokens=4)
    assert SoftPromptArguments(method="p_tuning", encoder_hidden_size=64, encoder_num_layers=1, encoder_dropout=0.1)
    assert SoftPromptArguments(method="prefix_tuning", prefix_projection=True, encoder_hidden_size=64)
    # An option set to its default is no choice: it passes for every method (e.g. from a shared config file).
    assert SoftPromptArguments(method="p_tuning", prompt_tuning_init="TEXT", prefix_projection=False)
    args = parse_recipe_args("prefix_tuning", ["--prefix_projection", "true", "--encoder_hidden_size", "64"])
    assert build_peft_config(args.prompt).encoder_hidden_size == 64


# ----------------------------------------------------------------------------------------------------------
# Every numeric flag is checked for its range before anything runs: one `error:` line naming the flag.
# ----------------------------------------------------------------------------------------------------------

#: A value out of range for every numeric flag of the recipes, and the recipe that takes the flag.
OUT_OF_RANGE = {
    # DataArguments
    "validation_size": "-0.1",
    "max_length": "0",
    "max_target_length": "1",
    "max_train_samples": "0",
    # SoftPromptArguments
    "num_virtual_tokens": "0",
    "encoder_hidden_size": "0",
    "encoder_num_layers": "0",
    "encoder_dropout": "1.0",
    # SoftPromptTrainingArguments (TrainingArguments' own included)
    "per_device_train_batch_size": "0",
    "per_device_eval_batch_size": "0",
    "gradient_accumulation_steps": "0",
    "eval_accumulation_steps": "0",
    "num_train_epochs": "-1",
    "max_steps": "0",
    "learning_rate": "0",
    "warmup_steps": "-1",
    "weight_decay": "-0.01",
    "adam_beta1": "1.0",
    "adam_beta2": "-0.5",
    "adam_epsilon": "0",
    "max_grad_norm": "-1",
    "label_smoothing_factor": "1.5",
    "neftune_noise_alpha": "-5",
    "torch_empty_cache_steps": "0",
    "logging_steps": "0",
    "eval_steps": "-2",
    "save_steps": "-2",
    "eval_delay": "-1",
    "save_total_limit": "0",
    "seed": "-1",
    "data_seed": "4294967296",
    "dataloader_num_workers": "-1",
    "dataloader_prefetch_factor": "0",
    "ddp_bucket_cap_mb": "0",
    "ddp_timeout": "0",
    "num_sample_predictions": "-1",
    "early_stopping_patience": "0",
    "push_timeout": "0",
}
#: Numeric fields that are not the user's to set.
NOT_A_USER_FLAG = {"local_rank"}  # set by the launcher
P_TUNING_FLAGS = {"encoder_hidden_size", "encoder_num_layers", "encoder_dropout"}


def numeric_fields() -> set[str]:
    numeric = set()
    for cls in _ARGUMENT_CLASSES:
        hints = typing.get_type_hints(cls)
        for spec in dataclasses.fields(cls):
            options = set(typing.get_args(hints[spec.name])) or {hints[spec.name]}
            if spec.init and options & {int, float} and bool not in options:
                numeric.add(spec.name)
    return numeric


def test_every_numeric_flag_has_an_out_of_range_case():
    assert numeric_fields() == set(OUT_OF_RANGE) | NOT_A_USER_FLAG


@pytest.mark.parametrize("flag", sorted(OUT_OF_RANGE))
def test_a_numeric_flag_out_of_range_gets_one_error_line_before_anything_runs(flag, tmp_path, capsys, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the run went past its arguments")

    method = "p_tuning" if flag in P_TUNING_FLAGS else "prompt_tuning"
    spec = importlib.util.spec_from_file_location(f"recipe_{method}", REPO / "recipes" / f"{method}.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    monkeypatch.setattr(recipe.train, "load_run_data", never)
    value = OUT_OF_RANGE[flag]
    argv = [f"--{flag}", value, "--output_dir", str(tmp_path / "out"), "--use_cpu", "true"]
    if flag in ("eval_steps", "save_steps"):
        argv += ["--eval_strategy", "steps", "--save_strategy", "steps"]
    code = run_recipe(recipe.main, argv)
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and flag in lines[0], err
    # The value as given (or as a float), not a number that merely starts with it.
    assert re.search(rf"(?<![\w.-]){re.escape(value)}(\.0)?(?!\.?\d)", lines[0]), err
