"""FSDP2: soft prompts on a sharded frozen base train, evaluate, checkpoint, resume and save as in one process.

The 2-process runs use gloo on CPU through tests/scripts/cpu_fsdp.py (accelerate 1.15 and 1.16 turn FSDP on only
for accelerator devices; listed in softprompt_hf.core.upstream). Each compares with the same run in one process without
FSDP and the same global batch: generated texts and ranked labels equal, scores and weights within float32
rounding (another reduction order), and each process holding half of the base model's parameters.

The one-process reference also calls ``trainer.evaluate()`` before training (it changes nothing that follows: the
same losses and weights to the bit), so that it serves the test of that evaluation under FSDP2 too.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import accelerate
import pytest
import torch
import torch.distributed as dist
from conftest import labelled_rows, tiny_soft_prompt_model
from hub_server import TOKEN, hub_fixture  # noqa: F401  (hub fixture)
from packaging.version import Version
from peft import AutoPeftModelForCausalLM
from safetensors.torch import load_file
from torch.distributed.fsdp import FullyShardedDataParallel
from torch.distributed.fsdp.wrap import ModuleWrapPolicy
from transformers import AutoTokenizer, TrainerControl, TrainerState, TrainingArguments
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from softprompt_hf import GenerationMetrics, generate_labels
from softprompt_hf.core.sharding import sharded_by_fsdp
from softprompt_hf.training.arguments import fsdp_version_requested, parse_recipe_args

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).parent / "scripts"
METHODS = ["prompt_tuning", "p_tuning", "prefix_tuning"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
FSDP_FLAGS = [
    "--use_fsdp", "--fsdp_version", "2", "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP",
    "--fsdp_state_dict_type", "FULL_STATE_DICT",
]  # fmt: skip


def under_fsdp(script: Path, *args: str, config: Path | None = None) -> list[str]:
    """``accelerate launch`` of ``script args`` with FSDP2 over 2 CPU processes (flags, or an accelerate config)."""
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1"]
    launch += ["--mixed_precision", "no", "--dynamo_backend", "no"]
    launch += ["--config_file", str(config)] if config is not None else FSDP_FLAGS
    return [*launch, str(SCRIPTS / "cpu_fsdp.py"), str(script), *args]


def run(command: list[str], cwd: Path, expect: int = 0) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=ENV, cwd=cwd)
    assert result.returncode == expect, result.stderr[-4000:]
    return result


def reports(folder: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted(folder.glob("process_*.json"))]


def assert_same_tensors(got: Path, want: Path, atol: float) -> None:
    a, b = load_file(str(got)), load_file(str(want))
    assert a.keys() == b.keys()
    for name in b:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=atol, msg=name)


#: accelerate 1.16's FSDP2 prepares a model without an optimizer, as ``Trainer.evaluate()`` before any ``train()``
#: asks; accelerate 1.15 refuses it (softprompt_hf.core.upstream entry 31).
FSDP2_PREPARES_A_MODEL_ALONE = Version(accelerate.__version__) >= Version("1.16")
#: What an evaluation reports about itself rather than about the model.
TIMINGS = ("eval_runtime", "eval_samples_per_second", "eval_steps_per_second", "eval_model_preparation_time")


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one")
    command = [sys.executable, str(SCRIPTS / "fsdp_run.py"), str(out), "--per_device_batch", "8", "--evaluate_first"]
    run(command, out)
    return out


@pytest.mark.distributed
def test_fsdp2_over_two_processes_equals_one_process(tmp_path, one_process):
    run(under_fsdp(SCRIPTS / "fsdp_run.py", str(tmp_path), "--per_device_batch", "4"), tmp_path)
    for method in METHODS:
        sharded, single = reports(tmp_path / method), reports(one_process / method)
        assert [r["processes"] for r in sharded] == [2, 2] and single[0]["processes"] == 1
        want = single[0]
        for got in sharded:  # every process gets the gathered predictions
            assert got["generate"]["outputs"] == want["generate"]["outputs"], method
            assert got["generate"]["metrics"] == want["generate"]["metrics"], method
            assert got["rank"]["predicted"] == want["rank"]["predicted"], method
            assert got["constrained"] == want["constrained"], method  # labels and the metrics counted from them
            for a, b in zip(got["rank"]["scores"], want["rank"]["scores"], strict=True):
                assert a.keys() == b.keys() and all(abs(a[k] - b[k]) < 1e-4 for k in b), method
            assert got["losses"] == pytest.approx(want["losses"], rel=1e-5), method
            # The best checkpoint was loaded at the end, from the same step.
            assert Path(got["best_checkpoint"]).name == Path(want["best_checkpoint"]).name
            # Each process holds half of the frozen base (FSDP2 shards every parameter along its first dim).
            assert 0.45 < got["base_parameter_bytes"] / want["base_parameter_bytes"] < 0.55, method
        # The rank evaluation gave one process a batch more: it ran forwards the other matched with one-token ones.
        assert sorted(r["one_token_forwards"] for r in sharded)[0] == 0 < sum(r["one_token_forwards"] for r in sharded)
        assert_same_tensors(tmp_path / method / "trainable.safetensors", one_process / method / "trainable.safetensors",
                            atol=1e-5)  # fmt: skip
        adapter = "adapter/adapter_model.safetensors"
        assert_same_tensors(tmp_path / method / adapter, one_process / method / adapter, atol=1e-4)
        # The checkpoints hold the soft-prompt state, which resume and the best-model load read under FSDP2;
        # accelerate's own adapter-only file holds the trainable modules too (and the tied embedding).
        checkpoint = tmp_path / method / "checkpoint-6"
        soft_prompt = load_file(str(checkpoint / "soft_prompt_state.safetensors"))
        fsdp_state = torch.load(checkpoint / "pytorch_model_fsdp.bin", weights_only=True)
        assert soft_prompt and set(soft_prompt) <= set(fsdp_state)


@pytest.mark.distributed
def test_fsdp2_evaluate_before_training_equals_one_process(tmp_path, one_process):
    """``trainer.evaluate()`` before any ``train()`` under FSDP2: the Trainer prepares (shards) the model alone, then
    ``train()`` prepares it again with its optimizer. Same global eval batch as the one-process run (2 x 4 against
    8): the Trainer's eval loss averages the label tokens of the batches the processes evaluate together."""
    flags = ["--per_device_batch", "4", "--per_device_eval_batch", "4", "--evaluate_first"]
    if not FSDP2_PREPARES_A_MODEL_ALONE:
        failed = run(under_fsdp(SCRIPTS / "fsdp_run.py", str(tmp_path), *flags, "--methods", METHODS[0]), tmp_path,
                     expect=1)  # fmt: skip
        assert "a model and optimizer must be passed together" in failed.stderr
        return
    run(under_fsdp(SCRIPTS / "fsdp_run.py", str(tmp_path), *flags), tmp_path)
    for method in METHODS:
        sharded, want = reports(tmp_path / method), reports(one_process / method)[0]
        assert [r["processes"] for r in sharded] == [2, 2] and want["processes"] == 1
        expected = {k: v for k, v in want["evaluate_first"]["metrics"].items() if k not in TIMINGS}
        assert {"eval_loss", "eval_accuracy", "eval_f1", "eval_invalid_rate"} <= expected.keys()
        for got in sharded:
            first = got["evaluate_first"]
            assert first["outputs"] == want["evaluate_first"]["outputs"], method  # the generated texts
            metrics = {k: v for k, v in first["metrics"].items() if k not in TIMINGS}
            assert metrics.keys() == expected.keys(), method
            for name, value in expected.items():
                assert metrics[name] == pytest.approx(value, rel=1e-4, abs=1e-4), (method, name)
            # Training after it: as in one process.
            assert got["losses"] == pytest.approx(want["losses"], rel=1e-5), method
            assert got["generate"]["outputs"] == want["generate"]["outputs"], method
        assert_same_tensors(tmp_path / method / "trainable.safetensors", one_process / method / "trainable.safetensors",
                            atol=1e-5)  # fmt: skip


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("method", METHODS)
def test_fsdp2_resume_after_sigkill_equals_an_uninterrupted_fsdp2_run(tmp_path, method):
    killed, full = tmp_path / "killed", tmp_path / "full"
    script = SCRIPTS / "fsdp_run.py"
    flags = ["--per_device_batch", "4", "--methods", method]
    run(under_fsdp(script, str(killed), *flags, "--kill_at_step", "4"), tmp_path, expect=1)
    assert json.loads((killed / method / "last_complete_checkpoint.json").read_text())["global_step"] == 3
    assert not (killed / method / "trainable.safetensors").exists()
    run(under_fsdp(script, str(killed), *flags, "--resume"), tmp_path)
    run(under_fsdp(script, str(full), *flags), tmp_path)
    name = f"{method}/trainable.safetensors"
    assert_same_tensors(killed / name, full / name, atol=1e-6)
    assert reports(killed / method)[0]["generate"] == reports(full / method)[0]["generate"]


