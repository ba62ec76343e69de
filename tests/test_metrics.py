"""Tests for softprompt_hf.evaluation.metrics and .prediction_files: label matching, hand-counted scores, and
prediction / submission files."""

from __future__ import annotations

import csv
import dataclasses
import json
import random
import stat

import pytest
from transformers.testing_utils import CaptureLogger

from softprompt_hf.evaluation import prediction_files
from softprompt_hf.evaluation.metrics import (
    INVALID_COLUMN,
    check_label_set,
    classification_report,
    match_label,
    normalize_label,
)
from softprompt_hf.evaluation.prediction_files import write_predictions, write_raft_submission

LABELS = ["positive", "negative", "neutral"]

# Hand-counted example: "neutral" is never predicted, two predictions are invalid.
#   gold \ predicted  positive  negative  neutral  invalid  | support
#   positive              2         1        0        1     |    4
#   negative              1         2        0        0     |    3
#   neutral               1         1        0        1     |    3
GOLD = ["positive"] * 4 + ["negative"] * 3 + ["neutral"] * 3
PREDICTED = [
    "Positive.",
    "positive",
    " negative ",
    "maybe",
    "NEGATIVE!",
    "negative",
    "positive",
    "positive",
    None,
    "negative",
]


# --- match_label / check_label_set ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("complaint", "complaint"),
        ("Complaint", "complaint"),
        ("COMPLAINT.", "complaint"),
        ("  no   complaint \n", "no complaint"),
        ("No complaint!?", "no complaint"),
        ("no\tcomplaint;", "no complaint"),
        ("no complaint or", None),
        ("no", None),
        ("complaints", None),
        ("complaint no", None),
        ("", None),
        ("   ", None),
        (None, None),
    ],
)
def test_match_label(text, expected):
    assert match_label(text, ["complaint", "no complaint"]) == expected


def test_match_label_returns_the_original_spelling():
    assert match_label("no complaint", ["Complaint", "No Complaint"]) == "No Complaint"


def test_check_label_set_returns_a_list():
    assert check_label_set(("a", "b c")) == ["a", "b c"]


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ([], "empty"),
        ("complaint", "single string"),
        (["complaint", ""], "Label 1 .* empty"),
        (["complaint", "   "], "Label 1 .* empty"),
        (["complaint", "..."], "Label 1 .* empty"),
        (["complaint", 3], "Label 1 is 3 \\(int\\)"),
        (["No complaint", "no complaint"], "'No complaint' and 'no complaint' are the same"),
        (["complaint", "complaint."], "'complaint' and 'complaint.' are the same"),
    ],
)
def test_check_label_set_errors(labels, message):
    with pytest.raises(ValueError, match=message):
        check_label_set(labels)


# --- classification_report -----------------------------------------------------------------------------------


def test_report_hand_counts():
    report = classification_report(GOLD, PREDICTED, LABELS)

    assert report.num_examples == 10
    assert report.labels == LABELS
    assert report.accuracy == pytest.approx(4 / 10)
    assert report.invalid_rate == pytest.approx(2 / 10)
    assert report.confusion == {
        "positive": {"positive": 2, "negative": 1, "neutral": 0, INVALID_COLUMN: 1},
        "negative": {"positive": 1, "negative": 2, "neutral": 0, INVALID_COLUMN: 0},
        "neutral": {"positive": 1, "negative": 1, "neutral": 0, INVALID_COLUMN: 1},
    }
    # positive: tp 2, predicted 4, support 4; negative: tp 2, predicted 4, support 3; neutral: never predicted.
    assert report.per_class["positive"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 4})
    assert report.per_class["negative"] == pytest.approx({"precision": 0.5, "recall": 2 / 3, "f1": 4 / 7, "support": 3})
    assert report.per_class["neutral"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 3}
    assert report.macro_f1 == pytest.approx((0.5 + 4 / 7 + 0.0) / 3)  # 5/14


