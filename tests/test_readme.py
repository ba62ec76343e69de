"""The code of the README and the docs/ pages is run as written.

A python block marked ``<!-- readme-snippet: NAME -->`` is run by the test of that name here; one that cannot run in
the tests (it needs the Hub, vLLM, a run's objects) is marked ``<!-- readme-snippet: skip, REASON -->``. A python block
with neither mark fails ``test_every_python_block_is_run_or_marked_skipped``.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

# The snippets the tests below run, each marked once in one of PAGES.
RUN = {"embedded", "collator", "metrics", "callbacks", "generate", "text"}


def _marked_blocks() -> list[tuple[str, str, str]]:
    """(page, mark, code) of every python block of PAGES; mark is the block's readme-snippet mark, or ""."""
    blocks = []
    for page in PAGES:
        pattern = r"(?:<!-- readme-snippet: ([^\n]*?) -->\n)?```(?:python|py)\n(.*?)```"
        for match in re.finditer(pattern, page.read_text(encoding="utf-8"), re.DOTALL):
            blocks.append((page.relative_to(REPO).as_posix(), match.group(1) or "", match.group(2)))
    return blocks


def readme_snippet(name: str) -> str:
    found = [code for _, mark, code in _marked_blocks() if mark == name]
    assert len(found) == 1, f"{len(found)} python blocks marked {name!r} in README.md and docs/*.md"
    return found[0]


def test_every_python_block_is_run_or_marked_skipped():
    marks = [(page, mark) for page, mark, _ in _marked_blocks()]
    unmarked = [page for page, mark in marks if not mark]
    assert not unmarked, f"python blocks neither run nor marked skipped, in: {unmarked}"
    # A skip mark says why; "skip" alone reads as the name of a snippet to run, and fails here.
    run = sorted(mark for _, mark in marks if not re.fullmatch(r"skip, \S.*", mark))
    assert run == sorted(RUN), f"marked to run: {run}; run by this file: {sorted(RUN)}"


def test_embedded_snippet_loads_the_embedded_data():
    namespace = {}
    exec(readme_snippet("embedded"), namespace)
    data = namespace["data"]
    assert data.classes == ["complaint", "no complaint"]
    assert (len(data.train), len(data.validation), len(data.unlabeled)) == (640, 160, 400)


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
