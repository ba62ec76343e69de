"""Tests for softprompt_hf.evaluation.text_metrics: each metric equals its library called directly, offline, on the same
texts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import evaluate
import pytest
import sacrebleu
from rouge_score import rouge_scorer
from transformers.testing_utils import CaptureLogger

from softprompt_hf.evaluation import text_metrics
from softprompt_hf.evaluation.text_metrics import (
    TEXT_METRICS,
    Bleu,
    Chrf,
    ExactMatch,
    Rouge,
    default_text_metrics,
    load_text_metric,
)

REPO = Path(__file__).resolve().parents[1]
ROUGE_TYPES = ["rouge1", "rouge2", "rougeL", "rougeLsum"]

# Summary-like rows: a two-sentence summary (sentences on their own lines, in the other order than its reference), an
# empty prediction, unicode.
PREDICTIONS = [
    "Spending on schools rises by 4 percent.\nThe committee approved the budget on Tuesday.",
    "Researchers found that the new vaccine cuts infections by half.",
    "",
    "Café owners in Zürich protest the new rent rules.",
    "The storm closed roads across the north.",
]
REFERENCES = [
    "The city committee approved next year's budget on Tuesday.\nSchool spending will rise 4 percent.",
    "A new vaccine halved infection rates in a trial, researchers said.",
    "Shares of the carmaker fell sharply after the recall.",
    "Zürich café owners protested against new rent rules.",
    "Roads across the north were closed by the storm on Monday.",
]


def _rouge_score_means(predictions, references, use_stemmer, multi=False):
    scorer = rouge_scorer.RougeScorer(ROUGE_TYPES, use_stemmer=use_stemmer)
    score = scorer.score_multi if multi else scorer.score
    rows = [score(reference, prediction) for prediction, reference in zip(predictions, references, strict=True)]
    return {name: sum(row[name].fmeasure for row in rows) / len(rows) for name in ROUGE_TYPES}


@pytest.mark.parametrize("use_stemmer", [True, False])
def test_rouge_is_the_mean_of_rouge_scores_f_measures(use_stemmer):
    result = Rouge(use_stemmer=use_stemmer).compute(predictions=PREDICTIONS, references=REFERENCES)
    expected = _rouge_score_means(PREDICTIONS, REFERENCES, use_stemmer)
    assert list(result) == ROUGE_TYPES
    assert result == pytest.approx(expected, rel=1e-12)
    assert all(0.2 < value < 0.8 for value in result.values()), result


def test_rouge_defaults_to_stemming_and_rouge_lsum_splits_at_newlines():
    stemmed = Rouge().compute(predictions=PREDICTIONS, references=REFERENCES)
    plain = Rouge(use_stemmer=False).compute(predictions=PREDICTIONS, references=REFERENCES)
    assert stemmed["rouge1"] > plain["rouge1"]  # protest/protested, infections/infection, rises/rise
    # The two-sentence row, its sentences swapped: summary-level LCS (per line) finds both, one LCS over the whole
    # text only one ...
    two_sentences = Rouge().compute(predictions=PREDICTIONS[:1], references=REFERENCES[:1])
    assert two_sentences["rougeLsum"] > two_sentences["rougeL"] + 0.2
    # ... and without the newlines it is the same.
    one_line = Rouge().compute(
        predictions=[PREDICTIONS[0].replace("\n", " ")], references=[REFERENCES[0].replace("\n", " ")]
    )
    assert one_line["rougeLsum"] == pytest.approx(one_line["rougeL"])


def test_rouge_reports_only_the_types_asked_for():
    result = Rouge(rouge_types=["rouge2"]).compute(predictions=PREDICTIONS, references=REFERENCES)
    assert result == {"rouge2": pytest.approx(_rouge_score_means(PREDICTIONS, REFERENCES, True)["rouge2"])}


@pytest.mark.parametrize("rouge_types", [[], ["rouge1", "rouge1"], ["rougeX"], ["rouge0"]])
def test_rouge_refuses_unknown_or_repeated_types(rouge_types):
    with pytest.raises(ValueError, match="give distinct names among 'rouge1' to 'rouge9', 'rougeL', 'rougeLsum'"):
        Rouge(rouge_types=rouge_types)


def test_rouge_warns_when_its_tokenizer_drops_a_script_and_takes_another_tokenizer():
    predictions, references = ["Кошка сидит на ковре"], ["Кошка сидела на ковре"]
    logger = text_metrics.logger
    with CaptureLogger(logger) as captured:
        result = Rouge().compute(predictions=predictions, references=references)
    assert result["rouge1"] == 0.0
    assert "1 reference(s) have text but no tokens" in captured.out

    class Whitespace:
        def tokenize(self, text):
            return text.lower().split()

    with CaptureLogger(logger) as captured:
        result = Rouge(tokenizer=Whitespace()).compute(predictions=predictions, references=references)
    assert result["rouge1"] == pytest.approx(0.75)  # 3 of 4 words shared
    assert captured.out == ""


def test_bleu_and_chrf_equal_sacrebleu_on_its_scale():
    bleu = Bleu().compute(predictions=PREDICTIONS, references=REFERENCES)
    chrf = Chrf().compute(predictions=PREDICTIONS, references=REFERENCES)
    assert bleu == {"bleu": pytest.approx(sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES]).score, rel=1e-12)}
    assert chrf == {"chrf": pytest.approx(sacrebleu.corpus_chrf(PREDICTIONS, [REFERENCES]).score, rel=1e-12)}
    assert 5 < bleu["bleu"] < 60 and 30 < chrf["chrf"] < 90  # 0-100, as sacrebleu reports them


def test_bleu_and_chrf_options_reach_sacrebleu():
    lowered = Bleu(lowercase=True, tokenize="intl").compute(predictions=PREDICTIONS, references=REFERENCES)
    expected = sacrebleu.corpus_bleu(PREDICTIONS, [REFERENCES], lowercase=True, tokenize="intl").score
    assert lowered["bleu"] == pytest.approx(expected)
    assert lowered["bleu"] != pytest.approx(Bleu().compute(predictions=PREDICTIONS, references=REFERENCES)["bleu"])
    chrf_pp = Chrf(word_order=2).compute(predictions=PREDICTIONS, references=REFERENCES)
    assert chrf_pp["chrf"] == pytest.approx(sacrebleu.corpus_chrf(PREDICTIONS, [REFERENCES], word_order=2).score)


def test_several_references_per_row():
    extra = [
        "The budget was approved by the committee on Tuesday.\nSchools get 4 percent more.",
        "The vaccine cut infections by half, researchers found.",
    ]
    # Rows 0 and 1 have two references, the others one: sacrebleu takes None for a missing reference.
    references = [[REFERENCES[0], extra[0]], [REFERENCES[1], extra[1]], *([reference] for reference in REFERENCES[2:])]
    streams = [REFERENCES, [extra[0], extra[1], None, None, None]]
    bleu = Bleu().compute(predictions=PREDICTIONS, references=references)["bleu"]
    assert bleu == pytest.approx(sacrebleu.corpus_bleu(PREDICTIONS, streams).score)
    assert bleu > Bleu().compute(predictions=PREDICTIONS, references=REFERENCES)["bleu"]
    chrf = Chrf().compute(predictions=PREDICTIONS, references=references)["chrf"]
    assert chrf == pytest.approx(sacrebleu.corpus_chrf(PREDICTIONS, streams).score)
    rouge = Rouge().compute(predictions=PREDICTIONS, references=references)
    assert rouge == pytest.approx(_rouge_score_means(PREDICTIONS, references, True, multi=True))
    assert ExactMatch().compute(predictions=["yes", "no"], references=[["no", "yes"], ["maybe"]]) == {
        "exact_match": 0.5
    }


def test_a_row_needs_at_least_one_reference():
    with pytest.raises(ValueError, match="bleu: row 1 has an empty list of references"):
        Bleu().compute(predictions=["a", "b"], references=[["a"], []])


def test_an_empty_prediction_scores_zero():
    predictions, references = ["", "the storm closed the roads"], ["a short reference text", "the storm closed roads"]
    scores = default_text_metrics().compute(predictions=predictions[:1], references=references[:1])
    assert scores == dict.fromkeys(ROUGE_TYPES + ["bleu", "chrf", "exact_match"], 0.0)
    # Next to a non-empty row the empty one counts as 0 in the ROUGE mean.
    both = Rouge().compute(predictions=predictions, references=references)
    alone = Rouge().compute(predictions=predictions[1:], references=references[1:])
    assert both == pytest.approx({name: value / 2 for name, value in alone.items()})


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({}, 2 / 6),
        ({"ignore_case": True}, 3 / 6),
        ({"ignore_punctuation": True}, 3 / 6),
        ({"ignore_case": True, "ignore_punctuation": True}, 5 / 6),
    ],
)
def test_exact_match_options(options, expected):
    predictions = ["Paris", "  Paris\n", "paris", "Paris.", "«PARIS»", "Par is"]
    references = ["Paris"] * 6
    assert ExactMatch(**options).compute(predictions=predictions, references=references) == {
        "exact_match": pytest.approx(expected)
    }


def test_the_default_metrics_give_seven_flat_keys():
    scores = default_text_metrics().compute(predictions=PREDICTIONS, references=REFERENCES)
    assert list(scores) == ["rouge1", "rouge2", "rougeL", "rougeLsum", "bleu", "chrf", "exact_match"]
    one_by_one = {}
    for metric in (Rouge(), Bleu(), Chrf(), ExactMatch()):
        one_by_one.update(metric.compute(predictions=PREDICTIONS, references=REFERENCES))
    assert scores == pytest.approx(one_by_one)
    assert scores["exact_match"] == 0.0


class _WordCount:
    """A user's metric: anything with compute(predictions=, references=) returning a dict."""

    name = "word_count"

    def compute(self, *, predictions, references):
        return {"words_per_prediction": sum(len(text.split()) for text in predictions) / len(predictions)}


