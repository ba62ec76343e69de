"""Where the prompt ends and the label begins (``PromptTemplate.label_tokenization``), on the two kinds of
tokenizer real models use: SentencePiece-style (Metaspace, ``'▁'`` marks a word start: Gemma, Llama 2) and
GPT-2-style byte-level BPE (bloomz, the embedded model). Training, rank scoring, greedy decoding, ``predict``
and a saved adapter must all use the same ids, and by default those the tokenizer gives the joined text."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from conftest import labelled_rows, model_config
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast, Trainer, TrainingArguments
from transformers.utils import logging as hf_logging

from softprompt_hf import (
    GenerationMetrics,
    SoftPromptDataCollator,
    build_soft_prompt_model,
    predict,
    rank_labels,
    save_adapter,
)
from softprompt_hf.adapter.card import model_card_inputs, render_model_card
from softprompt_hf.data.prompt import PromptTemplate
from softprompt_hf.evaluation.metrics import match_label
from softprompt_hf.inference.labels import generate_label_ids

LABELS = ["complaint", "no complaint"]
TEXTS = [row["Tweet text"] for row in labelled_rows(6)] + ["@Acme Label : complaint?", "@SkyAir ok:", "@BankCo 100"]


def _corpus() -> list[str]:
    """Prompts with their labels, as a pretrained model reads them: the label is one more word of the text."""
    return [f"Tweet text : {row['Tweet text']} Label : {row['text_label']}" for row in labelled_rows(48)] * 4


def sentencepiece_tokenizer(prepend_scheme: str) -> PreTrainedTokenizerFast:
    """A Metaspace BPE tokenizer with its own word tokens ('▁complaint', '▁no', '▁:'), BOS added and a pad of its
    own, like Gemma's ('never': no '▁' before the first word) or Llama 2's ('first')."""
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=prepend_scheme)
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme=prepend_scheme)
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<eos>", "<bos>", "<unk>"], show_progress=False
    )
    backend.train_from_iterator(_corpus(), trainer)
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", backend.token_to_id("<bos>"))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )


def byte_level_tokenizer() -> PreTrainedTokenizerFast:
    """A GPT-2-style byte-level BPE tokenizer ('Ġcomplaint' is a word token), EOS reused as pad."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_corpus(), trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


TOKENIZERS = {
    "gemma-like": lambda: sentencepiece_tokenizer("never"),
    "llama-like": lambda: sentencepiece_tokenizer("first"),
    "byte-level": byte_level_tokenizer,
}
WORD_START = {"gemma-like": "▁", "llama-like": "▁", "byte-level": "Ġ"}


