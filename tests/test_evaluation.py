"""GenerationMetrics in the stock Trainer, rank mode, and bad input."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from conftest import (
    labelled_rows,
)
from datasets import Dataset
from tokenizers import normalizers
from transformers import AutoModelForCausalLM, AutoTokenizer, EvalPrediction, Trainer, TrainingArguments

from softprompt_hf import GenerationMetrics, SoftPromptDataCollator, build_soft_prompt_model, load_raft
from softprompt_hf.embedded import EMBEDDED_DATA_FILES, EMBEDDED_LABEL_TOKENIZATION, EMBEDDED_MODEL_PATH
from softprompt_hf.evaluation.prediction_files import write_predictions, write_raft_submission

LABELS = ["complaint", "no complaint"]


@pytest.fixture(scope="module")
def embedded():
    data = load_raft(data_files=EMBEDDED_DATA_FILES, validation_size=48, seed=0)
    tokenizer = AutoTokenizer.from_pretrained(EMBEDDED_MODEL_PATH)
    return data, tokenizer


def embedded_model(tokenizer, **options):
    return build_soft_prompt_model(
        AutoModelForCausalLM.from_pretrained(EMBEDDED_MODEL_PATH), tokenizer=tokenizer, **options
    )


@pytest.mark.parametrize("mode", ["generate", "rank"])
def test_metrics_come_out_of_trainer_evaluate(tmp_path, embedded, mode):
    data, tokenizer = embedded
    # Initialised from the embedded model's own instruction: right before any training, with the prompt/label
    # boundary it was pretrained with (with the joint one, rank mode scores word tokens it never learned: ~0.84).
    model = embedded_model(tokenizer, method="prompt_tuning")
    boundary = {"label_tokenization": EMBEDDED_LABEL_TOKENIZATION}
    metrics = GenerationMetrics(tokenizer, data.classes, data.validation, id_column="ID", mode=mode, **boundary)
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=str(tmp_path), per_device_eval_batch_size=16, remove_unused_columns=False, report_to=[]
        ),
        eval_dataset=data.validation,
        data_collator=SoftPromptDataCollator(tokenizer, **boundary),
        **metrics.trainer_kwargs(),
    )
    result = trainer.evaluate()
    assert {"eval_loss", "eval_accuracy", "eval_f1", "eval_invalid_rate"} <= result.keys()
    assert result["eval_accuracy"] >= 0.95 and result["eval_f1"] >= 0.95
    logged = trainer.state.log_history[-1]
    assert logged["eval_f1"] == result["eval_f1"]
    # The metrics are a hand count over the predictions kept for export.
    predictions = metrics.last_predictions
    assert len(predictions) == len(data.validation)
    assert [p.id for p in predictions] == list(data.validation["ID"])
    assert result["eval_accuracy"] == pytest.approx(sum(p.predicted == p.gold for p in predictions) / len(predictions))
    if mode == "rank":
        assert result["eval_invalid_rate"] == 0.0
        assert all(set(p.scores) == set(data.classes) for p in predictions)
        assert all(p.predicted == max(p.scores, key=p.scores.get) for p in predictions)


def test_logits_are_not_kept():
    logits = torch.randn(4, 30, 1000)
    labels = torch.full((4, 22), -100)
    kept = GenerationMetrics.preprocess_logits_for_metrics(logits, labels)
    assert kept.shape == (4,)


def test_predict_labels_unlabelled_texts(embedded):
    data, tokenizer = embedded
    model = embedded_model(tokenizer, method="prompt_tuning")
    metrics = GenerationMetrics(tokenizer, data.classes, data.validation)
    texts = list(data.unlabeled["Tweet text"])[:8]
    predictions = metrics.predict(model, texts)
    assert [p.text for p in predictions] == texts
    assert all(p.gold is None and p.predicted in data.classes for p in predictions)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"labels": []}, "empty"),
        ({"labels": ["complaint", "Complaint"]}, "same once normalised"),
        ({"eval_rows": [{"Tweet text": "hi"}]}, "no 'text_label' column"),
        ({"eval_rows": [{"Tweet text": "hi", "text_label": None}]}, "not in the label set"),
        ({"eval_rows": [{"Tweet text": "hi", "text_label": "spam"}]}, "not in the label set"),
        ({"eval_rows": []}, "no eval rows"),
        ({"mode": "beam"}, "Unknown mode"),
    ],
)
def test_bad_input(tokenizer, kwargs, match):
    options = {"labels": LABELS, "eval_rows": [{"Tweet text": "hi", "text_label": "complaint"}], **kwargs}
    with pytest.raises(ValueError, match=match):
        GenerationMetrics(tokenizer, **options)


def test_without_model_says_how_to_attach_it(tokenizer):
    metrics = GenerationMetrics(tokenizer, LABELS, [{"Tweet text": "hi", "text_label": "complaint"}])
    with pytest.raises(ValueError, match="trainer_kwargs"):
        metrics(None)


def test_exports_predictions_and_raft_submission(tmp_path, embedded):
    data, tokenizer = embedded
    model = embedded_model(tokenizer, method="prompt_tuning")
    metrics = GenerationMetrics(tokenizer, data.classes, data.validation, id_column="ID", mode="rank")
    metrics.evaluate(model)
    path = write_predictions(tmp_path / "validation.csv", metrics.last_predictions)
    with path.open() as f:
        rows = list(csv.DictReader(f))
    assert [int(r["id"]) for r in rows] == list(data.validation["ID"])
    assert {"text", "gold", "predicted", "score_complaint", "score_no complaint"} <= rows[0].keys()

    unlabeled = data.unlabeled.select(range(10))
    predictions = metrics.predict(model, list(unlabeled["Tweet text"]))
    submission = write_raft_submission(
        tmp_path / "submission.csv", list(unlabeled["ID"]), [p.predicted for p in predictions], data.class_names
    )
    lines = submission.read_text().splitlines()
    assert lines[0] == "ID,Label"
    assert len(lines) == 11
    assert {line.split(",")[1] for line in lines[1:]} <= {"complaint", "no_complaint"}


def test_label_that_tokenizes_to_nothing_is_refused(tokenizer):
    tokenizer.backend_tokenizer.normalizer = normalizers.Replace("#", "")
    with pytest.raises(ValueError, match="tokenizes to no token"):
        GenerationMetrics(tokenizer, ["complaint", "###"], [{"Tweet text": "hi", "text_label": "complaint"}])


def test_trainer_keeps_one_number_per_eval_row(tmp_path, tokenizer, model_dirs):
    """What the Trainer accumulates over the eval set is one float per row, whatever the vocabulary."""
    model = build_soft_prompt_model(
        AutoModelForCausalLM.from_pretrained(model_dirs["gpt2"]), method="p_tuning", num_virtual_tokens=4
    )
    rows = labelled_rows(12)
    metrics = GenerationMetrics(tokenizer, LABELS, rows)
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=str(tmp_path), per_device_eval_batch_size=5, remove_unused_columns=False, report_to=[]
        ),
        data_collator=SoftPromptDataCollator(tokenizer),
        **metrics.trainer_kwargs(),
    )
    output = trainer.predict(Dataset.from_list(rows))
    assert output.predictions.shape == (12,)
    assert {"test_accuracy", "test_f1", "test_loss"} <= output.metrics.keys()


def test_perplexity_when_the_trainer_passes_losses(tmp_path, tokenizer, model_dirs):
    model = build_soft_prompt_model(
        AutoModelForCausalLM.from_pretrained(model_dirs["bloom"]), method="prefix_tuning", num_virtual_tokens=4
    )
    rows = labelled_rows(10)
    metrics = GenerationMetrics(tokenizer, LABELS, rows)
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_eval_batch_size=5,
        remove_unused_columns=False,
        report_to=[],
        include_for_metrics=["loss"],
    )
    trainer = Trainer(
        model=model,
        args=args,
        eval_dataset=Dataset.from_list(rows),
        data_collator=SoftPromptDataCollator(tokenizer),
        **metrics.trainer_kwargs(),
    )
    result = trainer.evaluate()
    assert result["eval_perplexity"] == pytest.approx(math.exp(result["eval_loss"]), rel=1e-5)


def _tiny_trainer(tmp_path, tokenizer, model_dirs, metrics, eval_dataset, **args):
    model = build_soft_prompt_model(
        AutoModelForCausalLM.from_pretrained(model_dirs["gpt2"]), method="p_tuning", num_virtual_tokens=4
    )
    values = {"per_device_eval_batch_size": 5, "remove_unused_columns": False, "report_to": [], **args}
    return Trainer(
        model=model,
        args=TrainingArguments(output_dir=str(tmp_path), **values),
        eval_dataset=eval_dataset,
        data_collator=SoftPromptDataCollator(tokenizer),
        **metrics.trainer_kwargs(),
    )


def test_an_eval_set_of_another_size_is_refused(tmp_path, tokenizer, model_dirs):
    rows = labelled_rows(12)
    metrics = GenerationMetrics(tokenizer, LABELS, rows)
    trainer = _tiny_trainer(tmp_path, tokenizer, model_dirs, metrics, Dataset.from_list(rows[:10]))
    with pytest.raises(ValueError, match=r"evaluated 10 rows.*its own 12 eval rows.*eval_rows=the same dataset"):
        trainer.evaluate()
    # The count alone, as the Trainer hands it over (also per batch: eval_do_concat_batches=False).
    with pytest.raises(ValueError, match=r"evaluated 10 rows"):
        metrics(EvalPrediction(predictions=np.zeros(10), label_ids=np.zeros((10, 3))))
    with pytest.raises(ValueError, match=r"evaluated 10 rows"):
        metrics(EvalPrediction(predictions=[np.zeros(5), np.zeros(5)], label_ids=[np.zeros((5, 3))] * 2))
    # The same rows are scored, also when the Trainer keeps its predictions per batch.
    same = _tiny_trainer(
        tmp_path, tokenizer, model_dirs, metrics, Dataset.from_list(rows), eval_do_concat_batches=False
    )
    assert same.evaluate()["eval_accuracy"] == pytest.approx(metrics.evaluate(same.model)["accuracy"])


def test_eval_sets_of_other_rows_are_refused_and_sets_of_the_same_rows_scored(tmp_path, tokenizer, model_dirs):
    rows = labelled_rows(12)
    other = labelled_rows(12, seed=1)
    assert sorted(r["Tweet text"] for r in other) != sorted(r["Tweet text"] for r in rows)
    metrics = GenerationMetrics(tokenizer, LABELS, rows)
    # Same size, other texts: the count cannot tell, the Trainer's dataset can.
    sets = {"validation": Dataset.from_list(rows), "other": Dataset.from_list(other)}
    trainer = _tiny_trainer(tmp_path, tokenizer, model_dirs, metrics, sets)
    with pytest.raises(ValueError, match=r"holds other 'Tweet text' texts.*dict of eval datasets"):
        trainer.evaluate()
    # A dict of these rows (in any order) is scored, each entry with the scores of these rows.
    sets = {"validation": Dataset.from_list(rows), "shuffled": Dataset.from_list(rows[::-1])}
    trainer = _tiny_trainer(tmp_path, tokenizer, model_dirs, metrics, sets)
    result = trainer.evaluate()
    expected = metrics.evaluate(trainer.model)
    for name in sets:
        assert result[f"eval_{name}_f1"] == pytest.approx(expected["f1"])
        assert result[f"eval_{name}_accuracy"] == pytest.approx(expected["accuracy"])