def test_combine_takes_a_user_metric_next_to_a_shipped_one():
    scores = evaluate.combine([Rouge(rouge_types=["rouge1"]), _WordCount()]).compute(
        predictions=PREDICTIONS, references=REFERENCES
    )
    assert scores == {
        "rouge1": pytest.approx(_rouge_score_means(PREDICTIONS, REFERENCES, True)["rouge1"]),
        "words_per_prediction": 40 / 5,
    }
    # evaluate.combine names a list's members by their `.name`; a dict names them itself.
    nameless = type("Nameless", (), {"compute": _WordCount.compute})()
    scores = evaluate.combine({"bleu": Bleu(), "mine": nameless}).compute(
        predictions=PREDICTIONS, references=REFERENCES
    )
    assert sorted(scores) == ["bleu", "words_per_prediction"]


def test_duplicate_keys_get_evaluates_prefixes():
    scores = evaluate.combine([ExactMatch(), ExactMatch(ignore_case=True)]).compute(predictions=["A"], references=["a"])
    assert scores == {"exact_match_0_exact_match": 0.0, "exact_match_1_exact_match": 1.0}


def test_add_batch_accumulates_rows():
    for metric in (Rouge(), Bleu(), Chrf(), ExactMatch()):
        metric.add_batch(predictions=PREDICTIONS[:2], references=REFERENCES[:2])
        metric.add_batch(predictions=[], references=[])  # an empty batch adds nothing
        metric.add_batch(predictions=PREDICTIONS[2:], references=REFERENCES[2:])
        expected = type(metric)().compute(predictions=PREDICTIONS, references=REFERENCES)
        assert metric.compute() == pytest.approx(expected), metric.name