@pytest.fixture(scope="module", params=sorted(TOKENIZERS))
def kind(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def tok(kind) -> PreTrainedTokenizerFast:
    tokenizer = TOKENIZERS[kind]()
    mark = WORD_START[kind]
    assert {f"{mark}complaint", f"{mark}no", f"{mark}:"} <= set(tokenizer.get_vocab()), "the premise of these tests"
    return tokenizer


def _tokens(tokenizer, ids) -> list[str]:
    return tokenizer.convert_ids_to_tokens(list(ids))


def _row(text: str, label: str) -> dict:
    return {"Tweet text": text, "text_label": label}


def _split(batch: dict, row: int = 0) -> tuple[list[int], list[int]]:
    """(prompt ids, target ids) of one collated row."""
    mask = batch["attention_mask"][row].bool()
    ids, labels = batch["input_ids"][row][mask].tolist(), batch["labels"][row][mask].tolist()
    start = next(i for i, label in enumerate(labels) if label != -100)
    return ids[:start], ids[start:]


def test_label_is_the_models_own_word_token(tok, kind):
    """The collator trains each label as the tokenizer writes it after the prompt in one text: the model's
    own word tokens, after a prompt that ends with the template's last word, not with a lone space."""
    mark = WORD_START[kind]
    collator = SoftPromptDataCollator(tok)
    for text in TEXTS:
        batch = collator([_row(text, "complaint"), _row(text, "no complaint")])
        prompt, target = _split(batch, 0)
        assert _tokens(tok, target) == [f"{mark}complaint", tok.eos_token]
        assert _tokens(tok, _split(batch, 1)[1]) == [f"{mark}no", f"{mark}complaint", tok.eos_token]
        assert _tokens(tok, prompt)[-1] == f"{mark}:"
        assert _split(batch, 1)[0] == prompt  # every label continues the same prompt ids
        # Exactly the tokenizer's own tokenization of the joined text, after every text.
        for label in LABELS:
            joined = tok(PromptTemplate().render(text) + label)["input_ids"]
            assert prompt + PromptTemplate().encode_target(tok, label)[:-1] == joined
        # Generated label ids decode to text that names the label.
        assert match_label(tok.decode(target, skip_special_tokens=True).strip(), LABELS) == "complaint"


def test_separate_keeps_the_seed_tokenization(tok):
    """label_tokenization='separate': the rendered prompt (closing space included) and the label tokenized apart,
    as the seed guide and older runs did."""
    text = TEXTS[0]
    batch = SoftPromptDataCollator(tok, label_tokenization="separate")([_row(text, "complaint")])
    prompt, target = _split(batch)
    assert prompt == tok(PromptTemplate().render(text))["input_ids"]
    assert target == tok("complaint", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]


@pytest.fixture(scope="module")
def trained(tok, tmp_path_factory):
    """A tiny Llama (saved, so that a saved adapter finds it) with prompt tuning, trained one step with the
    collator's default label tokenization."""
    torch.manual_seed(0)
    config = model_config("llama", len(tok))
    config.update(
        {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    )
    base_dir = tmp_path_factory.mktemp("base")
    AutoModelForCausalLM.from_config(config).save_pretrained(base_dir)
    tok.save_pretrained(base_dir)
    model = build_soft_prompt_model(
        AutoModelForCausalLM.from_pretrained(base_dir),
        method="prompt_tuning",
        prompt_tuning_init="RANDOM",
        num_virtual_tokens=4,
    )
    args = TrainingArguments(
        output_dir=str(tmp_path_factory.mktemp("train")),
        per_device_train_batch_size=4,
        max_steps=1,
        learning_rate=3e-2,
        remove_unused_columns=False,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(labelled_rows(4)),
        data_collator=SoftPromptDataCollator(tok),
    )
    trainer.train()
    return model.eval()


@torch.no_grad()
def _log_likelihood(model, input_ids: list[int], n_prompt: int) -> float:
    """Sum of the log-probabilities of input_ids[n_prompt:] after input_ids[:n_prompt] (full forward)."""
    ids = torch.tensor([input_ids])
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -len(input_ids) :]
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    return sum(float(log_probs[p - 1, input_ids[p]]) for p in range(n_prompt, len(input_ids)))


def test_rank_and_generation_score_the_collators_targets(tok, trained):
    """Rank scoring scores, and greedy decoding continues, the ids the collator trains on: the tokenizer's own
    tokenization of prompt + label written as one text."""
    collator = SoftPromptDataCollator(tok)
    texts = TEXTS[:4]
    scores = rank_labels(trained, tok, texts, LABELS, show_progress=False)
    for text, row_scores in zip(texts, scores, strict=True):
        prompt = tok(PromptTemplate().render(text).rstrip())["input_ids"]
        for label in LABELS:
            joined = tok(PromptTemplate().render(text) + label)["input_ids"] + [tok.eos_token_id]
            assert _split(collator([_row(text, label)])) == (prompt, joined[len(prompt) :])
            assert row_scores[label] == pytest.approx(_log_likelihood(trained, joined, len(prompt)), abs=1e-4)
    # Greedy decoding continues that prompt: its first token is the argmax after those ids.
    generated = generate_label_ids(trained, tok, texts, max_new_tokens=1, show_progress=False)
    for text, ids in zip(texts, generated, strict=True):
        prompt = tok(PromptTemplate().render(text).rstrip())["input_ids"]
        with torch.no_grad():
            logits = trained(input_ids=torch.tensor([prompt])).logits[0, -1]
        assert ids == [int(logits.argmax())]


def test_metrics_and_predict_agree_on_a_saved_adapter(tok, trained, tmp_path):
    """GenerationMetrics (generate and rank) and predict from the saved folder use the boundary of training;
    a folder saved before the choice existed (no key) is predicted with the old, separate one."""
    rows = [_row(text, LABELS[i % 2]) for i, text in enumerate(TEXTS)]
    folder = save_adapter(trained, tmp_path / "adapter", tokenizer=tok, labels=LABELS)
    settings = json.loads((folder / "softprompt_hf.json").read_text())
    assert settings["label_tokenization"] == "joint"
    for mode in ("generate", "rank"):
        metrics = GenerationMetrics(tok, LABELS, rows, mode=mode)
        metrics.evaluate(trained)
        predicted = predict(folder, TEXTS, mode=mode, device="cpu")
        assert [p.output for p in predicted] == [p.output for p in metrics.last_predictions]
        if mode == "rank":
            for ours, theirs in zip(predicted, metrics.last_predictions, strict=True):
                assert ours.scores == pytest.approx(theirs.scores, abs=1e-4)
            # The scores are those of the joint ids (the model's own word tokens).
            prompt, target = _split(SoftPromptDataCollator(tok)([_row(TEXTS[0], "complaint")]))
            expected = _log_likelihood(trained, prompt + target, len(prompt))
            assert predicted[0].scores["complaint"] == pytest.approx(expected, abs=1e-4)
    del settings["label_tokenization"]
    (folder / "softprompt_hf.json").write_text(json.dumps(settings))
    old = GenerationMetrics(tok, LABELS, rows, mode="rank", label_tokenization="separate")
    old.evaluate(trained)
    predicted = predict(folder, TEXTS, mode="rank", device="cpu")
    for ours, theirs in zip(predicted, old.last_predictions, strict=True):
        assert ours.scores == pytest.approx(theirs.scores, abs=1e-4)
    joint = predict(folder, TEXTS[:1], mode="rank", device="cpu", label_tokenization="joint")
    assert joint[0].scores["complaint"] != pytest.approx(predicted[0].scores["complaint"], abs=1e-4)


def test_card_snippets_continue_the_prompt_as_training(tok, trained):
    """The card's snippets build the prompt the collator trains on, and allow the joint ids' length."""
    card = render_model_card(
        model_card_inputs(trained, base_model="org/base", labels=LABELS, text_column="Tweet text")
    ).text
    assert "prompts = ['{text_column} : {text} Label :'.format(text_column='Tweet text', text=text)" in card
    lines = card.splitlines()
    snippet = [next(line for line in lines if line.startswith(start)) for start in ("tail = ", "max_new_tokens = ")]
    namespace = {"tokenizer": tok, "labels": LABELS}
    exec("\n".join(snippet), namespace)
    assert namespace["max_new_tokens"] == max(len(PromptTemplate().encode_target(tok, label)) for label in LABELS)
    separate = render_model_card(
        model_card_inputs(trained, base_model="org/base", labels=LABELS, label_tokenization="separate")
    ).text
    assert "prompts = ['{text_column} : {text} Label : '.format(" in separate and "tail = " not in separate


def merging_tokenizer() -> PreTrainedTokenizerFast:
    """A BPE over the whole text (no pre-tokenizer, spaces written as '▁', as Gemma's own tokenizer.json does)
    whose first merge joins ':' with the space after it: the template's tail cannot end where the label starts."""
    text = "Tweet text : @Acme hi Label : no complaint"
    alphabet = sorted(set(text.replace(" ", "▁")))
    vocab = {token: i for i, token in enumerate(["<pad>", "<eos>", *alphabet, ":▁"])}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[(":", "▁")]))
    backend.normalizer = normalizers.Replace(" ", "▁")
    backend.decoder = decoders.Replace("▁", " ")
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<pad>")


