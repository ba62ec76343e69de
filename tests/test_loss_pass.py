"""skip_loss_pass: Trainer.evaluate decodes only, without the Trainer's loss forward over the eval rows."""

from __future__ import annotations

import pytest
from conftest import labelled_rows, tiny_soft_prompt_model
from datasets import Dataset
from transformers import EarlyStoppingCallback, Trainer, TrainingArguments

from softprompt_hf import GenerationMetrics, SoftPromptDataCollator, TextGenerationMetrics

LABELS = ["complaint", "no complaint"]
COLUMNS = {"text_column": "body", "target_column": "summary", "template": "Tweet : {text} Summary : "}


def text_rows(n: int, start: int = 0) -> list[dict]:
    return [{"body": row["Tweet text"], "summary": "all good here"} for row in labelled_rows(n, seed=start)]


def trainer_for(model, tokenizer, tmp_path, metrics, eval_rows, train_rows=None, collator_options=None, **args):
    options = {
        "output_dir": str(tmp_path / "run"),
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 4,
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
        train_dataset=None if train_rows is None else Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows),
        data_collator=SoftPromptDataCollator(tokenizer, **(collator_options or {})),
        **metrics.trainer_kwargs(),
    )


def count_loss_forwards(trainer) -> list[int]:
    """How many times the Trainer computes a loss (each eval batch's forward with the labels, each train step)."""
    calls = [0]
    compute_loss = trainer.compute_loss

    def counting(*args, **kwargs):
        calls[0] += 1
        return compute_loss(*args, **kwargs)

    trainer.compute_loss = counting
    return calls


def test_the_same_label_metrics_without_the_loss_forward(tmp_path, tokenizer):
    model = tiny_soft_prompt_model(tokenizer, "gpt2", "p_tuning")
    rows = labelled_rows(10)
    metrics = GenerationMetrics(tokenizer, LABELS, rows, id_column="ID")
    trainer = trainer_for(model, tokenizer, tmp_path, metrics, rows)
    calls = count_loss_forwards(trainer)
    with_loss = trainer.evaluate()
    assert calls[0] == 3 and "eval_loss" in with_loss  # 10 rows in batches of 4
    outputs_with_loss = [p.output for p in metrics.last_predictions]

    assert metrics.skip_loss_pass(trainer) is trainer
    calls[0] = 0
    without = trainer.evaluate()
    assert calls[0] == 0 and "eval_loss" not in without
    # The same decoding of the same rows: the same outputs and scores.
    assert [p.output for p in metrics.last_predictions] == outputs_with_loss
    for key in ("eval_accuracy", "eval_f1", "eval_invalid_rate"):
        assert without[key] == with_loss[key]
    assert trainer.state.log_history[-1]["eval_f1"] == without["eval_f1"]
    # Calling it again changes nothing; the Trainer still refuses another eval set than the metrics' rows.
    metrics.skip_loss_pass(trainer)
    assert trainer.evaluate()["eval_f1"] == without["eval_f1"]
    with pytest.raises(ValueError, match="The Trainer evaluated 6 rows"):
        trainer.evaluate(eval_dataset=Dataset.from_list(rows[:6]))
    # trainer.predict counts the rows too, and has no loss either.
    output = trainer.predict(Dataset.from_list(rows))
    assert output.predictions.shape == (10,) and "test_loss" not in output.metrics and "test_f1" in output.metrics


def test_training_picks_the_best_adapter_and_stops_early_on_generated_text_metrics(tmp_path, tokenizer):
    model = tiny_soft_prompt_model(tokenizer, "llama", "prompt_tuning")
    eval_rows = text_rows(6, start=100)
    metrics = TextGenerationMetrics(tokenizer, eval_rows, metrics=["rouge", "chrf"], max_new_tokens=6, **COLUMNS)
    trainer = trainer_for(
        model,
        tokenizer,
        tmp_path,
        metrics,
        eval_rows,
        train_rows=text_rows(12),
        collator_options=COLUMNS,
        num_train_epochs=4,
        eval_strategy="epoch",
        save_strategy="epoch",
        load_best_model_at_end=True,
        metric_for_best_model="rougeL",
    )
    trainer.add_callback(EarlyStoppingCallback(early_stopping_patience=1, early_stopping_threshold=10.0))
    metrics.skip_loss_pass(trainer)
    calls = count_loss_forwards(trainer)
    trainer.train()
    evaluations = [e for e in trainer.state.log_history if "eval_rougeL" in e]
    # The threshold is unreachable: the second evaluation counts as no improvement and ends the run.
    assert len(evaluations) == 2 and all("eval_loss" not in e for e in evaluations)
    assert calls[0] == 2 * 3  # the training steps only: 12 rows in batches of 4, 2 epochs; no eval forward
    assert trainer.state.best_metric == max(e["eval_rougeL"] for e in evaluations)
    assert trainer.state.best_model_checkpoint is not None


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        ({"metric_for_best_model": "loss"}, "metric_for_best_model='loss'"),
        ({"metric_for_best_model": "eval_loss"}, "metric_for_best_model='eval_loss'"),
        ({"include_for_metrics": ["loss"]}, "eval_perplexity"),
        ({"prediction_loss_only": True}, "prediction_loss_only"),
    ],
)
def test_arguments_that_ask_for_the_loss_keep_the_loss_pass(tmp_path, tokenizer, arguments, named):
    model = tiny_soft_prompt_model(tokenizer, "gpt2", "prompt_tuning")
    rows = labelled_rows(4)
    metrics = GenerationMetrics(tokenizer, LABELS, rows)
    trainer = trainer_for(model, tokenizer, tmp_path, metrics, rows, **arguments)
    step = trainer.prediction_step
    with pytest.raises(ValueError, match=named) as error:
        metrics.skip_loss_pass(trainer)
    assert "metric_for_best_model='f1'" in str(error.value)
    assert trainer.prediction_step == step  # nothing changed


def test_a_trainer_scored_by_other_metrics_is_refused(tmp_path, tokenizer):
    model = tiny_soft_prompt_model(tokenizer, "gpt2", "prompt_tuning")
    rows = labelled_rows(4)
    ours = GenerationMetrics(tokenizer, LABELS, rows)
    trainer = trainer_for(model, tokenizer, tmp_path, ours, rows)
    other = TextGenerationMetrics(tokenizer, text_rows(4), **COLUMNS)
    with pytest.raises(ValueError, match="compute_metrics is not this TextGenerationMetrics"):
        other.skip_loss_pass(trainer)