def test_report_scores_labels_absent_from_gold_and_predictions():
    report = classification_report(["yes", "no"], ["yes", "no"], ["yes", "no", "maybe"])

    assert report.accuracy == 1.0
    assert report.per_class["maybe"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert report.macro_f1 == pytest.approx(2 / 3)


def test_report_matches_gold_after_normalisation():
    report = classification_report(["Positive", "negative."], ["positive", "negative"], LABELS)
    assert report.accuracy == 1.0
    assert report.per_class["positive"]["support"] == 1


def test_all_invalid_predictions():
    report = classification_report(["positive", "negative"], [None, "?"], LABELS)
    assert (report.accuracy, report.invalid_rate, report.macro_f1) == (0.0, 1.0, 0.0)


def _macro_f1_from_pairs(gold, predicted, labels):
    """Written differently from the module: pair counts and F1 = 2tp / (2tp + fp + fn)."""
    f1s = []
    for label in labels:
        tp = sum(g == label and p == label for g, p in zip(gold, predicted, strict=True))
        fp = sum(g != label and p == label for g, p in zip(gold, predicted, strict=True))
        fn = sum(g == label and p != label for g, p in zip(gold, predicted, strict=True))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(f1s) / len(f1s)


def test_macro_f1_agrees_with_an_independent_implementation():
    rng = random.Random(0)
    labels = ["complaint", "no complaint", "other"]
    gold = [rng.choice(labels) for _ in range(200)]
    # Mostly correct, some wrong, some invalid, some correct but oddly formatted.
    predicted = [rng.choice([g, g, rng.choice(labels), None, "garbage", f"  {g.upper()}."]) for g in gold]
    canonical = [None if p is None or p == "garbage" else " ".join(p.lower().split()).rstrip(".") for p in predicted]

    report = classification_report(gold, predicted, labels)

    assert report.macro_f1 == pytest.approx(_macro_f1_from_pairs(gold, canonical, labels))
    assert report.accuracy == pytest.approx(sum(g == p for g, p in zip(gold, canonical, strict=True)) / 200)
    assert report.invalid_rate == pytest.approx(canonical.count(None) / 200)
    assert sum(sum(row.values()) for row in report.confusion.values()) == 200
    assert {label: report.per_class[label]["support"] for label in labels} == {
        label: gold.count(label) for label in labels
    }


@pytest.mark.parametrize(
    ("gold", "predicted", "labels", "message"),
    [
        (["positive"], ["positive", "negative"], LABELS, "1 gold labels but 2 predictions"),
        ([], [], LABELS, "empty"),
        (["positive", "happy"], ["positive", "positive"], LABELS, "match no label .*'happy'"),
        (["positive"], ["positive"], [], "label set is empty"),
        (["positive"], ["positive"], ["positive", "Positive"], "same once normalised"),
        (["positive"], [1], LABELS, "Prediction 0 is 1 \\(int\\)"),
        ("positive", "positive", LABELS, "single strings"),
    ],
)
def test_report_errors(gold, predicted, labels, message):
    with pytest.raises(ValueError, match=message):
        classification_report(gold, predicted, labels)


def test_gold_error_names_the_label_set():
    with pytest.raises(ValueError) as error:
        classification_report(["no_complaint"], ["complaint"], ["complaint", "no complaint"])
    assert "'no_complaint'" in str(error.value)
    assert "['complaint', 'no complaint']" in str(error.value)


def test_as_metrics():
    report = classification_report(GOLD, PREDICTED, ["positive", "negative", "neutral"])
    assert report.as_metrics() == pytest.approx(
        {
            "accuracy": 0.4,
            "f1": 5 / 14,
            "invalid_rate": 0.2,
            "f1_positive": 0.5,
            "f1_negative": 4 / 7,
            "f1_neutral": 0.0,
        }
    )
    assert set(report.as_metrics("test")) == {f"test_{key}" for key in report.as_metrics()}
    assert set(report.as_metrics("test_")) == set(report.as_metrics("test"))


def test_as_metrics_keys_have_no_spaces():
    report = classification_report(["no complaint"], ["no complaint"], ["complaint", "no complaint"])
    assert "f1_no_complaint" in report.as_metrics()
    clash = classification_report(["a b"], ["a b"], ["a b", "a_b"])
    with pytest.raises(ValueError, match="rename the label"):
        clash.as_metrics()


# --- write_predictions ---------------------------------------------------------------------------------------

ROWS = [
    {
        "id": 1,
        "text": 'says "hi", then\nleaves — ok',
        "gold": "complaint",
        "predicted": "complaint",
        "scores": {"complaint": -0.25, "no complaint": -1.5},
    },
    {"id": 2, "text": "fine", "gold": "no complaint", "predicted": None, "scores": None},
]


def test_write_predictions_jsonl_round_trip(tmp_path):
    path = write_predictions(tmp_path / "nested" / "out" / "predictions.jsonl", ROWS)

    assert path == tmp_path / "nested" / "out" / "predictions.jsonl"
    with open(path, encoding="utf-8") as file:
        assert [json.loads(line) for line in file] == ROWS
    assert list(path.parent.iterdir()) == [path]


def test_write_predictions_csv_round_trip(tmp_path):
    path = write_predictions(tmp_path / "predictions.csv", ROWS)

    with open(path, encoding="utf-8", newline="") as file:
        reader = csv.DictReader(file)
        assert reader.fieldnames == ["id", "text", "gold", "predicted", "score_complaint", "score_no complaint"]
        read = list(reader)
    assert read == [
        {
            "id": "1",
            "text": 'says "hi", then\nleaves — ok',
            "gold": "complaint",
            "predicted": "complaint",
            "score_complaint": "-0.25",
            "score_no complaint": "-1.5",
        },
        {
            "id": "2",
            "text": "fine",
            "gold": "no complaint",
            "predicted": "",
            "score_complaint": "",
            "score_no complaint": "",
        },
    ]
    assert list(tmp_path.iterdir()) == [path]


def test_write_predictions_accepts_dataclass_rows(tmp_path):
    @dataclasses.dataclass
    class Row:
        id: int
        predicted: str | None

    path = write_predictions(tmp_path / "p.jsonl", [Row(1, "complaint"), Row(2, None)])
    assert path.read_text(encoding="utf-8").splitlines() == [
        '{"id": 1, "predicted": "complaint"}',
        '{"id": 2, "predicted": null}',
    ]


@pytest.mark.parametrize("name", ["predictions.txt", "predictions", "predictions.json"])
def test_write_predictions_rejects_other_extensions(tmp_path, name):
    with pytest.raises(ValueError, match="'.csv', '.jsonl'"):
        write_predictions(tmp_path / name, ROWS)
    assert list(tmp_path.iterdir()) == []


def test_write_predictions_rejects_non_mapping_rows(tmp_path):
    with pytest.raises(ValueError, match="Row 1 is a list"):
        write_predictions(tmp_path / "p.csv", [{"id": 1}, [1, 2]])
    assert list(tmp_path.iterdir()) == []


def test_failed_write_keeps_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "predictions.jsonl"
    path.write_text("old\n", encoding="utf-8")

    with pytest.raises(TypeError, match="not JSON serializable"):
        write_predictions(path, [{"id": 1}, {"id": 2, "scores": object()}])

    assert path.read_text(encoding="utf-8") == "old\n"
    assert list(tmp_path.iterdir()) == [path]


def test_written_file_has_default_permissions(tmp_path):
    reference = tmp_path / "reference.csv"
    reference.write_text("", encoding="utf-8")
    path = write_predictions(tmp_path / "predictions.csv", ROWS)
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(reference.stat().st_mode)


# --- write_raft_submission -----------------------------------------------------------------------------------

CLASS_NAMES = ["complaint", "no_complaint"]


def test_raft_submission_writes_original_class_names(tmp_path):
    path = write_raft_submission(
        tmp_path / "sub" / "twitter_complaints.csv",
        [50, 51, "52"],
        ["no complaint", "Complaint.", "  NO COMPLAINT "],
        CLASS_NAMES,
    )

    assert path.read_bytes() == b"ID,Label\n50,no_complaint\n51,complaint\n52,no_complaint\n"
    with open(path, encoding="utf-8", newline="") as file:
        assert list(csv.reader(file)) == [
            ["ID", "Label"],
            ["50", "no_complaint"],
            ["51", "complaint"],
            ["52", "no_complaint"],
        ]
    assert list(path.parent.iterdir()) == [path]


def test_raft_submission_rejects_invalid_predictions_without_fallback(tmp_path):
    with pytest.raises(ValueError, match=r"2 of 3 predictions match no class .*IDs '2', '3'.*fallback="):
        write_raft_submission(tmp_path / "s.csv", [1, 2, 3], ["complaint", None, "no complaint or"], CLASS_NAMES)
    assert list(tmp_path.iterdir()) == []


def test_raft_submission_fallback(tmp_path):
    with CaptureLogger(prediction_files.logger) as captured:
        path = write_raft_submission(
            tmp_path / "s.csv", [1, 2, 3], ["complaint", None, "maybe"], CLASS_NAMES, fallback="no_complaint"
        )
    with open(path, encoding="utf-8", newline="") as file:
        assert list(csv.reader(file))[1:] == [["1", "complaint"], ["2", "no_complaint"], ["3", "no_complaint"]]
    assert "2 of 3 predictions matched no class" in captured.out


@pytest.mark.parametrize(
    ("ids", "predicted", "class_names", "fallback", "message"),
    [
        ([1, 2], ["complaint"], CLASS_NAMES, None, "2 ids but 1 predictions"),
        ([], [], CLASS_NAMES, None, "empty"),
        ([1, 2, 1], ["complaint"] * 3, CLASS_NAMES, None, "Duplicate IDs.*'1'"),
        ([1], ["complaint"], CLASS_NAMES, "no complaint", "fallback='no complaint' is not a class name"),
        ([1], ["complaint"], ["no_complaint", "No complaint"], None, "same once normalised"),
        ([1], ["complaint"], [], None, "empty"),
    ],
)
def test_raft_submission_errors(tmp_path, ids, predicted, class_names, fallback, message):
    with pytest.raises(ValueError, match=message):
        write_raft_submission(tmp_path / "s.csv", ids, predicted, class_names, fallback=fallback)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [("Complaint.", "complaint"), ("  no   complaint !", "no complaint"), ("No Complaint", "no complaint")],
)
def test_normalize_label(text, expected):
    assert normalize_label(text) == expected
