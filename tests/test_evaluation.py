"""GenerationMetrics in the stock Trainer, rank mode, and bad input."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from conftest import (
    ARCHS,
    METHODS,
    SLIDING_ARCHS,
    labelled_rows,
    model_config,
    tiny_soft_prompt_model,
    window_crossing_texts,
)
from datasets import Dataset
from tokenizers import normalizers
from transformers import AutoModelForCausalLM, AutoTokenizer, EvalPrediction, Trainer, TrainingArguments

from softprompt_hf import (
    GenerationMetrics,
    PromptTemplate,
    SoftPromptDataCollator,
    build_soft_prompt_model,
    encode_target,
    evaluation,
    load_raft,
    write_predictions,
    write_raft_submission,
)
from softprompt_hf.embedded import EMBEDDED_DATA_FILES, EMBEDDED_MODEL_PATH
from softprompt_hf.evaluation import rank_labels
from softprompt_hf.output_head import ChunkedOutputHead

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
    # Initialised from the embedded model's own instruction: right before any training.
    model = embedded_model(tokenizer, method="prompt_tuning")
    metrics = GenerationMetrics(tokenizer, data.classes, data.validation, id_column="ID", mode=mode)
    trainer = Trainer(
        model=model,
        args=TrainingArguments(
            output_dir=str(tmp_path), per_device_eval_batch_size=16, remove_unused_columns=False, report_to=[]
        ),
        eval_dataset=data.validation,
        data_collator=SoftPromptDataCollator(tokenizer),
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


def test_rank_scores_are_label_log_likelihoods(tokenizer):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(model_config("llama", len(tokenizer))).eval()
    text = "@Acme my order never arrived"
    scores = rank_labels(model, tokenizer, [text], LABELS, show_progress=False)[0]
    prompt = PromptTemplate().encode(tokenizer, text)
    for label in LABELS:
        target = encode_target(tokenizer, label)
        ids = torch.tensor([prompt + target])
        with torch.no_grad():
            log_probs = torch.log_softmax(model(input_ids=ids).logits[0], dim=-1)
        expected = sum(log_probs[len(prompt) - 1 + i, token].item() for i, token in enumerate(target))
        assert scores[label] == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", METHODS)
def test_rank_batched_equals_one_by_one(tokenizer, arch, method):
    model = tiny_soft_prompt_model(tokenizer, arch, method)
    texts = [row["Tweet text"] for row in labelled_rows(10)] + ["@Acme hi"]
    batched = rank_labels(model, tokenizer, texts, LABELS, batch_size=16, show_progress=False)
    for text, scores in zip(texts, batched, strict=True):
        single = rank_labels(model, tokenizer, [text], LABELS, batch_size=1, show_progress=False)[0]
        assert scores == pytest.approx(single, abs=1e-4)


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


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", METHODS)
def test_rank_with_shared_prompt_cache_equals_full_sequences(tokenizer, arch, method):
    """Scoring every label from one run of the prompt (its cache repeated over the labels) gives the scores of
    one training forward per prompt + label; labels of different token lengths included."""
    model = tiny_soft_prompt_model(tokenizer, arch, method)
    labels = ["complaint", "no complaint", "spam", "x"]
    assert len({len(encode_target(tokenizer, label)) for label in labels}) == 4
    texts = [row["Tweet text"] for row in labelled_rows(10)] + ["@Acme hi"]
    cached = rank_labels(model, tokenizer, texts, labels, batch_size=4, show_progress=False)
    full = rank_labels(model, tokenizer, texts, labels, batch_size=16, show_progress=False, use_cache=False)
    for shared, reference in zip(cached, full, strict=True):
        assert shared == pytest.approx(reference, abs=1e-4)
        assert max(shared, key=shared.get) == max(reference, key=reference.get)


def test_rank_restores_every_modules_mode_when_it_fails(tokenizer, monkeypatch):
    model = tiny_soft_prompt_model(tokenizer, "gpt2", "p_tuning")
    model.train()
    model.get_base_model().lm_head.eval()  # the caller's mixture comes back as it was
    modes = {name: module.training for name, module in model.named_modules()}
    seen = []

    def failing_rank(*args, **kwargs):
        seen.append(model.training)
        raise RuntimeError("ranking failed")

    monkeypatch.setattr(evaluation, "_rank_with_shared_prompt", failing_rank)
    monkeypatch.setattr(evaluation, "_rank_full_sequences", failing_rank)
    with pytest.raises(RuntimeError, match="ranking failed"):
        rank_labels(model, tokenizer, ["@Acme hi"], LABELS, show_progress=False)
    assert seen == [False]  # ranking ran in eval mode
    assert {name: module.training for name, module in model.named_modules()} == modes


@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_rank_projects_only_the_positions_it_scores(tokenizer, method, monkeypatch):
    """The vocabulary projection runs at each prompt's last position and at each label token after the
    first (the EOS included), not at the padding of shorter labels, nor for the one-row passes over what all
    prompts share; the model's own output layer runs once, on one position, to check the chunked one."""
    model = tiny_soft_prompt_model(tokenizer, "llama", method)
    projected: list[int] = []
    chunked = ChunkedOutputHead.log_probs

    def counting(self, hidden, tokens):
        projected.append(hidden.shape[:-1].numel())
        return chunked(self, hidden, tokens)

    monkeypatch.setattr(ChunkedOutputHead, "log_probs", counting)
    by_the_model: list[int] = []
    head = model.get_base_model().get_output_embeddings()
    handle = head.register_forward_hook(lambda module, args, output: by_the_model.append(args[0].shape[:-1].numel()))
    labels = ["complaint", "no complaint", "x"]
    texts = [row["Tweet text"] for row in labelled_rows(7)]
    rank_labels(model, tokenizer, texts, labels, batch_size=3, show_progress=False)
    handle.remove()
    per_prompt = 1 + sum(len(encode_target(tokenizer, label)) - 1 for label in labels)
    assert sum(projected) == len(texts) * per_prompt
    assert sum(by_the_model) == 1


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


