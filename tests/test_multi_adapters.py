"""Many soft prompts on one base model (``load_adapters``): rows of adapters of the three methods in one call give
exactly what each adapter alone gives them, one by one; bad adapter names and mixed base models are refused."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from conftest import ARCHS, SLIDING_ARCHS, method_options, model_config, window_crossing_texts
from trained_adapters import one_thread
from transformers import AutoModelForCausalLM, AutoTokenizer

from softprompt_hf import (
    build_soft_prompt_model,
    constrained_labels,
    generate_labels,
    generate_texts,
    load_adapters,
    predict,
    rank_labels,
    save_adapter,
)
from softprompt_hf.cli import main as cli_main
from softprompt_hf.constants import MODES
from softprompt_hf.evaluation.compute_metrics import Prediction, TextPrediction
from softprompt_hf.inference.engine import MixedDecoder
from softprompt_hf.serving.predict import load_adapter

pytestmark = pytest.mark.usefixtures(one_thread.__name__)

COMPLAINTS = ["complaint", "no complaint"]
# name: (method, virtual tokens, labels (None: free text), template); prompt tuning and P-tuning share labels and
# template, so a row run with the other's soft prompt would show in its scores.
ADAPTERS = {
    "complaints": ("prompt_tuning", 3, COMPLAINTS, "{text_column} says: {text} Label : "),
    "tone": ("p_tuning", 5, COMPLAINTS, "{text_column} says: {text} Label : "),
    "topics": ("prefix_tuning", 4, ["sports", "tech", "politics"], "Topic of {text} : "),
    "titles": ("prefix_tuning", 2, None, "Title : {title} Summary : "),
}
TEXTS = [
    "my order never arrived and nobody answers",
    "great support today, problem solved",
    "the app crashed again",
    "see you at the launch event tomorrow",
    "charged twice for one ticket",
    "what time does the store open on sunday?",
    "love the new phone plan",
]
# Rows of every adapter, interleaved; the free-text adapter's rows hold its template's column.
NAMES = ["topics", "complaints", "titles", "tone", "complaints", "topics", "tone", "titles", "complaints"]


def _input(name: str, i: int) -> str | dict[str, str]:
    text = TEXTS[i % len(TEXTS)]
    return {"title": text} if ADAPTERS[name][2] is None else text


INPUTS = [_input(name, i) for i, name in enumerate(NAMES)]


def _save_adapters(base_dir, root, adapters=ADAPTERS) -> dict[str, str]:
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    folders = {}
    for seed, (name, (method, virtual, labels, template)) in enumerate(adapters.items()):
        torch.manual_seed(100 + seed)
        model = build_soft_prompt_model(
            AutoModelForCausalLM.from_pretrained(base_dir),
            **method_options(method, prompt_tuning_init="RANDOM", num_virtual_tokens=virtual),
        )
        folder = save_adapter(
            model, root / name, tokenizer=tokenizer, labels=labels, template=template, text_column="text"
        )
        if labels is None:  # a free-text adapter, as a text recipe saves it
            path = folder / "softprompt_hf.json"
            settings = json.loads(path.read_text(encoding="utf-8"))
            settings.update(task="text", max_new_tokens=5)
            path.write_text(json.dumps(settings), encoding="utf-8")
        folders[name] = str(folder)
    return folders


class _Lazy(dict):
    """A dict that makes each missing entry with ``make(key)`` on first use."""

    def __init__(self, make):
        super().__init__()
        self.make = make

    def __missing__(self, key):
        self[key] = self.make(key)
        return self[key]


@pytest.fixture(scope="module")
def base_dirs(tmp_path_factory, model_dirs, tokenizer_dir):
    """The tiny base models: ARCHS', and on first use SLIDING_ARCHS' (whose tiny windows the longer rows cross)."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)

    def save(arch):
        torch.manual_seed(0)
        folder = tmp_path_factory.mktemp(f"tiny-{arch}")
        AutoModelForCausalLM.from_config(model_config(arch, len(tokenizer))).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        return folder

    dirs = _Lazy(save)
    dirs.update(model_dirs)
    return dirs


def _load(folders):
    """The adapter folders, all of them loaded together, and each loaded alone."""
    alone = {name: load_adapter(folder, device="cpu") for name, folder in folders.items()}
    return folders, load_adapters(folders, device="cpu"), alone


@pytest.fixture(scope="module")
def saved(tmp_path_factory, base_dirs):
    """Per architecture: ADAPTERS saved, loaded together and alone."""
    return _Lazy(lambda arch: _load(_save_adapters(base_dirs[arch], tmp_path_factory.mktemp(f"multi-{arch}"))))