def test_a_tokenizer_that_merges_into_the_label_falls_back_and_says_so(caplog):
    tok = merging_tokenizer()
    template = PromptTemplate()
    hf_logging.enable_propagation()
    try:
        with caplog.at_level(logging.WARNING, logger="softprompt_hf.data.prompt"):
            target = template.encode_target(tok, "no complaint")
            again = template.encode_target(tok, "no complaint")
    finally:
        hf_logging.disable_propagation()
    # Its own tokens with the closing space, after every prompt; said once.
    assert target == again == tok(" no complaint", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert _tokens(tok, target)[0] == "▁"
    assert sum("merges the end of the prompt template" in record.getMessage() for record in caplog.records) == 1
    batch = SoftPromptDataCollator(tok)([_row("@Acme hi", "no complaint")])
    prompt, collated = _split(batch)
    assert collated == target and prompt == template.encode(tok, "@Acme hi")
    assert _tokens(tok, prompt)[-1] == ":"


def test_the_embedded_model_keeps_the_boundary_it_was_pretrained_with(tmp_path):
    """The embedded model was pretrained with prompt and answer tokenized apart: the quick start and the recipes
    default to that for it, and to the tokenizer's joint boundary for any other model."""
    from softprompt_hf.embedded import EMBEDDED_MODEL_PATH, label_tokenization_for
    from softprompt_hf.training.arguments import DataArguments

    assert label_tokenization_for(EMBEDDED_MODEL_PATH) == "separate"
    assert label_tokenization_for(tmp_path) == "joint" and label_tokenization_for("google/gemma-3-270m") == "joint"
    assert DataArguments().label_tokenization is None  # resolved by parse_recipe_args for the run's base model
    with pytest.raises(ValueError, match="label_tokenization='spaced'"):
        DataArguments(label_tokenization="spaced")