@pytest.mark.parametrize("arch", SLIDING_ARCHS)
@pytest.mark.parametrize("method", METHODS)
def test_sliding_window_rank_batched_equals_one_by_one_and_full_sequences(tokenizer, arch, method):
    """With a sliding window, the label tokens after a shorter prompt's pads would lose the start of its window:
    batched scores equal one-by-one scores and the training forward's, for prompts within the window (padded
    together) and beyond it."""
    model = tiny_soft_prompt_model(tokenizer, arch, method)
    labels = ["complaint", "x", "spam"]  # 7, 2 and 5 tokens with the EOS
    texts = window_crossing_texts()
    prompts = [PromptTemplate().encode(tokenizer, text) for text in texts]
    window = model.get_base_model().config.sliding_window
    fed = max(len(encode_target(tokenizer, label)) for label in labels) - 1  # all label tokens but the EOS
    spans = [4 + len(ids) + fed for ids in prompts]  # with tiny_soft_prompt_model's 4 virtual tokens
    fitting = {len(ids) for ids, span in zip(prompts, spans, strict=True) if span <= window}
    assert len(fitting) > 1 and max(spans) > window, "padding within the window and prompts beyond it"
    batched = rank_labels(model, tokenizer, texts, labels, batch_size=len(texts), show_progress=False)
    single = [rank_labels(model, tokenizer, [text], labels, batch_size=1, show_progress=False)[0] for text in texts]
    full = rank_labels(model, tokenizer, texts, labels, show_progress=False, use_cache=False)
    for together, alone, reference in zip(batched, single, full, strict=True):
        assert together == pytest.approx(alone, abs=1e-4)
        assert alone == pytest.approx(reference, abs=1e-4)
