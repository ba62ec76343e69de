"""softprompt_hf.serving.predict and the softprompt-hf predict command, on adapters trained and saved in the session."""

from __future__ import annotations

import io
import json
import shutil

import pandas as pd
import pytest
import torch
from conftest import METHODS, labelled_rows, method_options
from peft import AutoPeftModelForCausalLM
from trained_adapters import (
    EMBEDDED_TEMPLATE,
    LABELS,
    embedded_adapter,
    embedded_texts,
    generation_metrics_predictions,
    one_thread,
    single_thread,
    train_tiny_adapter,
)
from transformers import AutoModelForCausalLM, AutoTokenizer

from softprompt_hf import build_soft_prompt_model
from softprompt_hf.adapter.saving import save_adapter
from softprompt_hf.cli import main as cli_main
from softprompt_hf.data.prompt import PromptTemplate
from softprompt_hf.embedded import EMBEDDED_MODEL_PATH
from softprompt_hf.inference import labels as _labels
from softprompt_hf.inference import mixed as _mixed
from softprompt_hf.serving.predict import AdapterLoadError, load_adapter, predict, read_texts

pytestmark = pytest.mark.usefixtures(one_thread.__name__)

TEMPLATE = "{text_column} says: {text} Label : "
TEXTS = [row["Tweet text"] for row in labelled_rows(24, seed=3)[:7]]


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, model_dirs):
    """For each method: (trained in-memory model, its tokenizer, saved adapter folder)."""
    trained = {}
    for method in METHODS:
        root = tmp_path_factory.mktemp(method)
        with single_thread():
            trainer = train_tiny_adapter(
                model_dirs["bloom"], method, root / "run", num_train_epochs=2, eval_strategy="no"
            )
        folder = save_adapter(
            trainer.model,
            root / "adapter",
            tokenizer=trainer.processing_class,
            labels=LABELS,
            template=TEMPLATE,
            text_column="Tweet text",
        )
        trained[method] = (trainer.model, trainer.processing_class, folder)
    return trained


