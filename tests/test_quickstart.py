"""The README's main job: each method learns the complaint task on the embedded model, offline."""

from __future__ import annotations

import pytest
from conftest import METHODS
from peft import AutoPeftModelForCausalLM

from softprompt_hf import quickstart


@pytest.mark.parametrize("method", METHODS)
def test_quickstart_learns_the_task(tmp_path, method):
    metrics = quickstart.main(["--method", method, "--output_dir", str(tmp_path), "--disable_tqdm", "true"])
    # The embedded model without an instruction answers other tasks; the learned prompt selects this one.
    assert metrics["accuracy_before"] <= 0.5
    assert metrics["accuracy_after"] >= 0.9
    assert (tmp_path / "adapter_model.safetensors").is_file()
    assert (tmp_path / "tokenizer.json").is_file()
    AutoPeftModelForCausalLM.from_pretrained(tmp_path)  # the saved adapter loads on its own
