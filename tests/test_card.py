"""The model card: Hub metadata, what was trained and how, and a usage snippet that runs as written."""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import METHODS
from hub_server import BASE_ID, TOKEN, hub_fixture  # noqa: F401  (provides the hub fixture)
from huggingface_hub import ModelCard
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

import softprompt_hf
from softprompt_hf.adapter.card import (
    ModelCardCallback,
    ModelCardInputs,
    build_model_card,
    model_card_inputs,
    render_model_card,
)
from softprompt_hf.adapter.hub import push_adapter
from softprompt_hf.core.upstream import cache_argument
from softprompt_hf.evaluation.metrics import classification_report, match_label
from softprompt_hf.serving.predict import predict

pytestmark = pytest.mark.usefixtures(one_thread.__name__)

TEMPLATE = "Tweet: {text}\nLabel:"
SECRET = "hf_CardSecretToken42"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, model_dirs):
    trainers = {}
    for method in METHODS:
        with single_thread():
            trainer = train_tiny_adapter(
                model_dirs["bloom"],
                method,
                tmp_path_factory.mktemp(method) / "run",
                num_train_epochs=4,
                learning_rate=3e-2,
                hub_token=SECRET,
            )
            trainer.final_metrics = trainer.evaluate()
        trainers[method] = trainer
    return trainers


def card_for(trainer, **overrides) -> ModelCard:
    return build_model_card(trainer.model, **card_values(trainer, **overrides))


def card_values(trainer, **overrides) -> dict:
    metrics = trainer.metrics_callback
    values = {
        "base_model": BASE_ID,
        "metrics": trainer.final_metrics,
        "report": metrics.last_report,
        "training_args": trainer.args,
        "log_history": trainer.state.log_history,
        "dataset": "ought/raft",
        "dataset_config": "twitter_complaints",
        "labels": LABELS,
        "template": TEMPLATE,
        "text_column": "Tweet text",
        "license": "apache-2.0",
        "repo_id": "alice/complaints",
    }
    values.update(overrides)
    return values


EXPECTED_TAG = {"prompt_tuning": "prompt-tuning", "p_tuning": "p-tuning", "prefix_tuning": "prefix-tuning"}


@pytest.mark.parametrize("method", METHODS)
def test_card_metadata_and_sections(trained, method):
    trainer = trained[method]
    card = card_for(trainer)
    data = card.data
    assert data.library_name == "peft" and data.base_model == BASE_ID and data.pipeline_tag == "text-generation"
    assert EXPECTED_TAG[method] in data.tags and "peft" in data.tags
    assert data.datasets == ["ought/raft"] and data.license == "apache-2.0"
    final = trainer.state.log_history[-1]
    results = {r.metric_type: r.metric_value for r in data.eval_results}
    assert results["accuracy"] == final["eval_accuracy"] and results["f1"] == final["eval_f1"]
    assert results["loss"] == final["eval_loss"] and "runtime" not in results
    assert {r.dataset_config for r in data.eval_results} == {"twitter_complaints"}
    # The YAML round-trips through the Hub's parser.
    assert ModelCard(str(card)).data.to_dict() == data.to_dict()

    text = card.text
    trainable, _ = trainer.model.get_nb_trainable_parameters()
    assert f"Trainable parameters: {trainable:,} of" in text
    assert f'"peft_type": "{trainer.model.peft_config["default"].peft_type.value}"' in text
    assert f'"base_model_name_or_path": "{BASE_ID}"' in text
    hyperparameters = section(text, "Training hyperparameters")
    assert "| learning_rate | `0.03` |" in hyperparameters and "| num_train_epochs | `4` |" in hyperparameters
    assert "per_device_train_batch_size" not in hyperparameters  # 8, the default
    assert "hub_token" not in hyperparameters and SECRET not in str(card)
    assert str(trainer.args.output_dir) not in str(card)
    per_evaluation = section(text, "Metrics per evaluation").splitlines()[2:]
    eval_losses = [e["eval_loss"] for e in trainer.state.log_history if "eval_loss" in e]
    # Four epochs, then trainer.evaluate() after training: that one is the validation metrics, not a fifth row.
    assert len(eval_losses) == 5 and len(per_evaluation) == 4
    assert [row.split(" | ")[:2] for row in per_evaluation] == [["| 1", "3"], ["| 2", "6"], ["| 3", "9"], ["| 4", "12"]]
    assert [f"{loss:.4f}" in row for row, loss in zip(per_evaluation, eval_losses[:4], strict=True)] == [True] * 4


def section(text: str, title: str) -> str:
    match = re.search(rf"## {title}\n\n(.*?)(\n## |\Z)", text, re.DOTALL)
    assert match, f"no section {title!r}"
    return match.group(1)


