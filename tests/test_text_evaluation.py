"""TextGenerationMetrics: free text scored by generation with evaluate metrics inside the stock Trainer."""

from __future__ import annotations

import evaluate
import numpy as np
import pytest
from conftest import labelled_rows, tiny_soft_prompt_model
from datasets import Dataset
from transformers import EarlyStoppingCallback, Trainer, TrainingArguments

from softprompt_hf import Rouge, SoftPromptDataCollator, TextGenerationMetrics, default_text_metrics, generate_texts
from softprompt_hf.data.prompt import PromptTemplate

COLUMNS = {"text_column": "body", "target_column": "summary", "template": "Title : {title} Tweet : {text} Summary : "}
SUMMARY = "all good here"


def text_rows(n: int, start: int = 0) -> list[dict]:
    """Rows of two fields whose summary is one short sentence."""
    return [
        {"id": start + i, "title": f"Note {i % 3}", "body": row["Tweet text"], "summary": SUMMARY}
        for i, row in enumerate(labelled_rows(n, seed=start))
    ]


class WordCount:
    """A user's metric: any object with .compute(predictions=, references=) returning a dict."""

    name = "word_count"

    def compute(self, *, predictions, references):
        return {"words": float(np.mean([len(p.split()) for p in predictions])), "per_row": [1.0, 3.0], "tag": "v1"}


def trainer_for(model, tokenizer, tmp_path, metrics, train_rows, eval_rows, **args):
    options = {
        "output_dir": str(tmp_path / "run"),
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 8,
        "learning_rate": 0.3,
        "remove_unused_columns": False,
        "report_to": [],
        "save_strategy": "no",
        "disable_tqdm": True,
        "seed": 0,
        "use_cpu": True,
        **args,
    }
    return Trainer(
        model=model,
        args=TrainingArguments(**options),
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows),
        data_collator=SoftPromptDataCollator(tokenizer, **{k: v for k, v in COLUMNS.items()}),
        **metrics.trainer_kwargs(),
    )


def test_text_metrics_come_out_of_trainer_evaluate_computed_on_the_generated_texts(tmp_path, tokenizer):
    model = tiny_soft_prompt_model(tokenizer, "llama", "prompt_tuning")
    eval_rows = text_rows(8, start=100)
    metrics = TextGenerationMetrics(tokenizer, Dataset.from_list(eval_rows), id_column="id", **COLUMNS)
    trainer = trainer_for(model, tokenizer, tmp_path, metrics, text_rows(16), eval_rows, max_steps=4)
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    assert after["eval_loss"] < before["eval_loss"]
    # The predictions are generate_texts' own, row by row, with each row's source, reference and id.
    template = PromptTemplate(COLUMNS["template"], COLUMNS["text_column"])
    budget = metrics.max_new_tokens
    texts = generate_texts(model, tokenizer, eval_rows, template=template, max_new_tokens=budget, show_progress=False)
    assert [p.output for p in metrics.last_predictions] == texts
    assert [(p.text, p.reference, p.id) for p in metrics.last_predictions] == [
        (row["body"], row["summary"], row["id"]) for row in eval_rows
    ]
    # Every score is the shipped metric's on those texts; gen_len counts the tokens generated, EOS not counted.
    direct = default_text_metrics().compute(predictions=texts, references=[SUMMARY] * len(texts))
    assert set(direct) == {"rouge1", "rouge2", "rougeL", "rougeLsum", "bleu", "chrf", "exact_match"}
    assert {key: after[f"eval_{key}"] for key in direct} == pytest.approx(direct)
    assert direct["chrf"] > 0, "the outputs share no character n-gram with the reference: the check would be blind"
    lengths = [p.tokens for p in metrics.last_predictions]
    assert after["eval_gen_len"] == pytest.approx(np.mean(lengths))
    assert all(0 < n <= budget for n in lengths)


def test_rougeL_chooses_the_best_model_and_early_stopping_reads_it(tmp_path, tokenizer):
    model = tiny_soft_prompt_model(tokenizer, "gpt2", "prefix_tuning")
    # References the untrained model writes itself: training moves the outputs away from them, by steps.
    eval_rows = text_rows(6, start=100)
    template = PromptTemplate(COLUMNS["template"], COLUMNS["text_column"])
    written = generate_texts(model, tokenizer, eval_rows, template=template, max_new_tokens=6, show_progress=False)
    eval_rows = [{**row, "summary": text} for row, text in zip(eval_rows, written, strict=True)]
    metrics = TextGenerationMetrics(tokenizer, eval_rows, metrics="rouge", max_new_tokens=6, **COLUMNS)
    trainer = trainer_for(
        model,
        tokenizer,
        tmp_path,
        metrics,
        text_rows(16),
        eval_rows,
        max_steps=12,
        eval_strategy="steps",
        eval_steps=3,
        save_strategy="steps",
        save_steps=3,
        load_best_model_at_end=True,
        metric_for_best_model="rougeL",
        save_total_limit=None,
        learning_rate=0.1,
    )
    trainer.add_callback(EarlyStoppingCallback(early_stopping_patience=10))
    trainer.train()
    logged = [entry["eval_rougeL"] for entry in trainer.state.log_history if "eval_rougeL" in entry]
    assert len(logged) == 4 and "eval_bleu" not in trainer.state.log_history[0]
    assert len(set(logged)) > 1, f"every evaluation gave rougeL {logged}: the best one would be any"
    assert trainer.state.best_metric == max(logged)
    assert trainer.evaluate()["eval_rougeL"] == pytest.approx(max(logged), abs=1e-6)


