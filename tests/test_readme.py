"""The README's code is run as written."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_snippet(name: str) -> str:
    match = re.search(rf"<!-- readme-snippet: {name} -->\s*```python\n(.*?)```", README.read_text(), re.DOTALL)
    assert match, f"README has no snippet marked {name!r}"
    return match.group(1)


def test_collator_snippet_trains_with_the_stock_trainer(tmp_path, model_dirs):
    code = readme_snippet("collator")
    setup, train = code.split("trainer.train()")
    namespace = {"model_path": str(model_dirs["gpt2"]), "output_dir": str(tmp_path)}
    exec(setup, namespace)
    prompt = namespace["model"].prompt_encoder["default"].embedding.weight
    before = prompt.detach().clone()
    exec("trainer.train()" + train, namespace)
    state = namespace["trainer"].state
    assert state.global_step == 3  # 2 rows, default batch size 8 and 3 epochs
    assert not torch.equal(prompt, before)
    assert namespace["tokenizer"].pad_token == namespace["tokenizer"].eos_token


def test_metrics_snippet_evaluates_with_the_stock_trainer(tmp_path):
    namespace = {"output_dir": str(tmp_path)}
    exec(readme_snippet("metrics"), namespace)
    results = namespace["results"]
    assert {"eval_loss", "eval_accuracy", "eval_f1", "eval_invalid_rate"} <= results.keys()
    # Prompt tuning initialised from the embedded model's own instruction is right before training.
    assert results["eval_accuracy"] >= 0.95