@pytest.mark.parametrize("method", METHODS)
def test_the_card_renders_the_same_from_its_stored_inputs_for_any_repository(trained, method):
    """What the card is rendered from is kept as JSON (sorted keys, as softprompt_hf.json is written); rendered
    from there for a repository it is the card build_model_card gives for that repository."""
    values = card_values(trained[method])
    repo_id = values.pop("repo_id")
    inputs = model_card_inputs(trained[method].model, **values)
    stored = json.loads(json.dumps(inputs.to_dict(), sort_keys=True))
    assert SECRET not in json.dumps(stored) and str(trained[method].args.output_dir) not in json.dumps(stored)
    for repo in (repo_id, "bob/elsewhere", None):
        expected = card_for(trained[method], repo_id=repo).content
        assert render_model_card(ModelCardInputs.from_dict(stored), repo_id=repo).content == expected


def test_confusion_matrix_matches_a_hand_count(trained):
    report = classification_report(
        ["complaint", "complaint", "complaint", "no complaint", "no complaint"],
        ["complaint", "no complaint", "gibberish", "no complaint", "no complaint"],
        LABELS,
    )
    matrix = section(card_for(trained["prompt_tuning"], report=report).text, "Confusion matrix")
    assert "| gold \\ predicted | complaint | no complaint | `<invalid>` |" in matrix
    assert "| **complaint** | 1 | 1 | 1 |" in matrix
    assert "| **no complaint** | 0 | 2 | 0 |" in matrix
    assert "5 validation rows" in matrix


def test_card_refuses_a_local_base_model_path(trained, model_dirs):
    with pytest.raises(ValueError, match="not a Hub id"):
        card_for(trained["p_tuning"], base_model=str(model_dirs["bloom"]))


def test_minimal_card_without_training_details(trained):
    card = build_model_card(trained["prefix_tuning"].model, base_model=BASE_ID)
    assert card.data.base_model == BASE_ID and not card.data.eval_results
    assert "## Usage" in card.text and "## Confusion matrix" not in card.text


SNIPPET = re.compile(r"```python\n(.*?)```", re.DOTALL)
SNIPPET_TEXTS = re.compile(r"^texts = (\[.*\])$", re.MULTILINE)


def snippet_texts(code: str) -> list[str]:
    """The texts a usage snippet labels."""
    (texts,) = SNIPPET_TEXTS.findall(code)
    return ast.literal_eval(texts)


@pytest.mark.parametrize("method", METHODS)
def test_usage_snippets_give_generation_metrics_labels(method, tmp_path):
    """The card's two snippets, model.generate() with enable_soft_prompt_generate and the loop without
    softprompt_hf, run as written on a local adapter folder (offline) and label rows as GenerationMetrics does."""
    model, tokenizer, folder, labels = embedded_adapter(method, tmp_path / "adapter")
    # The folder's own card data: it names the embedded model as the base, whose tokenizer the folder does not copy.
    stored = json.loads((folder / "softprompt_hf.json").read_text())["card"]
    assert stored["tokenizer"] == "base_model" and not (folder / "tokenizer.json").exists()
    assert stored["template"] == EMBEDDED_TEMPLATE and stored["labels"] == labels
    card = render_model_card(ModelCardInputs.from_dict(stored), repo_id="alice/complaints")
    with_package, without_package = SNIPPET.findall(card.text)
    assert "enable_soft_prompt_generate(model)" in with_package and "model.generate(" in with_package
    assert 'padding_side="left"' in with_package
    # (The base model's own tokenizer is the embedded model's, whose path names the package.)
    assert "softprompt_hf" not in without_package.replace(stored["base_model"], "")
    assert "generate(" not in without_package
    assert "**Without softprompt_hf**" in card.text
    texts = embedded_texts(8)
    expected = generation_metrics_predictions(model, tokenizer, labels, texts)
    assert len({p.predicted for p in expected} - {None}) >= 2
    for code in (with_package, without_package):
        code = code.replace("adapter = 'alice/complaints'", f"adapter = {str(folder)!r}")
        code = SNIPPET_TEXTS.sub(lambda _: f"texts = {texts!r}", code)
        assert snippet_texts(code) == texts and str(folder) in code
        assert f"AutoTokenizer.from_pretrained({stored['base_model']!r}" in code
        namespace: dict = {}
        exec(compile(code, "card-snippet", "exec"), namespace)
        answers = namespace["answers"]
        assert answers == [p.output for p in expected]
        assert [match_label(answer, labels) for answer in answers] == [p.predicted for p in expected]


