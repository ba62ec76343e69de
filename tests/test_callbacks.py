"""Callbacks: exact resume after SIGKILL, best-checkpoint reload, early stopping, refusals, logging."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import METHODS
from safetensors.torch import load_file
from transformers import DataCollatorWithFlattening, EarlyStoppingCallback, Trainer

from softprompt_hf.training.callbacks import (
    ParameterSummaryCallback,
    SamplePredictionsCallback,
    SoftPromptGuardCallback,
    check_trainer,
)
from softprompt_hf.training.checkpoints import (
    CHECKPOINT_MARKER_NAME,
    LAST_CHECKPOINT_NAME,
    SOFT_PROMPT_STATE_NAME,
    last_complete_checkpoint,
    load_soft_prompt_state,
)

SCRIPTS = Path(__file__).parent / "scripts"
sys.path.insert(0, str(SCRIPTS))
from resumable_run import MAX_STEPS, SAVE_STEPS, run  # noqa: E402

# (method, prefix_projection): the four kinds of trainable modules peft has for soft prompts.
VARIANTS = [("prompt_tuning", False), ("p_tuning", False), ("prefix_tuning", False), ("prefix_tuning", True)]
VARIANT_IDS = ["prompt_tuning", "p_tuning", "prefix_tuning", "prefix_projection"]


def trainable(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}


def kill_during_run(output_dir: Path, method: str, prefix_projection: bool, kill_at_step: int) -> None:
    command = [sys.executable, str(SCRIPTS / "resumable_run.py"), str(output_dir), "--method", method]
    command += ["--kill_at_step", str(kill_at_step)] + (["--prefix_projection"] if prefix_projection else [])
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == -9, result.stderr[-3000:]  # killed by SIGKILL, not finished or crashed


@pytest.mark.parametrize(("method", "prefix_projection"), VARIANTS, ids=VARIANT_IDS)
def test_resume_after_sigkill_equals_uninterrupted_run(tmp_path, method, prefix_projection):
    killed = tmp_path / "killed"
    kill_during_run(killed, method, prefix_projection, kill_at_step=SAVE_STEPS + 2)
    # Killed two steps after the first checkpoint: only that one is complete, nothing was written after it.
    assert last_complete_checkpoint(killed) == str(killed / f"checkpoint-{SAVE_STEPS}")
    assert json.loads((killed / LAST_CHECKPOINT_NAME).read_text())["global_step"] == SAVE_STEPS

    resumed = run(killed, method, prefix_projection=prefix_projection, resume=True)
    uninterrupted = run(tmp_path / "full", method, prefix_projection=prefix_projection)
    assert resumed.state.global_step == uninterrupted.state.global_step == MAX_STEPS
    got, want = trainable(resumed), trainable(uninterrupted)
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=1e-6, msg=name)
    # The step-4 weights were really restored: training moved them, so a fresh start would differ.
    started_over = run(
        tmp_path / "fresh", method, prefix_projection=prefix_projection, max_steps=MAX_STEPS - SAVE_STEPS
    )
    assert any(not torch.allclose(trainable(started_over)[n], want[n]) for n in want)


@pytest.mark.distributed
def test_ddp_markers_wait_for_every_process_rng_state(tmp_path):
    """Two processes, a checkpoint every step, process 1 late with its RNG state: every marker still lists and
    correctly hashes every file of its checkpoint, and both processes resume from them."""
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(SCRIPTS / "ddp_checkpoints.py"), str(out),
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((out / "report.json").read_text())
    assert report == {"num_processes": 2, "first_steps": 3, "resumed_steps": 5}
    checkpoints = sorted(out.glob("checkpoint-*"), key=lambda path: int(path.name.split("-")[1]))
    assert [path.name for path in checkpoints] == [f"checkpoint-{step}" for step in range(1, 6)]
    for folder in checkpoints:
        files = json.loads((folder / CHECKPOINT_MARKER_NAME).read_text())["files"]
        on_disk = {
            path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in folder.rglob("*")
            if path.is_file() and path.name != CHECKPOINT_MARKER_NAME
        }
        assert {"rng_state_0.pth", "rng_state_1.pth", SOFT_PROMPT_STATE_NAME} <= files.keys(), folder.name
        assert files == on_disk, folder.name
    assert last_complete_checkpoint(out) == str(out / "checkpoint-5")
    assert json.loads((out / LAST_CHECKPOINT_NAME).read_text())["global_step"] == 5


def test_marker_leaves_out_files_still_being_written(tmp_path, monkeypatch):
    """A folder being filled through replace_folder (a hidden ``.<name>.tmp-*`` folder) or an atomic write's hidden
    temporary is not part of the checkpoint: the marker must not record a half-written file."""
    save_rng_state = Trainer._save_rng_state

    def with_writes_in_flight(self, output_dir):
        save_rng_state(self, output_dir)
        (Path(output_dir) / ".adapter.tmp-1234").mkdir()
        (Path(output_dir) / ".adapter.tmp-1234" / "adapter_model.safetensors").write_bytes(b"half")
        (Path(output_dir) / "extra").mkdir()
        (Path(output_dir) / "extra" / ".notes.json.5678.tmp").write_text("{")

    monkeypatch.setattr(Trainer, "_save_rng_state", with_writes_in_flight)
    out = tmp_path / "run"
    run(out, "prompt_tuning", max_steps=SAVE_STEPS)
    folder = out / f"checkpoint-{SAVE_STEPS}"
    files = json.loads((folder / CHECKPOINT_MARKER_NAME).read_text())["files"]
    assert {"rng_state.pth", SOFT_PROMPT_STATE_NAME, "trainer_state.json"} <= files.keys()
    assert not [name for name in files if any(part.startswith(".") for part in name.split("/"))]
    # The half-written file may change or vanish later: the checkpoint is still complete.
    (folder / ".adapter.tmp-1234" / "adapter_model.safetensors").write_bytes(b"complete")
    trainer = run(out, "prompt_tuning", train=False)
    load_soft_prompt_state(trainer.model, folder)


@pytest.mark.parametrize("changed", [False, True], ids=["base tokenizer", "changed tokenizer"])
def test_checkpoints_hold_the_tokenizer_only_where_it_is_not_the_base_models(tmp_path, model_dirs, changed):
    """Issue 15: every checkpoint carried the tokenizer the Trainer saves into it (Gemma 3's 262k-token
    tokenizer.json is 33 MB, its soft prompt a few KB). Resuming needs none: the base model's own is left out,
    a changed one stays; the marker records what is there, and the run resumes exactly."""
    from conftest import labelled_rows
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

    from softprompt_hf import SoftPromptCheckpointCallback, SoftPromptDataCollator, build_soft_prompt_model

    tokenizer = AutoTokenizer.from_pretrained(model_dirs["gpt2"])
    if changed:
        tokenizer.chat_template = "{{ messages[0]['content'] }}"
    out = tmp_path / "run"

    def trainer() -> Trainer:
        torch.manual_seed(0)
        base = AutoModelForCausalLM.from_pretrained(model_dirs["gpt2"])
        args = TrainingArguments(
            output_dir=str(out),
            max_steps=4,
            save_steps=2,
            per_device_train_batch_size=4,
            learning_rate=3e-2,
            remove_unused_columns=False,
            report_to=[],
            logging_steps=100,
            use_cpu=True,
            disable_tqdm=True,
            seed=0,
        )
        return Trainer(
            model=build_soft_prompt_model(base, method="p_tuning", num_virtual_tokens=4),
            args=args,
            train_dataset=Dataset.from_list(labelled_rows(16)),
            data_collator=SoftPromptDataCollator(tokenizer),
            processing_class=tokenizer,
            callbacks=[SoftPromptCheckpointCallback()],
        )

    uninterrupted = trainer()
    uninterrupted.train()
    want = trainable(uninterrupted)
    for step in (2, 4):
        folder = out / f"checkpoint-{step}"
        names = {path.name for path in folder.iterdir()}
        assert {"adapter_model.safetensors", SOFT_PROMPT_STATE_NAME, "optimizer.pt"} <= names
        assert {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"} & names == (
            {"tokenizer.json", "tokenizer_config.json", "chat_template.jinja"} if changed else set()
        )
        assert set(json.loads((folder / CHECKPOINT_MARKER_NAME).read_text())["files"]) == names - {
            CHECKPOINT_MARKER_NAME
        }
    resumed = trainer()
    resumed.train(resume_from_checkpoint=str(out / "checkpoint-2"))
    assert resumed.state.global_step == 4
    got = trainable(resumed)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=1e-6, msg=name)


def test_resume_without_the_callback_corrupts_p_tuning(tmp_path):
    """Why the callback exists: the Trainer's own resume loads P-tuning's encoder *output* into its input."""
    full = run(tmp_path / "full", "p_tuning")
    trainer = run(tmp_path / "full", "p_tuning", train=False)
    # Take our loader away: what is left is peft's load_adapter, as in a plain Trainer.
    del trainer.model.load_adapter
    trainer.train(resume_from_checkpoint=str(tmp_path / "full" / f"checkpoint-{MAX_STEPS - SAVE_STEPS}"))
    got, want = trainable(trainer), trainable(full)
    assert max((got[n] - want[n]).abs().max().item() for n in want) > 1e-3


def test_incomplete_or_damaged_checkpoint_is_refused(tmp_path):
    out = tmp_path / "run"
    run(out, "p_tuning", max_steps=2 * SAVE_STEPS)
    last = out / f"checkpoint-{2 * SAVE_STEPS}"
    # A checkpoint whose marker was never written (killed while saving) is skipped and refused.
    (last / CHECKPOINT_MARKER_NAME).unlink()
    assert last_complete_checkpoint(out) == str(out / f"checkpoint-{SAVE_STEPS}")
    trainer = run(out, "p_tuning", train=False, max_steps=3 * SAVE_STEPS)
    with pytest.raises(ValueError, match="not a complete soft-prompt checkpoint.*last_complete_checkpoint"):
        trainer.train(resume_from_checkpoint=str(last))
    # A file changed after saving is detected through the marker's hashes.
    first = out / f"checkpoint-{SAVE_STEPS}"
    state = load_file(str(first / SOFT_PROMPT_STATE_NAME))
    from safetensors.torch import save_file

    save_file({k: v + 1 for k, v in state.items()}, str(first / SOFT_PROMPT_STATE_NAME))
    with pytest.raises(ValueError, match="changed or damaged"):
        load_soft_prompt_state(trainer.model, first)


def test_checkpoint_from_another_configuration_is_refused(tmp_path):
    run(tmp_path / "run", "prefix_tuning", max_steps=SAVE_STEPS)
    other = run(tmp_path / "other", "prefix_tuning", prefix_projection=True, train=False)
    with pytest.raises(ValueError, match="another soft-prompt configuration"):
        load_soft_prompt_state(other.model, tmp_path / "run" / f"checkpoint-{SAVE_STEPS}")


@pytest.mark.parametrize(("method", "prefix_projection"), VARIANTS, ids=VARIANT_IDS)
def test_load_best_model_at_end_restores_the_best_checkpoint(tmp_path, method, prefix_projection):
    # greater_is_better=False makes the *worst* accuracy "best": an early checkpoint, never the last one, so
    # the test sees whether the reload really happened.
    trainer = run(
        tmp_path / "run",
        method,
        prefix_projection=prefix_projection,
        evaluate=True,
        eval_strategy="steps",
        eval_steps=SAVE_STEPS,
        load_best_model_at_end=True,
        metric_for_best_model="accuracy",
        greater_is_better=False,
    )
    history = [entry for entry in trainer.state.log_history if "eval_accuracy" in entry]
    worst = min(history, key=lambda entry: entry["eval_accuracy"])
    assert trainer.state.best_model_checkpoint.endswith(f"checkpoint-{worst['step']}")
    saved = load_file(str(Path(trainer.state.best_model_checkpoint) / SOFT_PROMPT_STATE_NAME))
    live = trainable(trainer)
    for name, value in saved.items():
        torch.testing.assert_close(live[name], value, rtol=0, atol=0, msg=name)
    if worst["step"] != MAX_STEPS:
        final = load_file(str(tmp_path / "run" / f"checkpoint-{MAX_STEPS}" / SOFT_PROMPT_STATE_NAME))
        assert any(not torch.equal(final[n], saved[n]) for n in saved)


def test_early_stopping_on_generated_f1(tmp_path):
    trainer = run(
        tmp_path / "run",
        "prompt_tuning",
        evaluate=True,
        max_steps=60,
        eval_strategy="steps",
        eval_steps=2,
        save_steps=2,
        load_best_model_at_end=True,
        metric_for_best_model="f1",
        callbacks=[EarlyStoppingCallback(early_stopping_patience=2)],
    )
    f1 = [entry["eval_f1"] for entry in trainer.state.log_history if "eval_f1" in entry]
    assert trainer.state.global_step < 60
    # Stopped after two evaluations without improvement over the best, which is the one restored.
    best = max(f1)
    assert f1[-1] <= best and f1[-2] <= best and f1.index(best) == len(f1) - 3
    assert trainer.state.best_metric == best


def test_same_seed_same_adapter(tmp_path):
    first = run(tmp_path / "a", "p_tuning")
    second = run(tmp_path / "b", "p_tuning")
    a = (tmp_path / "a" / f"checkpoint-{MAX_STEPS}" / "adapter_model.safetensors").read_bytes()
    b = (tmp_path / "b" / f"checkpoint-{MAX_STEPS}" / "adapter_model.safetensors").read_bytes()
    assert a == b
    assert trainable(first).keys() == trainable(second).keys()


# ----------------------------------------------------------------------------------------------------------
# Refusals
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_guard_refuses_label_smoothing_when_the_trainer_is_built(tmp_path, method):
    with pytest.raises(ValueError, match="label_smoothing_factor"):
        run(tmp_path, method, train=False, callbacks=[SoftPromptGuardCallback()], label_smoothing_factor=0.1)


def test_guard_refuses_prefix_tuning_with_checkpointing(tmp_path):
    with pytest.raises(ValueError, match="Prefix tuning cannot be combined with gradient checkpointing"):
        run(tmp_path, "prefix_tuning", train=False, callbacks=[SoftPromptGuardCallback()], gradient_checkpointing=True)


def test_guard_refuses_padding_free_collation_before_the_first_step(tmp_path):
    trainer = run(tmp_path, "prompt_tuning", train=False, callbacks=[SoftPromptGuardCallback()])
    trainer.data_collator = DataCollatorWithFlattening()
    before = trainable(trainer)
    with pytest.raises(ValueError, match="Padding-free collation"):
        trainer.train()
    assert trainer.state.global_step == 0
    assert all(torch.equal(before[n], p) for n, p in trainable(trainer).items())
    with pytest.raises(ValueError, match="Padding-free collation"):
        check_trainer(trainer)


@pytest.mark.parametrize("method", METHODS)
def test_check_trainer_refuses_compute_loss_func_for_prompt_and_p_tuning(tmp_path, method):
    trainer = run(tmp_path, method, train=False)
    trainer.compute_loss_func = lambda outputs, labels, num_items_in_batch=None: outputs.logits.sum()
    if method == "prefix_tuning":
        check_trainer(trainer)  # adds no positions: the loss lines up, so it is allowed
    else:
        with pytest.raises(ValueError, match="compute_loss_func cannot be used"):
            check_trainer(trainer)


def test_guard_refuses_deepspeed_zero3(tmp_path):
    # DeepSpeed cannot be installed and run here (it needs a GPU); the guard reads the stage from the
    # DeepSpeed config the Trainer would use, so give it one.
    from types import SimpleNamespace

    trainer = run(tmp_path, "p_tuning", train=False)
    guard = SoftPromptGuardCallback()
    trainer.args.hf_deepspeed_config = SimpleNamespace(config={"zero_optimization": {"stage": 2}})
    guard.on_init_end(trainer.args, trainer.state, trainer.control, model=trainer.model)  # ZeRO-2 is fine
    trainer.args.hf_deepspeed_config = SimpleNamespace(config={"zero_optimization": {"stage": 3}})
    with pytest.raises(ValueError, match=r"ZeRO-3 is refused.*FSDP2 \(recipes/accelerate/fsdp\.yaml\)"):
        guard.on_init_end(trainer.args, trainer.state, trainer.control, model=trainer.model)


# ----------------------------------------------------------------------------------------------------------
# Logging
# ----------------------------------------------------------------------------------------------------------


class _Records:
    def __init__(self):
        self.messages: list[str] = []

    def __enter__(self):
        import logging

        self.handler = logging.Handler()
        self.handler.emit = lambda record: self.messages.append(record.getMessage())  # type: ignore[method-assign]
        self.logger = logging.getLogger("softprompt_hf")
        self.logger.addHandler(self.handler)
        self.level = self.logger.level
        self.logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc):
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.level)


def test_parameter_summary_logged_at_train_start(tmp_path):
    with _Records() as records:
        run(tmp_path, "p_tuning", max_steps=1, save_steps=100, callbacks=[ParameterSummaryCallback()])
    summary = next(m for m in records.messages if m.startswith("Trainable parameters"))
    trainer = run(tmp_path / "x", "p_tuning", train=False)
    total_trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    assert f"Trainable parameters: {total_trainable:,} of" in summary
    assert "prompt_encoder.default.mlp_head.0: " in summary and "prompt_encoder.default.embedding: " in summary


def test_sample_predictions_go_to_logs_and_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = run(tmp_path / "run", "prompt_tuning", evaluate=True, train=False)
    metrics = next(cb for cb in trainer.callback_handler.callbacks if type(cb).__name__ == "GenerationMetrics")
    samples = SamplePredictionsCallback(metrics, num_samples=3)
    trainer.add_callback(samples)
    trainer.args.report_to = ["tensorboard"]
    with _Records() as records:
        trainer.evaluate()
    rows = samples.table()
    assert len(rows) == 3
    assert [r["gold"] for r in rows] == [p.gold for p in metrics.last_predictions[:3]]
    logged = next(m for m in records.messages if m.startswith("Sample predictions at step 0"))
    assert all(repr(r["output"]) in logged for r in rows)
    events = EventAccumulator(str(tmp_path / "run" / "runs" / "sample_predictions"), size_guidance={"tensors": 0})
    events.Reload()
    tensors = events.Tensors("eval/sample_predictions/text_summary")
    text = tensors[0].tensor_proto.string_val[0].decode()
    assert "| text | gold | predicted | generated |" in text
    assert all(r["gold"] in text for r in rows)