def _same(actual, expected):
    assert type(actual) is type(expected)
    if isinstance(expected, TextPrediction):
        assert (actual.text, actual.output, actual.tokens, actual.id) == (
            expected.text,
            expected.output,
            expected.tokens,
            expected.id,
        )
        return
    assert (actual.text, actual.output, actual.predicted, actual.id) == (
        expected.text,
        expected.output,
        expected.predicted,
        expected.id,
    )
    if expected.scores is None:
        assert actual.scores is None
    else:
        assert list(actual.scores) == list(expected.scores)
        # Another batch shape is another matmul shape: equal to float32 rounding, not bit for bit.
        torch.testing.assert_close(list(actual.scores.values()), list(expected.scores.values()), atol=1e-4, rtol=1e-5)


@pytest.fixture
def batch_adapters(monkeypatch):
    """Records, for each batch the mixed decoder starts, the methods of its rows' adapters."""
    seen: list[set[str]] = []
    start = MixedDecoder.start

    def recording(self, rows):
        seen.append({self.decoders[adapter].peft_config.peft_type.value for adapter, _ in rows})
        return start(self, rows)

    monkeypatch.setattr(MixedDecoder, "start", recording)
    return seen


@pytest.mark.parametrize("mode", ["generate", "rank", "constrained"])
@pytest.mark.parametrize("arch", [*ARCHS, *SLIDING_ARCHS])
def test_mixed_rows_equal_each_adapter_alone_one_by_one(saved, arch, mode, batch_adapters):
    _, loaded, alone = saved[arch]
    # Rank and constrained decoding score labels: the free-text adapter's rows take generate mode only.
    rows = [i for i, name in enumerate(NAMES) if mode == "generate" or ADAPTERS[name][2] is not None]
    names, inputs, ids = [NAMES[i] for i in rows], [INPUTS[i] for i in rows], [f"row-{i}" for i in rows]
    mixed = predict(loaded, inputs, adapter_names=names, mode=mode, ids=ids, batch_size=len(rows))
    assert len(mixed) == len(rows)
    # One batch held rows of all three methods: their soft prompts really ran side by side. (These rows cross the
    # sliding archs' tiny windows, where they are batched by adapter: see the next test.)
    if arch not in SLIDING_ARCHS:
        assert {"PROMPT_TUNING", "P_TUNING", "PREFIX_TUNING"} in batch_adapters
    for prediction, name, text, row_id in zip(mixed, names, inputs, ids, strict=True):
        expected = predict(alone[name], [text], mode=mode, ids=[row_id])[0]
        _same(prediction, expected)
        if ADAPTERS[name][2] is not None:
            assert isinstance(prediction, Prediction)
            if mode != "generate":
                assert prediction.predicted in ADAPTERS[name][2]
        else:
            assert isinstance(prediction, TextPrediction)
    # The method on LoadedAdapters is the same call; other batches, and each adapter's rows by themselves, too.
    for batch_size, batching in ((2, "mixed"), (5, "per_adapter")):
        again = loaded.predict(inputs, names, mode=mode, ids=ids, batch_size=batch_size, batching=batching)
        for a, e in zip(again, mixed, strict=True):
            _same(a, e)


# Short soft prompts, templates and labels, so that the short rows fit the sliding archs' tiny windows.
SHORT_ADAPTERS = {
    "yes_no": ("prompt_tuning", 2, ["yes", "no"], "{text} : "),
    "ok": ("p_tuning", 3, ["yes", "no"], "{text} = "),
    "up_down": ("prefix_tuning", 2, ["up", "down"], "{text} ? "),
}


@pytest.mark.parametrize("arch", SLIDING_ARCHS)
def test_rows_that_cross_the_sliding_window_equal_each_adapter_alone(base_dirs, tmp_path, arch, batch_adapters):
    """Rows short enough share padded batches across adapters; the longer ones cross the tiny window, where pads
    would take their own tokens' slots, and are batched by adapter and equal length, without padding."""
    _, loaded, alone = _load(_save_adapters(base_dirs[arch], tmp_path, SHORT_ADAPTERS))
    texts = window_crossing_texts()
    names = [list(SHORT_ADAPTERS)[i % 3] for i in range(len(texts))]
    for mode in ("generate", "rank"):
        batch_adapters.clear()
        mixed = predict(loaded, texts, adapter_names=names, mode=mode, batch_size=len(texts))
        for prediction, name, text in zip(mixed, names, texts, strict=True):
            _same(prediction, predict(alone[name], [text], mode=mode)[0])
        assert max(len(methods) for methods in batch_adapters) == 3  # the short rows, mixed
        assert sum(len(methods) == 1 for methods in batch_adapters) >= 2  # the long ones, by adapter