def test_the_registry_and_the_loader():
    assert list(TEXT_METRICS.items()) == [("rouge", Rouge), ("bleu", Bleu), ("chrf", Chrf), ("exact_match", ExactMatch)]
    for name, metric in TEXT_METRICS.items():
        loaded = load_text_metric(name)
        assert type(loaded) is metric and loaded.name == name
    rouge = load_text_metric("rouge", use_stemmer=False, rouge_types=["rougeL"])
    assert rouge.compute(predictions=PREDICTIONS, references=REFERENCES) == {
        "rougeL": pytest.approx(_rouge_score_means(PREDICTIONS, REFERENCES, False)["rougeL"])
    }


def test_an_unknown_name_says_what_ships_and_what_else_works():
    with pytest.raises(ValueError) as raised:
        load_text_metric("bertscore")
    message = str(raised.value)
    assert "unknown text metric 'bertscore'" in message
    assert "'rouge', 'bleu', 'chrf', 'exact_match'" in message
    assert ".compute(predictions=..., references=...)" in message and "evaluate.combine" in message


@pytest.mark.parametrize(
    ("name", "module", "package"),
    [("rouge", "rouge_score", "rouge-score"), ("bleu", "sacrebleu", "sacrebleu"), ("chrf", "sacrebleu", "sacrebleu")],
)
def test_a_missing_library_names_the_package_to_install(monkeypatch, name, module, package):
    monkeypatch.setitem(sys.modules, module, None)  # `import <module>` now raises ImportError
    with pytest.raises(ImportError, match=f"the {name} metric needs the `{package}` package.*pip install {package}$"):
        load_text_metric(name)
    assert ExactMatch().compute(predictions=["a"], references=["a"]) == {"exact_match": 1.0}