def assert_same_predictions(actual, expected):
    assert [(p.text, p.output, p.predicted, p.id) for p in actual] == [
        (p.text, p.output, p.predicted, p.id) for p in expected
    ]
    for a, e in zip(actual, expected, strict=True):
        if e.scores is None:
            assert a.scores is None
        else:
            assert a.scores.keys() == e.scores.keys()
            # Other batch sizes are other matmul shapes: scores agree to float32 rounding, not exactly.
            torch.testing.assert_close(list(a.scores.values()), list(e.scores.values()), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode", ["generate", "rank"])
@pytest.mark.parametrize("method", METHODS)
def test_saved_adapter_predicts_like_the_trained_model(adapters, method, mode):
    model, tokenizer, folder = adapters[method]
    expected = predict(model, TEXTS, tokenizer=tokenizer, labels=LABELS, template=TEMPLATE, mode=mode)
    # Labels, template and text column come from the folder's softprompt_hf.json.
    loaded = load_adapter(folder, device="cpu")
    assert loaded.settings["labels"] == LABELS
    actual = predict(loaded, TEXTS, mode=mode, batch_size=3)
    assert_same_predictions(actual, expected)
    assert_same_predictions(predict(loaded, TEXTS, mode=mode, batch_size=1), expected)
    if mode == "rank":
        assert all(p.predicted in LABELS and p.scores.keys() == set(LABELS) for p in actual)
        # The stored template is really used: the seed's default template scores differently.
        other = predict(loaded, TEXTS, mode=mode, template="{text_column} : {text} Label : ")
        assert [p.scores for p in other] != [p.scores for p in actual]


def test_flags_override_the_stored_settings_and_labels_are_required(adapters, tmp_path):
    model, tokenizer, folder = adapters["prompt_tuning"]
    loaded = load_adapter(folder, device="cpu")
    ranked = predict(loaded, TEXTS[:2], mode="rank", labels=["complaint", "no complaint", "question"])
    assert all(p.scores.keys() == {"complaint", "no complaint", "question"} for p in ranked)

    bare = tmp_path / "bare"
    shutil.copytree(folder, bare)
    (bare / "softprompt_hf.json").unlink()
    with pytest.raises(ValueError, match="No label set.*--labels"):
        predict(str(bare), TEXTS[:1])
    with pytest.raises(ValueError, match="tokenizer"):
        predict(model, TEXTS[:1], labels=LABELS)
    with pytest.raises(ValueError, match="mode"):
        predict(loaded, TEXTS[:1], mode="beam")


def test_missing_base_model_offline_says_what_to_download_or_pass(adapters, tmp_path, model_dirs, capsys):
    _, _, folder = adapters["p_tuning"]
    moved = tmp_path / "adapter"
    shutil.copytree(folder, moved)
    config = json.loads((moved / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "nobody/missing-tiny-base"
    (moved / "adapter_config.json").write_text(json.dumps(config))

    with pytest.raises(AdapterLoadError) as failure:
        load_adapter(moved)
    message = str(failure.value)
    assert "nobody/missing-tiny-base" in message
    assert "hf download nobody/missing-tiny-base" in message and "--base-model" in message

    assert cli_main(["predict", str(moved), "--text", TEXTS[0]]) == 1
    assert "hf download nobody/missing-tiny-base" in capsys.readouterr().err

    # The fix the message names: the local path of a copy.
    expected = predict(folder, TEXTS, mode="rank")
    assert_same_predictions(predict(moved, TEXTS, mode="rank", base_model=str(model_dirs["bloom"])), expected)


def test_an_adapter_saved_without_the_base_models_tokenizer_predicts_as_one_saved_with_it(adapters, tmp_path):
    """The folder names the base model's tokenizer instead of holding a copy: predict, and AutoPeftModelForCausalLM
    with the tokenizer softprompt_hf.json names, label as the trained model and a folder with the copy do."""
    model, tokenizer, folder = adapters["p_tuning"]
    settings = json.loads((folder / "softprompt_hf.json").read_text())
    assert settings["tokenizer"] == "base_model" and not list(folder.glob("tokenizer*"))
    copy = save_adapter(
        model,
        tmp_path / "copy",
        tokenizer=tokenizer,
        labels=LABELS,
        template=TEMPLATE,
        text_column="Tweet text",
        save_tokenizer=True,
    )
    assert (copy / "tokenizer.json").is_file()
    for mode in ("generate", "rank"):
        expected = predict(model, TEXTS, tokenizer=tokenizer, labels=LABELS, template=TEMPLATE, mode=mode)
        assert_same_predictions(predict(str(folder), TEXTS, mode=mode), expected)
        assert_same_predictions(predict(str(copy), TEXTS, mode=mode), expected)
    auto = AutoPeftModelForCausalLM.from_pretrained(folder)
    recorded = AutoTokenizer.from_pretrained(settings["base_model"])
    prompt = PromptTemplate(TEMPLATE, "Tweet text")
    assert _labels.generate_label_ids(auto, recorded, TEXTS, template=prompt, show_progress=False) == (
        _labels.generate_label_ids(model, tokenizer, TEXTS, template=prompt, show_progress=False)
    )


def test_the_base_models_tokenizer_missing_says_what_to_pass(adapters, tmp_path, model_dirs):
    _, _, folder = adapters["prompt_tuning"]
    weights_only = tmp_path / "weights-only"
    weights_only.mkdir()
    for path in model_dirs["bloom"].iterdir():
        if not path.name.startswith("tokenizer"):
            shutil.copy(path, weights_only / path.name)
    with pytest.raises(AdapterLoadError, match="uses the tokenizer of its base model.*--base-model"):
        load_adapter(folder, base_model=weights_only)


@pytest.mark.parametrize("extension", [".csv", ".jsonl", ".parquet"])
def test_read_texts_from_files(tmp_path, extension):
    frame = pd.DataFrame({"ID": [7, 8], "Tweet text": ["@Acme late again", "@Acme thanks!"], "extra": ["a", "b"]})
    path = tmp_path / f"texts{extension}"
    if extension == ".csv":
        frame.to_csv(path, index=False)
    elif extension == ".jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path)
    assert read_texts(path, text_column="Tweet text", id_column="ID") == (["@Acme late again", "@Acme thanks!"], [7, 8])
    with pytest.raises(ValueError, match="choose the text column"):
        read_texts(path)
    with pytest.raises(ValueError, match="no column 'text'"):
        read_texts(path, text_column="text")


def test_read_texts_rejects_empty_texts_and_unknown_formats(tmp_path):
    (tmp_path / "t.csv").write_text("id,text\n1,fine\n2,\n")
    with pytest.raises(ValueError, match="Row 1 .* has '' in 'text'"):
        read_texts(tmp_path / "t.csv", text_column="text")
    (tmp_path / "t.txt").write_text("a\n")
    with pytest.raises(ValueError, match="stdin"):
        read_texts(tmp_path / "t.txt")
    assert read_texts(io.StringIO("first text\n\nsecond text\n")) == (["first text", "second text"], None)


def test_cli_labels_a_file_to_csv_and_stdin_to_jsonl(adapters, tmp_path, monkeypatch, capsys):
    _, _, folder = adapters["prefix_tuning"]
    expected = predict(folder, TEXTS, mode="rank")
    source = tmp_path / "in.csv"
    pd.DataFrame({"ID": range(100, 107), "Tweet text": TEXTS, "other": ["x"] * 7}).to_csv(source, index=False)
    output = tmp_path / "out" / "predictions.csv"
    args = ["predict", str(folder), "--input", str(source), "--text-column", "Tweet text", "--id-column", "ID"]
    assert cli_main([*args, "--mode", "rank", "--batch-size", "2", "--output", str(output)]) == 0
    written = pd.read_csv(output)
    assert list(written.columns) == ["id", "text", "predicted", "output", "score_complaint", "score_no complaint"]
    assert written["id"].tolist() == list(range(100, 107))
    assert written["predicted"].tolist() == [p.predicted for p in expected]
    # Batch 2 against the default batch: another matmul shape, so the scores agree to float32 rounding only.
    torch.testing.assert_close(
        written["score_complaint"].tolist(), [p.scores["complaint"] for p in expected], rtol=1e-4, atol=1e-4
    )

    # Without --text-column: the column the adapter was trained on, else a file's only column.
    again = tmp_path / "again.jsonl"
    assert cli_main(["predict", str(folder), "--input", str(source), "--mode", "rank", "--output", str(again)]) == 0
    assert [json.loads(line)["predicted"] for line in again.read_text().splitlines()] == [p.predicted for p in expected]
    single = tmp_path / "single.csv"
    pd.DataFrame({"body": TEXTS[:2]}).to_csv(single, index=False)
    assert cli_main(["predict", str(folder), "--input", str(single), "--mode", "rank", "--output", str(again)]) == 0
    assert [json.loads(line)["text"] for line in again.read_text().splitlines()] == TEXTS[:2]
    two = tmp_path / "two.csv"
    pd.DataFrame({"body": TEXTS[:2], "x": [1, 2]}).to_csv(two, index=False)
    assert cli_main(["predict", str(folder), "--input", str(two)]) == 1
    assert "no column 'Tweet text'" in capsys.readouterr().err

    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(TEXTS) + "\n"))
    assert cli_main(["predict", str(folder), "--format", "jsonl"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    generated = predict(folder, TEXTS)
    assert [(row["text"], row["output"], row["predicted"]) for row in lines] == [
        (p.text, p.output, p.predicted) for p in generated
    ]

    assert (
        cli_main(["predict", str(folder), "--text", TEXTS[0], "--text", TEXTS[1], "--labels", "complaint,no complaint"])
        == 0
    )
    rows = pd.read_csv(io.StringIO(capsys.readouterr().out))
    assert rows["text"].tolist() == TEXTS[:2]


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """For each method: an untrained soft prompt on the embedded model that predicts varied labels (see
    trained_adapters.EMBEDDED_ADAPTERS), as (model, tokenizer, saved folder, labels)."""
    return {method: embedded_adapter(method, tmp_path_factory.mktemp(method) / "adapter") for method in METHODS}


def _not_the_model_generate(*args, **kwargs):
    raise AssertionError("generate mode must decode with model.generate(), not the package's own greedy loops")


def _forbid_the_package_decoder(monkeypatch):
    # Both loops of the package's own decoder (with and without the cache) raise: only generate() may decode. They
    # are patched where they are called: generate_label_ids in labels.py, and mixed_outputs in mixed.py.
    monkeypatch.setattr(_labels, "greedy_with_cache", _not_the_model_generate)
    monkeypatch.setattr(_labels, "greedy_full_forward", _not_the_model_generate)
    monkeypatch.setattr(_mixed, "greedy_with_cache", _not_the_model_generate)


@pytest.mark.parametrize("method", METHODS)
def test_generate_mode_decodes_with_model_generate_and_gives_generation_metrics_labels(
    embedded, method, tmp_path, monkeypatch, capsys
):
    model, tokenizer, folder, labels = embedded[method]
    texts = embedded_texts(16)
    expected = [(p.output, p.predicted) for p in generation_metrics_predictions(model, tokenizer, labels, texts)]
    # Varied labels (and, with a random prompt, outputs that name no label): matching is compared too.
    assert len({predicted for _, predicted in expected} - {None}) >= 2
    assert (None in {predicted for _, predicted in expected}) == (method != "prompt_tuning")
    _forbid_the_package_decoder(monkeypatch)

    # A saved folder: load_adapter's model, batches of 5 prompts of different lengths, padded on the left.
    assert [(p.output, p.predicted) for p in predict(folder, texts, batch_size=5)] == expected
    # The in-memory model: the fix is on for the call only.
    in_memory = predict(model, texts, tokenizer=tokenizer, labels=labels, template=EMBEDDED_TEMPLATE)
    assert [(p.output, p.predicted) for p in in_memory] == expected
    assert "generate" not in model.__dict__

    source = tmp_path / "in.csv"
    pd.DataFrame({"Tweet text": texts}).to_csv(source, index=False)
    assert cli_main(["predict", str(folder), "--input", str(source), "--batch-size", "3", "--format", "jsonl"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(row["output"], row["predicted"]) for row in lines] == expected


def test_generate_mode_with_a_plain_model_uses_its_stock_generate(embedded, monkeypatch):
    _, tokenizer, _, labels = embedded["prompt_tuning"]
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(EMBEDDED_MODEL_PATH)
    texts = embedded_texts(8)
    expected = [(p.output, p.predicted) for p in generation_metrics_predictions(base, tokenizer, labels, texts)]
    _forbid_the_package_decoder(monkeypatch)
    predicted = predict(base, texts, tokenizer=tokenizer, labels=labels, template=EMBEDDED_TEMPLATE, batch_size=3)
    assert [(p.output, p.predicted) for p in predicted] == expected


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_load_adapter_model_generate_is_greedy_decoding_by_full_forward_passes(model_dirs, arch, method, tmp_path):
    """peft 0.21.2's own generate() gets later tokens or the prefix wrong on transformers 5.24 (on this GPT-2
    model for all three methods); load_adapter's model has the fix on. Llama has grouped-query attention, where
    peft saves prefix tuning with the key/value heads' shapes (load_adapter refused it once, comparing them with
    the model's hidden size and heads)."""
    tokenizer = AutoTokenizer.from_pretrained(model_dirs[arch])
    torch.manual_seed(0)
    model = build_soft_prompt_model(
        AutoModelForCausalLM.from_pretrained(model_dirs[arch]),
        **method_options(method, prompt_tuning_init="RANDOM", num_virtual_tokens=4),
    )
    loaded = load_adapter(save_adapter(model, tmp_path / "adapter", tokenizer=tokenizer), device="cpu")
    prompt = torch.tensor([PromptTemplate().encode(tokenizer, TEXTS[0])])
    eos = tokenizer.eos_token_id
    reference = prompt
    with torch.no_grad():
        for _ in range(6):
            next_id = loaded.model(input_ids=reference).logits[0, -1].argmax()
            reference = torch.cat([reference, next_id.view(1, 1)], dim=1)
            if next_id.item() == eos:
                break
    generated = loaded.model.generate(
        input_ids=prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=6,
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=tokenizer.pad_token_id,
    )
    assert reference.shape[1] > prompt.shape[1] + 1  # more than one new token: the later steps are compared too
    assert generated.tolist() == reference.tolist()


def test_generate_mode_is_greedy_whatever_the_base_models_generation_config_says(embedded):
    """transformers fills generate()'s unset settings from the model's generation_config (real models ship
    do_sample=True, penalties): predict decodes greedily, as GenerationMetrics does, all the same."""
    model, tokenizer, folder, labels = embedded["p_tuning"]
    texts = embedded_texts(8)
    expected = [(p.output, p.predicted) for p in generation_metrics_predictions(model, tokenizer, labels, texts)]
    loaded = load_adapter(folder, device="cpu")
    config = loaded.model.get_base_model().generation_config
    config.do_sample, config.top_k, config.repetition_penalty, config.no_repeat_ngram_size = True, 2, 5.0, 1
    torch.manual_seed(0)  # were sampling on, a failure would be the same on every run
    assert [(p.output, p.predicted) for p in predict(loaded, texts, batch_size=4)] == expected