@pytest.mark.slow
@pytest.mark.distributed
def test_recipe_with_the_fsdp_config_equals_one_process_and_pushes(tmp_path, hub):
    """docs/recipes.md's FSDP command (recipes/accelerate/fsdp.yaml) on the embedded model and data, 1 epoch, pushed to
    the local Hub, against the same recipe in one process. ``--eval_on_start true``: the recipes' evaluation before
    training, which the Trainer runs once the model is prepared with its optimizer (so with accelerate 1.15 too)."""
    from softprompt_hf.embedded import EMBEDDED_MODEL_PATH

    base_id = "softprompt-hf/embedded-bloom"
    hub.add_folder(base_id, EMBEDDED_MODEL_PATH)
    flags = ["--num_train_epochs", "1", "--use_cpu", "true", "--disable_tqdm", "true", "--eval_on_start", "true"]
    recipe = REPO / "recipes" / "prompt_tuning.py"
    config = REPO / "recipes" / "accelerate" / "fsdp.yaml"
    push = ["--push_to_hub", "true", "--hub_model_id", "alice/fsdp", "--hub_token", TOKEN, "--base_model_id", base_id]
    env = {key: value for key, value in ENV.items() if not key.startswith(("HF_", "HUGGING"))}
    env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_OFFLINE="0")
    sharded = under_fsdp(recipe, "--output_dir", "sharded", "--per_device_train_batch_size", "8", *flags, *push,
                         config=config)  # fmt: skip
    result = subprocess.run(sharded, capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    single = [sys.executable, str(recipe), "--output_dir", "single", "--per_device_train_batch_size", "16"]
    run([*single, *flags], tmp_path)
    rows = {}
    for name in ("sharded", "single"):
        with open(tmp_path / name / "predictions.csv", encoding="utf-8") as handle:
            rows[name] = [(row["predicted"], row["output"]) for row in csv.DictReader(handle)]
    assert rows["sharded"] == rows["single"]
    results = {name: json.loads((tmp_path / name / "eval_results.json").read_text()) for name in rows}
    assert results["sharded"]["eval_f1"] == results["single"]["eval_f1"]
    # The evaluation before the first step (not its loss: another global eval batch, 2 x 8 against 8).
    first = {name: evaluation_at_step_0(tmp_path / name) for name in rows}
    for name in ("eval_accuracy", "eval_f1", "eval_invalid_rate"):
        assert first["sharded"][name] == pytest.approx(first["single"][name], abs=1e-4), name
    # 40 Adam steps on near-zero gradients amplify float32 rounding; the labels above are the same.
    adapter = "adapter/adapter_model.safetensors"
    assert_same_tensors(tmp_path / "sharded" / adapter, tmp_path / "single" / adapter, atol=5e-3)
    # The main process pushed the adapter it saved, and it loads by its id with the run's own outputs.
    pushed = hub.repos["alice/fsdp"].files
    assert pushed["adapter_model.safetensors"] == (tmp_path / "sharded" / adapter).read_bytes()
    model = AutoPeftModelForCausalLM.from_pretrained("alice/fsdp")
    # The run used the base model's own tokenizer, so the repository names it instead of holding a copy.
    assert json.loads(pushed["softprompt_hf.json"])["tokenizer"] == "base_model"
    tokenizer = AutoTokenizer.from_pretrained(base_id)
    with open(tmp_path / "sharded" / "predictions.csv", encoding="utf-8") as handle:
        first = list(csv.DictReader(handle))[:8]
    outputs = generate_labels(model, tokenizer, [row["text"] for row in first], max_new_tokens=4)
    assert [o.strip() for o in outputs] == [row["output"].strip() for row in first]


def evaluation_at_step_0(output_dir: Path) -> dict:
    """The metrics of the evaluation before training (``eval_on_start``), from the last checkpoint's log history."""
    last = max(output_dir.glob("checkpoint-*"), key=lambda folder: int(folder.name.split("-")[1]))
    history = json.loads((last / "trainer_state.json").read_text())["log_history"]
    [first] = [entry for entry in history if entry["step"] == 0 and "eval_f1" in entry]
    return first


def test_fsdp_version_requested_reads_accelerate_and_trainer_settings(monkeypatch, tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True)
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    assert fsdp_version_requested(args) is None
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.delenv("FSDP_VERSION", raising=False)
    assert fsdp_version_requested(args) == 1  # accelerate 1.15's default when the launch names none
    monkeypatch.setenv("FSDP_VERSION", "2")
    assert fsdp_version_requested(args) == 2


def test_recipes_take_fsdp2_and_refuse_fsdp1_with_the_fix(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(ValueError, match=r"FSDP version 1.*fsdp\.yaml.*--fsdp_version 2"):
        parse_recipe_args("prompt_tuning", [])
    monkeypatch.setenv("FSDP_VERSION", "2")
    assert parse_recipe_args("prompt_tuning", [])[-1].output_dir


@pytest.fixture
def process_group(tmp_path):
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_metrics_refuse_an_fsdp1_model_with_the_fix_in_the_message(process_group, tokenizer, tmp_path):
    model = tiny_soft_prompt_model(tokenizer, "llama", "prompt_tuning")
    metrics = GenerationMetrics(tokenizer, ["complaint", "no complaint"], labelled_rows(4))
    assert not sharded_by_fsdp(model)
    wrapped = FullyShardedDataParallel(
        model,
        use_orig_params=True,
        device_id=torch.device("cpu"),
        auto_wrap_policy=ModuleWrapPolicy({LlamaDecoderLayer}),
    )
    assert sharded_by_fsdp(wrapped)
    assert sharded_by_fsdp(model)  # its decoder layers are FSDP units: what GenerationMetrics holds under FSDP
    with pytest.raises(ValueError, match=r"FSDP1.*fsdp_version: 2"):
        metrics.evaluate(model)
    # As a callback: refused when training starts, if the run evaluates at all.
    state, control = TrainerState(), TrainerControl()
    evaluating = TrainingArguments(output_dir=str(tmp_path), eval_strategy="epoch", use_cpu=True)
    with pytest.raises(ValueError, match="FSDP1"):
        metrics.on_train_begin(evaluating, state, control, model=wrapped)
    quiet = TrainingArguments(output_dir=str(tmp_path), eval_strategy="no", use_cpu=True)
    metrics.on_train_begin(quiet, state, control, model=wrapped)
    metrics.on_train_begin(evaluating, state, control, model=tiny_soft_prompt_model(tokenizer, "llama", "p_tuning"))