def test_usage_snippet_runs_against_the_hub_as_written(trained, hub, tmp_path):
    """Each method's pushed card: its snippet runs in a fresh Python with only HF_ENDPOINT set, and prints the
    label that softprompt_hf's own prediction gives."""
    snippets, expected = [], []
    for method, trainer in trained.items():
        repo_id = f"alice/card-{method}"
        card = card_for(trainer, repo_id=repo_id)
        push_adapter(
            trainer.model,
            repo_id,
            base_model_id=BASE_ID,
            output_dir=tmp_path / method,
            tokenizer=trainer.processing_class,
            card=card,
            token=TOKEN,
        )
        pushed = ModelCard(hub.repos[repo_id].files["README.md"].decode())
        with_package, without_package = SNIPPET.findall(pushed.text)
        predictions = predict(
            trainer.model,
            snippet_texts(with_package),
            tokenizer=trainer.processing_class,
            labels=LABELS,
            template=TEMPLATE,
            text_column="Tweet text",
        )
        for code in (with_package, without_package):
            assert f"adapter = {repo_id!r}" in code
            snippets.append(code)
            expected.append(str([p.output for p in predictions]))  # what `print(answers)` prints

    runner = tmp_path / "run_snippets.py"
    runner.write_text(
        "import sys\n"
        + "".join(
            f"exec(compile({code!r}, 'snippet-{i}', 'exec'), {{}})\nprint('<END>', flush=True)\n"
            for i, code in enumerate(snippets)
        )
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "HUGGING", "TRANSFORMERS_"))}
    env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=str(tmp_path / "fresh-hf-home"), OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, str(runner)], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert result.returncode == 0, textwrap.shorten(result.stderr, 3000)
    printed = [chunk.strip().splitlines()[-1] if chunk.strip() else "" for chunk in result.stdout.split("<END>")[:-1]]
    assert printed == expected
    assert any(path.endswith("/model.safetensors") and path.startswith(f"/{BASE_ID}/") for _, path in hub.requests)
    assert Path(tmp_path / "fresh-hf-home").is_dir()  # downloads went to the fresh cache, through the server


def test_usage_snippets_label_the_runs_first_validation_texts(trained):
    """The texts the snippets label come from the run (its first validation rows), not from a sample tweet
    written into every card; a card that knows no data labels neutral placeholders."""
    trainer = trained["p_tuning"]
    metrics = trainer.metrics_callback
    data = ModelCardCallback.of(trainer, base_model=BASE_ID, metrics=metrics).card_data(trainer.model)
    first = [row["Tweet text"] for row in metrics.eval_rows[:2]]
    assert data.example_texts == first
    for code in SNIPPET.findall(render_model_card(data).text):
        assert snippet_texts(code) == first
    bare = build_model_card(trainer.model, base_model=BASE_ID, labels=LABELS, text_column="Tweet text")
    (placeholders,) = {tuple(snippet_texts(code)) for code in SNIPPET.findall(bare.text)}
    rows = {row["Tweet text"] for row in metrics.eval_rows} | {"@Acme my parcel never arrived"}
    assert len(placeholders) == 2 and not set(placeholders) & rows


def test_the_generate_caveat_names_the_versions_the_adapter_was_saved_with(trained):
    """The card says peft's own generate() is wrong only as a fact about the versions it was saved with."""
    import peft
    import transformers

    model = trained["prompt_tuning"].model
    data = model_card_inputs(model, base_model=BASE_ID, labels=LABELS, text_column="Tweet text")
    assert data.versions == {
        "peft": peft.__version__,
        "softprompt_hf": softprompt_hf.__version__,
        "transformers": transformers.__version__,
    }
    wrong = cache_argument(model) == "cache"  # the base forward takes transformers 5.24's renamed argument
    assert data.stock_generate_wrong is wrong
    usage = section(render_model_card(data).text, "Usage").split("\n\n")[0]
    claim = "`PeftModel.generate()` alone returns wrong tokens for a soft prompt"
    versions = f"with peft {peft.__version__} and transformers {transformers.__version__}, the versions this"
    assert (claim in usage and versions in usage) is wrong
    assert "peft 0.21 and transformers 5," not in usage
    # Data that records no such fact (an older folder's) states no caveat.
    unknown = render_model_card(dataclasses.replace(data, stock_generate_wrong=None, versions={}))
    assert claim not in unknown.text


def test_a_card_without_a_known_text_column_never_renders_a_wrong_prompt(trained):
    """Built without the text column the model was trained on, the card says so and its snippets stop with a
    KeyError instead of filling {text_column} with a name the model never saw."""
    card = build_model_card(trained["prefix_tuning"].model, base_model=BASE_ID, labels=LABELS)
    assert "text_column='text'" not in card.text and "'text'" not in card.text
    assert "which this card does not record" in card.text and "--text-column" in section(card.text, "Usage")
    assert "--text-column '" not in card.text
    for code in SNIPPET.findall(card.text):
        (prompt,) = re.findall(r"^\s*(?:prompts = \[|prompt = )('.*'\.format\(text=text\))", code, re.MULTILINE)
        with pytest.raises(KeyError, match="text_column"):
            eval(prompt, {"text": "@Acme late again"})
    # A template without {text_column} needs no column name.
    plain = build_model_card(trained["prefix_tuning"].model, base_model=BASE_ID, labels=LABELS, template=TEMPLATE)
    assert f"Prompt template: `{TEMPLATE!r}`." in plain.text and "does not record" not in plain.text