def test_the_adapters_share_one_base_model_and_their_prompts_differ(saved):
    _, loaded, _ = saved["llama"]
    assert list(loaded) == list(ADAPTERS) and len(loaded) == 4
    assert all(loaded[name].model.get_base_model() is loaded.base for name in loaded)
    assert "complaints" in repr(loaded) and "Parameter" not in repr(loaded)
    # Same labels and template, other soft prompts: a row given the other adapter would score otherwise.
    text = TEXTS[0]
    ranked = predict(loaded, [text, text], adapter_names=["complaints", "tone"], mode="rank")
    assert ranked[0].scores != ranked[1].scores
    assert loaded["complaints"].settings["labels"] == COMPLAINTS


def test_bad_adapter_names_are_refused_with_the_loaded_ones(saved):
    _, loaded, _ = saved["gpt2"]
    texts = TEXTS[:3]
    with pytest.raises(ValueError, match=r"Row 2 names adapter 'reviews', which was not loaded; loaded: complaints, "):
        predict(loaded, texts, adapter_names=["complaints", "tone", "reviews"])
    with pytest.raises(ValueError, match="Got 2 adapter names for 3 texts"):
        predict(loaded, texts, adapter_names=["complaints", "tone"])
    with pytest.raises(ValueError, match="pass adapter_names="):
        predict(loaded, texts)
    with pytest.raises(ValueError, match="not a single string"):
        predict(loaded, texts, adapter_names="complaints")
    with pytest.raises(ValueError, match="labels, template cannot be passed"):
        predict(loaded, texts, adapter_names=["tone"] * 3, labels=COMPLAINTS, template="{text} : ")
    with pytest.raises(ValueError, match="Adapter 'titles' writes free text"):
        predict(loaded, [{"title": "x"}, "y"], adapter_names=["titles", "tone"], mode="rank")
    with pytest.raises(ValueError, match="Adapter 'tone': A classification adapter labels texts"):
        predict(loaded, [{"title": "x"}], adapter_names=["tone"])
    with pytest.raises(KeyError, match="loaded: complaints"):
        loaded["reviews"]
    with pytest.raises(ValueError, match=r"batching='rows': choose one of \['mixed', 'per_adapter'\]"):
        loaded.predict(texts, ["tone"] * 3, batching="rows")
    with pytest.raises(ValueError, match="this is a single adapter"):
        predict(loaded["tone"], texts, adapter_names=["tone"] * 3)
    # A plain dict of loaded adapters is not a set loaded on one base: load_adapters makes that.
    with pytest.raises(TypeError, match=r"what load_adapters\(\{name: adapter, \.\.\.\}\) returns, not a dict"):
        predict({"tone": loaded["tone"]}, texts, adapter_names=["tone"] * 3)


def test_adapters_of_different_base_models_are_refused_naming_both(saved, model_dirs):
    bloom_folders, gpt2_folders = saved["bloom"][0], saved["gpt2"][0]
    with pytest.raises(ValueError, match="different base models") as raised:
        load_adapters({"complaints": bloom_folders["complaints"], "topics": gpt2_folders["topics"]}, device="cpu")
    message = str(raised.value)
    assert "'complaints'" in message and "'topics'" in message
    assert str(model_dirs["bloom"]) in message and str(model_dirs["gpt2"]) in message
    with pytest.raises(ValueError, match="mapping of names"):
        load_adapters(bloom_folders["complaints"])
    with pytest.raises(ValueError, match="without '='"):
        load_adapters({"a=b": bloom_folders["complaints"]})


