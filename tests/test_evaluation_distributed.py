"""GenerationMetrics and TextGenerationMetrics in 2 real processes (torchrun, gloo, CPU): each row scored once,
same metrics, with the Trainer's loss pass (label modes) and without it (text, `skip_loss_pass`).

(`accelerate launch --cpu` starts a single process in accelerate 1.15; torchrun plus
`TrainingArguments(use_cpu=True)` is how the Trainer runs DDP on CPUs.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from softprompt_hf import GenerationMetrics, TextGenerationMetrics, build_soft_prompt_model, load_raft
from softprompt_hf.embedded import EMBEDDED_DATA_FILES, EMBEDDED_MODEL_PATH

SCRIPT = Path(__file__).parent / "scripts" / "distributed_eval.py"


@pytest.mark.distributed
@pytest.mark.parametrize("mode", ["generate", "rank", "text"])
def test_two_processes_split_the_rows_and_agree_with_one(tmp_path, mode):
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(SCRIPT), str(tmp_path), mode,
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    reports = [json.loads((tmp_path / f"process{i}.json").read_text()) for i in range(2)]
    assert all(r["num_processes"] == 2 for r in reports)
    # The Trainer's gathered predictions count the eval set's rows once each (45 rows, batches of 8 on each of
    # the 2 processes); for another set, every process refuses.
    assert all("The Trainer evaluated 40 rows" in r["refusal"] for r in reports)

    data = load_raft(data_files=EMBEDDED_DATA_FILES, validation_size=45, seed=0)
    texts = list(data.validation["Tweet text"])
    first, second = reports[0]["scored"], reports[1]["scored"]
    # Each row is scored exactly once, and the work is shared.
    assert sorted(first + second) == sorted(texts)
    assert abs(len(first) - len(second)) <= 1

    tokenizer = AutoTokenizer.from_pretrained(EMBEDDED_MODEL_PATH)
    model = build_soft_prompt_model(
        AutoModelForCausalLM.from_pretrained(EMBEDDED_MODEL_PATH), method="prompt_tuning", tokenizer=tokenizer
    )
    if mode == "text":
        single = TextGenerationMetrics(tokenizer, data.validation, max_new_tokens=6).evaluate(model)
        keys = ("rouge1", "rougeL", "bleu", "chrf", "exact_match", "gen_len")
        assert single["chrf"] > 0 and single["gen_len"] > 0
    else:
        single = GenerationMetrics(tokenizer, data.classes, data.validation, mode=mode).evaluate(model)
        keys = ("accuracy", "f1", "invalid_rate")
    for report in reports:
        for key in keys:
            assert report["metrics"][f"eval_{key}"] == pytest.approx(single[key], abs=1e-9)
        # The free-text run skipped the loss pass (skip_loss_pass); the label modes kept it.
        assert ("eval_loss" in report["metrics"]) is (mode != "text")
