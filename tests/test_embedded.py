"""The embedded default: shipped dataset and model are what their build scripts declare and do their job."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
import torch
from datasets import ClassLabel, load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, BloomForCausalLM

from softprompt_hf.core.files import sha256_of_file
from softprompt_hf.data.loading import load_text_data
from softprompt_hf.embedded import (
    COMPLAINT_INSTRUCTION,
    DESCRIBE_INSTRUCTION,
    DESCRIPTION_COLUMN,
    EMBEDDED_DATA_FILES,
    EMBEDDED_MODEL_PATH,
    EMBEDDED_TEXT_DATA_FILES,
    LABEL_NAMES,
    TEXT_COLUMN,
)
from softprompt_hf.embedded.build_data import (
    NUM_LABELLED,
    NUM_UNLABELLED,
    build_rows,
    build_text_rows,
    features,
    text_features,
)
from softprompt_hf.embedded.build_model import BuildSettings
from softprompt_hf.embedded.scoring import generate_labels, label_accuracy, text_rouge_l
from softprompt_hf.embedded.tasks import BARE_TASK_WEIGHTS, TASKS, TEMPLATE, TOPIC_PHRASES, describe, iter_examples
from softprompt_hf.embedded.tweets import MAX_WORDS, MIN_WORDS, TweetGenerator
from softprompt_hf.evaluation.text_metrics import load_text_metric

MODEL_DIR = Path(EMBEDDED_MODEL_PATH)
SEED_INIT_TEXT = "Classify if the tweet is a complaint or no complaint.\n"  # the seed guide's, word for word


@pytest.fixture(scope="module")
def dataset():
    return load_dataset("parquet", data_files=EMBEDDED_DATA_FILES)


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads((MODEL_DIR / "manifest.json").read_text())


@pytest.fixture(scope="module")
def model_and_tokenizer():
    torch.set_num_threads(2)
    return AutoModelForCausalLM.from_pretrained(EMBEDDED_MODEL_PATH), AutoTokenizer.from_pretrained(EMBEDDED_MODEL_PATH)


@pytest.fixture(scope="module")
def labelled(dataset) -> tuple[list[str], list[str]]:
    train = dataset["train"]
    return list(train[TEXT_COLUMN]), [LABEL_NAMES[y].replace("_", " ") for y in train["Label"]]


@pytest.fixture(scope="module")
def described() -> tuple[list[str], list[str]]:
    rows = load_dataset("parquet", data_files=EMBEDDED_TEXT_DATA_FILES)["train"]
    return list(rows[TEXT_COLUMN]), list(rows[DESCRIPTION_COLUMN])


# -- dataset ---------------------------------------------------------------------------------------


def test_dataset_has_raft_schema(dataset):
    for split in ("train", "test"):
        assert dataset[split].features == features()
        label = dataset[split].features["Label"]
        assert isinstance(label, ClassLabel) and label.names == list(LABEL_NAMES)
    assert dataset["train"].num_rows == NUM_LABELLED >= 600
    assert dataset["test"].num_rows == NUM_UNLABELLED
    assert set(dataset["test"]["Label"]) == {0}, "the test split is unlabelled, as in RAFT"
    assert set(dataset["train"]["Label"]) == {1, 2}, "every train row is labelled"


def test_dataset_is_balanced_varied_and_without_duplicates(dataset):
    train, test = dataset["train"], dataset["test"]
    counts = Counter(train["Label"])
    assert 0.4 <= counts[1] / train.num_rows <= 0.6
    texts = list(train[TEXT_COLUMN]) + list(test[TEXT_COLUMN])
    assert len(set(texts)) == len(texts), "no tweet appears twice, within or across splits"
    ids = list(train["ID"]) + list(test["ID"])
    assert len(set(ids)) == len(ids)
    lengths = [len(t.split()) for t in texts]
    assert min(lengths) >= MIN_WORDS and max(lengths) <= MAX_WORDS
    assert max(lengths) >= 45 and min(lengths) <= 7, "short and long tweets"
    assert sum("@" in t for t in texts) / len(texts) > 0.6
    assert sum(bool(re.search(r"[^\x00-\x7f]", t)) for t in texts) / len(texts) > 0.2, "emoji"
    handles = {h.lower() for t in texts for h in re.findall(r"@\w+", t)}
    assert len(handles) >= 40, "many companies and people"


def test_shipped_dataset_is_what_the_script_builds(dataset):
    rows = build_rows()
    for split, columns in rows.items():
        assert dataset[split].to_dict() == columns, f"rerun python -m softprompt_hf.embedded.build_data ({split})"


def test_shipped_text_dataset_is_what_the_script_builds(dataset):
    rows = load_dataset("parquet", data_files=EMBEDDED_TEXT_DATA_FILES)["train"]
    assert rows.features == text_features()
    assert rows.to_dict() == build_text_rows(), "rerun python -m softprompt_hf.embedded.build_data (describe)"
    # the labelled tweets, row for row: the text task is the classification task's rows with another target
    assert rows[TEXT_COLUMN] == dataset["train"][TEXT_COLUMN] and rows["ID"] == dataset["train"]["ID"]


def test_text_dataset_loads_for_text_to_text_training():
    data = load_text_data(
        EMBEDDED_TEXT_DATA_FILES, source_columns=TEXT_COLUMN, target_column=DESCRIPTION_COLUMN, id_column="ID"
    )
    assert data.target_column == DESCRIPTION_COLUMN and data.source_columns == [TEXT_COLUMN]
    assert data.train.num_rows + data.validation.num_rows == NUM_LABELLED


def test_descriptions_depend_on_several_attributes(dataset, described):
    _, descriptions = described
    assert len(set(descriptions)) >= 100, "tone, kind, company and topic combine"
    openings = Counter(" ".join(d.split()[:2]) for d in descriptions)
    assert set(openings) == {
        "angry complaint", "polite complaint", "happy praise", "neutral question", "neutral remark",
        "sad personal", "happy personal", "neutral personal",
    }  # fmt: skip
    assert all(4 <= len(d.split()) <= 8 for d in descriptions)
    labels = dataset["train"]["Label"]
    assert all(("complaint to" in d) == (y == 1) for d, y in zip(descriptions, labels, strict=True))
    assert {d.rsplit(" about ", 1)[-1] for d in descriptions if " about " in d} == set(TOPIC_PHRASES.values())
    # an answer of another task, or another row's description, shares little with a row's description
    rouge = load_text_metric("rouge")
    gen = TweetGenerator(4242)
    tweets = [gen.tweet() for _ in range(300)]
    references = [describe(t) for t in tweets]
    for name, task in TASKS.items():
        if name != "describe":
            answers = [task.answer(t) for t in tweets]
            assert rouge.compute(predictions=answers, references=references)["rougeL"] <= 0.3, name
    shifted = references[1:] + references[:1]
    assert rouge.compute(predictions=shifted, references=references)["rougeL"] <= 0.45


def test_tweet_generator_is_seeded():
    first = [TweetGenerator(7).tweet() for _ in range(3)]
    again = [TweetGenerator(7).tweet() for _ in range(3)]
    assert first == again
    assert TweetGenerator(8).tweet() != first[0]


def test_corpus_never_uses_the_shipped_tweets():
    rows = build_rows()
    shipped = frozenset(rows["train"][TEXT_COLUMN] + rows["test"][TEXT_COLUMN])
    stream = iter_examples(BuildSettings().seed, exclude=shipped)
    for _ in range(2000):
        example = next(stream)
        assert example.prompt.endswith(" Label : ")
        text = example.prompt.split("Tweet text : ", 1)[1][: -len(" Label : ")]
        assert text not in shipped


# -- model -----------------------------------------------------------------------------------------


def test_manifest_checksums_match_the_shipped_files(manifest):
    shipped = sorted(p.name for p in MODEL_DIR.iterdir() if p.is_file() and p.name != "manifest.json")
    assert sorted(manifest["sha256"]) == shipped
    for name, digest in manifest["sha256"].items():
        assert sha256_of_file(MODEL_DIR / name) == digest, f"{name} changed: rebuild it (README)"
    assert sum((MODEL_DIR / name).stat().st_size for name in shipped) <= 10 * 2**20
    assert all(Path(path).stat().st_size <= 300 * 2**10 for path in EMBEDDED_DATA_FILES.values())


def test_manifest_matches_the_build_settings_and_config(manifest):
    settings = BuildSettings()
    assert manifest["settings"] == settings.__dict__, "the shipped model was built with other settings"
    assert manifest["complaint_instruction"] == COMPLAINT_INSTRUCTION == SEED_INIT_TEXT
    assert TASKS["complaint"].instructions[0] == COMPLAINT_INSTRUCTION
    assert manifest["describe_instruction"] == DESCRIBE_INSTRUCTION == TASKS["describe"].instructions[0]
    assert "describe" not in BARE_TASK_WEIGHTS, "the bare template never answers the free-text task"
    config = json.loads((MODEL_DIR / "config.json").read_text())
    assert config["model_type"] == manifest["config"]["model_type"] == "bloom"
    assert config["architectures"] == ["BloomForCausalLM"]
    for key in ("hidden_size", "n_layer", "n_head"):
        assert config[key] == manifest["config"][key] == getattr(settings, key)
    assert config["vocab_size"] == manifest["config"]["vocab_size"] == settings.vocab_size


def test_model_and_tokenizer_load_offline(model_and_tokenizer, manifest):
    model, tokenizer = model_and_tokenizer
    assert isinstance(model, BloomForCausalLM)
    assert sum(p.numel() for p in model.parameters()) == manifest["num_parameters"]
    assert len(tokenizer) == model.config.vocab_size
    special = (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert special == (0, 1, 2, 3), "bloom's ids for <unk>, <s>, </s>, <pad>"
    assert model.config.eos_token_id == tokenizer.eos_token_id
    # like bloom's tokenizer: no special token added, the trailing space of the template is kept
    ids = tokenizer(TEMPLATE.format(text="@NovaBank hi"))["input_ids"]
    assert tokenizer.decode(ids) == "Tweet text : @NovaBank hi Label : "
    for label in ("complaint", "no complaint"):
        assert tokenizer.decode(tokenizer(label, add_special_tokens=False)["input_ids"]) == label


def test_template_is_the_package_default():
    prompt = pytest.importorskip("softprompt_hf.data.prompt")
    assert prompt.PromptTemplate(text_column=TEXT_COLUMN).render("hello") == TEMPLATE.format(text="hello")


def test_instruction_solves_the_complaint_task(model_and_tokenizer, labelled, manifest):
    model, tokenizer = model_and_tokenizer
    texts, gold = labelled
    accuracy = label_accuracy(model, tokenizer, texts, gold, instruction=COMPLAINT_INSTRUCTION)
    assert accuracy >= 0.95
    assert accuracy == pytest.approx(manifest["scores"]["with_instruction"], abs=0.01)


def test_without_instruction_the_task_is_unknown(model_and_tokenizer, labelled, manifest):
    model, tokenizer = model_and_tokenizer
    texts, gold = labelled
    accuracy = label_accuracy(model, tokenizer, texts, gold)
    assert accuracy <= 0.6
    assert accuracy == pytest.approx(manifest["scores"]["without_instruction"], abs=0.01)


def test_description_instruction_writes_the_descriptions(model_and_tokenizer, described, manifest):
    model, tokenizer = model_and_tokenizer
    texts, descriptions = described
    rouge_l = text_rouge_l(model, tokenizer, texts, descriptions, instruction=DESCRIBE_INSTRUCTION)
    assert rouge_l >= 0.9
    assert rouge_l == pytest.approx(manifest["scores"]["describe_rougeL_with_instruction"], abs=0.01)


def test_without_instruction_no_description(model_and_tokenizer, described, manifest):
    """The bare template answers label tasks: a soft prompt for the free-text task starts far from it."""
    model, tokenizer = model_and_tokenizer
    texts, descriptions = described
    rouge_l = text_rouge_l(model, tokenizer, texts, descriptions)
    assert rouge_l <= 0.3
    assert rouge_l == pytest.approx(manifest["scores"]["describe_rougeL_without_instruction"], abs=0.01)


def test_instructions_select_the_task(model_and_tokenizer):
    """Each task's instruction makes the same tweets get that task's answers."""
    model, tokenizer = model_and_tokenizer
    gen = TweetGenerator(4242)
    tweets = [gen.tweet() for _ in range(40)]
    for task in TASKS.values():
        prompts = [task.instructions[0] + TEMPLATE.format(text=t.text) for t in tweets]
        answers = generate_labels(model, tokenizer, prompts, max_new_tokens=16 if task.name == "describe" else 4)
        accuracy = sum(a == task.answer(t) for a, t in zip(answers, tweets, strict=True)) / len(tweets)
        assert accuracy >= 0.8, task.name


def test_text_initialised_prompt_tuning_starts_high(model_and_tokenizer, labelled):
    """8 virtual tokens initialised from the seed's init text already select the complaint task."""
    from softprompt_hf import build_soft_prompt_model

    _, tokenizer = model_and_tokenizer
    model = build_soft_prompt_model(
        AutoModelForCausalLM.from_pretrained(EMBEDDED_MODEL_PATH),
        method="prompt_tuning",
        prompt_tuning_init_text=SEED_INIT_TEXT,
        num_virtual_tokens=8,
        tokenizer=tokenizer,
    )
    texts, gold = labelled
    predictions = generate_labels(model, tokenizer, [TEMPLATE.format(text=t) for t in texts[:120]], max_new_tokens=3)
    assert sum(p == g for p, g in zip(predictions, gold, strict=False)) / len(predictions) >= 0.95


@pytest.mark.slow
def test_rebuild_reproduces_the_shipped_model(tmp_path, manifest):
    """Rebuilds the model (about five minutes): same tokenizer and config, same scores."""
    from softprompt_hf.embedded.build_model import build_model

    rebuilt = build_model(tmp_path, log=lambda line: None)
    assert rebuilt["config"] == manifest["config"]
    assert rebuilt["sha256"]["tokenizer.json"] == manifest["sha256"]["tokenizer.json"]
    # the weights are bitwise equal on the same CPU and library versions, but other kernels change the last
    # bits, and 1000 steps of training carry that on: the scores are the contract
    for key, value in manifest["scores"].items():
        assert rebuilt["scores"][key] == pytest.approx(value, abs=0.01)
