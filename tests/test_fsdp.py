"""GenerationMetrics refuses a model sharded by FSDP with a clear message instead of failing inside decoding."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from conftest import labelled_rows, tiny_soft_prompt_model
from torch.distributed.fsdp import FullyShardedDataParallel
from torch.distributed.fsdp.wrap import ModuleWrapPolicy
from transformers import TrainerControl, TrainerState, TrainingArguments
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from softprompt_hf import GenerationMetrics
from softprompt_hf.evaluation import sharded_by_fsdp


@pytest.fixture
def process_group(tmp_path):
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_metrics_refuse_an_fsdp_model_with_the_fix_in_the_message(process_group, tokenizer, tmp_path):
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
    with pytest.raises(ValueError, match=r"FSDP.*multi_gpu\.yaml"):
        metrics.evaluate(model)
    # As a callback: refused when training starts, if the run evaluates at all.
    state, control = TrainerState(), TrainerControl()
    evaluating = TrainingArguments(output_dir=str(tmp_path), eval_strategy="epoch", use_cpu=True)
    with pytest.raises(ValueError, match="FSDP"):
        metrics.on_train_begin(evaluating, state, control, model=wrapped)
    quiet = TrainingArguments(output_dir=str(tmp_path), eval_strategy="no", use_cpu=True)
    metrics.on_train_begin(quiet, state, control, model=wrapped)
    metrics.on_train_begin(evaluating, state, control, model=tiny_soft_prompt_model(tokenizer, "llama", "p_tuning"))