def test_the_module_imports_without_the_metric_libraries():
    code = (
        "import json, sys\n"
        "sys.modules['rouge_score'] = sys.modules['sacrebleu'] = None\n"
        "from softprompt_hf.evaluation import text_metrics\n"
        "score = text_metrics.ExactMatch().compute(predictions=['a'], references=['a'])\n"
        "try:\n"
        "    text_metrics.Rouge()\n"
        "except ImportError as error:\n"
        "    print(json.dumps({'score': score, 'error': str(error)}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer == {
        "score": {"exact_match": 1.0},
        "error": "the rouge metric needs the `rouge-score` package, which is not installed: pip install rouge-score",
    }


@pytest.mark.parametrize("metric", [Rouge, Bleu, Chrf, ExactMatch])
def test_mismatched_or_empty_inputs_are_refused(metric):
    name = metric().name
    with pytest.raises(ValueError, match=f"^{name}: 3 predictions but 2 references: give one reference"):
        metric().compute(predictions=["a", "b", "c"], references=["a", "b"])
    with pytest.raises(ValueError, match=f"^{name}: 1 predictions but 2 references"):
        metric().add_batch(predictions=["a"], references=["a", "b"])
    with pytest.raises(ValueError, match=f"^{name}: no rows to score"):
        metric().compute(predictions=[], references=[])
    with pytest.raises(ValueError, match=f"^{name}: no rows to score"):
        metric().compute()
    with pytest.raises(ValueError, match=f"^{name}: pass both predictions= and references="):
        metric().compute(predictions=["a"])


@pytest.mark.parametrize("metric", [Rouge, Bleu, Chrf, ExactMatch])
def test_each_metric_describes_itself(metric):
    info = metric()._info()
    assert info.description and info.inputs_description
    assert metric is ExactMatch or "@inproceedings" in info.citation
    string = datasets.Value("string")
    assert [features["predictions"] for features in info.features] == [string, string]
    assert [features["references"] for features in info.features] == [string, datasets.Sequence(string)]


def test_nothing_is_written_under_hf_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    # evaluate reads HF_HOME when it is imported: point the path it already computed into tmp_path as well.
    monkeypatch.setattr(evaluate.config, "HF_METRICS_CACHE", str(tmp_path / "hf" / "metrics"))
    scores = default_text_metrics().compute(predictions=PREDICTIONS, references=REFERENCES)
    for name in TEXT_METRICS:
        load_text_metric(name).add_batch(predictions=PREDICTIONS, references=REFERENCES)
    assert len(scores) == 7
    assert list(tmp_path.rglob("*")) == []
    # The check can fail: a metric that does not keep its rows in memory writes there.
    ExactMatch(keep_in_memory=False).compute(predictions=["a"], references=["a"])
    assert (tmp_path / "hf" / "metrics" / "exact_match" / "default").is_dir()