def test_a_user_metric_alone_in_a_list_and_through_evaluate_combine(tokenizer):
    model = tiny_soft_prompt_model(tokenizer, "gpt2", "prompt_tuning")
    rows = text_rows(4)
    shipped_and_user = TextGenerationMetrics(tokenizer, rows, metrics=["chrf", WordCount()], **COLUMNS)
    scores = shipped_and_user.evaluate(model)
    assert set(scores) == {"chrf", "words", "per_row", "gen_len"}  # per-row scores averaged, the string left out
    assert scores["per_row"] == 2.0
    outputs = [p.output for p in shipped_and_user.last_predictions]
    assert scores["words"] == pytest.approx(np.mean([len(o.split()) for o in outputs]))
    combined = TextGenerationMetrics(tokenizer, rows, metrics=evaluate.combine([Rouge(), WordCount()]), **COLUMNS)
    combined_scores = combined.evaluate(model)
    assert {"rouge1", "rougeL", "words", "gen_len"} <= set(combined_scores)
    direct = Rouge().compute(predictions=outputs, references=[SUMMARY] * 4)
    assert combined_scores["rougeL"] == pytest.approx(direct["rougeL"])


@pytest.mark.parametrize(
    ("kwargs", "match", "error"),
    [
        ({"metrics": "meteor"}, r"'meteor'.*rouge", ValueError),
        ({"metrics": [3]}, r"neither a shipped metric's name", TypeError),
        ({"metrics": []}, r"scores nothing", ValueError),
        ({"rows": [{"title": "t", "body": "b", "summary": ""}]}, r"Eval row 0 has reference ''", ValueError),
        ({"rows": [{"title": "t", "body": "b"}]}, r"Eval rows have no 'summary' column", ValueError),
        ({"rows": [{"body": "b", "summary": "s"}]}, r"reads the column\(s\) \['title'\], not found", ValueError),
        ({"max_new_tokens": 0}, r"max_new_tokens must be at least 1", ValueError),
        ({"generation_kwargs": {"num_return_sequences": 3}}, r"one text per input", ValueError),
        ({"rows": []}, r"got no eval rows", ValueError),
    ],
)
def test_bad_input_is_refused(tokenizer, kwargs, match, error):
    rows = kwargs.pop("rows", text_rows(2))
    with pytest.raises(error, match=match):
        TextGenerationMetrics(tokenizer, rows, **COLUMNS, **kwargs)


def test_two_metrics_reporting_the_same_name_are_refused(tokenizer):
    model = tiny_soft_prompt_model(tokenizer, "gpt2", "prompt_tuning")
    metrics = TextGenerationMetrics(tokenizer, text_rows(2), metrics=["rouge", Rouge()], **COLUMNS)
    with pytest.raises(ValueError, match=r"Two metrics report 'rouge1'"):
        metrics.evaluate(model)


def test_max_new_tokens_defaults_to_the_longest_reference(tokenizer):
    rows = text_rows(3)
    rows[1]["summary"] = "a much longer summary than the others, with more words"
    metrics = TextGenerationMetrics(tokenizer, rows, **COLUMNS)
    template = PromptTemplate(COLUMNS["template"], COLUMNS["text_column"])
    assert metrics.max_new_tokens == len(template.encode_target(tokenizer, rows[1]["summary"]))


def test_evaluate_combine_of_a_shipped_and_a_users_metric_inside_the_trainer(tmp_path, tokenizer):
    model = tiny_soft_prompt_model(tokenizer, "llama", "p_tuning")
    eval_rows = text_rows(4, start=50)
    combined = evaluate.combine([Rouge(rouge_types=["rougeL"]), WordCount()])
    metrics = TextGenerationMetrics(tokenizer, eval_rows, metrics=combined, max_new_tokens=6, **COLUMNS)
    trainer = trainer_for(model, tokenizer, tmp_path, metrics, text_rows(8), eval_rows, max_steps=2)
    results = trainer.evaluate()
    outputs = [p.output for p in metrics.last_predictions]
    assert results["eval_rougeL"] == pytest.approx(
        Rouge().compute(predictions=outputs, references=[SUMMARY] * 4)["rougeL"]
    )
    assert results["eval_words"] == pytest.approx(np.mean([len(o.split()) for o in outputs]))
    assert results["eval_per_row"] == 2.0 and "eval_tag" not in results