def test_cli_predicts_each_row_with_the_adapter_its_column_names(saved, tmp_path, capsys):
    folders, loaded, _ = saved["bloom"]
    names = NAMES
    frame = pd.DataFrame(
        {
            "id": list(range(len(names))),
            "task": names,
            "text": [TEXTS[i % len(TEXTS)] for i in range(len(names))],
            "title": [TEXTS[i % len(TEXTS)] for i in range(len(names))],
        }
    )
    rows_csv = tmp_path / "rows.csv"
    frame.to_csv(rows_csv, index=False)
    out = tmp_path / "predictions.jsonl"
    pairs = [f"{name}={folder}" for name, folder in folders.items()]
    argv = ["predict", *pairs, "--input", str(rows_csv), "--adapter-column", "task", "--id-column", "id"]
    assert cli_main([*argv, "--output", str(out), "--device", "cpu"]) == 0
    written = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    expected = predict(loaded, INPUTS, adapter_names=names, ids=list(range(len(names))))
    assert [row["adapter"] for row in written] == names
    assert [row["id"] for row in written] == list(range(len(names)))
    assert [row["output"] for row in written] == [p.output for p in expected]
    assert [row.get("predicted") for row in written] == [getattr(p, "predicted", None) for p in expected]

    # Rank mode over the classification adapters' rows, as CSV on stdout, in the file's order.
    labelled = frame[frame["task"] != "titles"]
    labelled.to_csv(rows_csv, index=False)
    capsys.readouterr()
    assert cli_main(["predict", *pairs, "--input", str(rows_csv), "--adapter-column", "task", "--mode", "rank"]) == 0
    printed = pd.read_csv(__import__("io").StringIO(capsys.readouterr().out), keep_default_na=False)
    ranked = predict(loaded, labelled["text"].tolist(), adapter_names=labelled["task"].tolist(), mode="rank")
    assert printed["adapter"].tolist() == labelled["task"].tolist()
    assert printed["predicted"].tolist() == [p.predicted for p in ranked]

    # A row naming an adapter that was not loaded: one error line naming it and the loaded ones.
    frame.assign(task=["complaints", "reviews", *names[2:]]).to_csv(rows_csv, index=False)
    assert cli_main([*argv, "--device", "cpu"]) == 1
    error = capsys.readouterr().err
    assert "Row 1" in error and "'reviews'" in error and "loaded: complaints, tone, topics, titles" in error
    assert cli_main(["predict", *pairs, "--input", str(rows_csv)]) == 1
    assert "pass --adapter-column" in capsys.readouterr().err
    assert cli_main(["predict", folders["tone"], "--input", str(rows_csv), "--adapter-column", "task"]) == 1
    assert "NAME=PATH" in capsys.readouterr().err
    assert cli_main(["predict", *pairs, "--input", str(rows_csv), "--adapter-column", "task", "--labels", "a,b"]) == 1
    assert "--labels: with several adapters" in capsys.readouterr().err


def test_the_decoding_functions_take_the_loaded_adapters_and_each_rows_name(saved):
    """generate_labels, rank_labels, constrained_labels and generate_texts with the loaded set as the model, no
    tokenizer, and adapter_names: each row decoded with its own adapter, as predict decodes it."""
    _, loaded, alone = saved["llama"]
    rows = [i for i, name in enumerate(NAMES) if ADAPTERS[name][2] is not None]
    names, texts = [NAMES[i] for i in rows], [INPUTS[i] for i in rows]
    expected = {mode: predict(loaded, texts, adapter_names=names, mode=mode) for mode in MODES}
    assert generate_labels(loaded, None, texts, adapter_names=names) == [p.output for p in expected["generate"]]
    assert constrained_labels(loaded, None, texts, adapter_names=names) == [p.output for p in expected["constrained"]]
    ranked = rank_labels(loaded, None, texts, adapter_names=names, batch_size=3)
    for scores, prediction in zip(ranked, expected["rank"], strict=True):
        assert list(scores) == list(prediction.scores)
        torch.testing.assert_close(list(scores.values()), list(prediction.scores.values()), atol=1e-4, rtol=1e-5)
    # Free text: the free-text adapter's rows with the classification ones, each within its own budget.
    written = generate_texts(loaded, None, INPUTS, adapter_names=NAMES, max_new_tokens=3)
    for output, name, text in zip(written, NAMES, INPUTS, strict=True):
        assert output == predict(alone[name], [text], max_new_tokens=3)[0].output
    # What each adapter brings itself cannot be passed; adapter_names needs the loaded set.
    with pytest.raises(ValueError, match="labels cannot be passed with them"):
        generate_labels(loaded, None, texts, COMPLAINTS, adapter_names=names)
    with pytest.raises(ValueError, match="pass None as the tokenizer"):
        rank_labels(loaded, alone["tone"].tokenizer, texts, adapter_names=names)
    with pytest.raises(ValueError, match="this is a single model"):
        constrained_labels(alone["tone"].model, alone["tone"].tokenizer, texts, COMPLAINTS, adapter_names=names)


def test_adapters_that_cannot_share_batches_run_through_predict(saved, monkeypatch, caplog):
    """Where the adapters' rows cannot be decoded together (a prefix cache of another kind, say), each adapter's
    rows run through predict: the same results, and a log line says so."""
    _, loaded, _ = saved["gpt2"]
    expected = predict(loaded, INPUTS, adapter_names=NAMES)
    monkeypatch.setattr(MixedDecoder, "of", classmethod(lambda cls, *args, **kwargs: None))
    with caplog.at_level("INFO", logger="softprompt_hf.serving.multi"):
        fallen_back = predict(loaded, INPUTS, adapter_names=NAMES)
    assert "cannot be decoded together" in caplog.text
    for actual, prediction in zip(fallen_back, expected, strict=True):
        _same(actual, prediction)
