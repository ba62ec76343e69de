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


def test_callbacks_snippet_restores_the_best_checkpoint(tmp_path):
    from safetensors.torch import load_file

    from softprompt_hf.training.checkpoints import SOFT_PROMPT_STATE_NAME, last_complete_checkpoint

    namespace = {"output_dir": str(tmp_path)}
    exec(readme_snippet("callbacks"), namespace)
    trainer = namespace["trainer"]
    assert trainer.state.global_step == 40
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-40")
    best = load_file(str(tmp_path / trainer.state.best_model_checkpoint / SOFT_PROMPT_STATE_NAME))
    live = dict(trainer.model.named_parameters())
    assert all(torch.equal(live[name], value) for name, value in best.items())
    assert trainer.state.best_metric == max(e["eval_f1"] for e in trainer.state.log_history if "eval_f1" in e)


def test_generate_snippet_labels_as_generation_metrics_does(tmp_path):
    """The README's model.generate() after enable_soft_prompt_generate, on a saved adapter folder."""
    from trained_adapters import embedded_adapter, embedded_texts, generation_metrics_predictions

    model, tokenizer, folder, labels = embedded_adapter("prompt_tuning", tmp_path / "adapter")
    texts = embedded_texts(8)
    expected = generation_metrics_predictions(model, tokenizer, labels, texts)
    assert len({p.predicted for p in expected}) == 2
    namespace = {"adapter": str(folder), "texts": texts}
    exec(readme_snippet("generate"), namespace)
    assert [answer.strip() for answer in namespace["answers"]] == [p.output for p in expected]


def test_text_snippet_trains_and_scores_free_text_with_the_stock_trainer(tmp_path):
    namespace = {"output_dir": str(tmp_path)}
    exec(readme_snippet("text"), namespace)
    results = namespace["results"]
    expected = {"rouge1", "rouge2", "rougeL", "rougeLsum", "bleu", "chrf", "exact_match", "gen_len"}
    assert {f"eval_{name}" for name in expected} <= results.keys()
    trainer = namespace["trainer"]
    logged = [entry["eval_rougeL"] for entry in trainer.state.log_history if "eval_rougeL" in entry]
    assert trainer.state.best_metric == logged[0]
    replies = namespace["replies"]
    assert len(replies) == 1 and isinstance(replies[0], str)
    predictions = namespace["metrics"].last_predictions
    assert len(predictions) == 4 and {p.reference for p in predictions} <= {row["reply"] for row in namespace["rows"]}
