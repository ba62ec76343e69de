"""softprompt_hf.data.chat: prompts in an instruct model's chat template, targets ending with its end-of-turn token.

Three chat formats are built in the session on the tiny tokenizer: ChatML (SmolLM2, Qwen), Gemma's (which writes
``{{ bos_token }}``, here on a tokenizer that also adds BOS by itself) and Llama 3's.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from chat_models import CHATML, FORMATS, SYSTEM, TEXTS, USER, answering_model, chat_tokenizer
from conftest import METHODS, build_tokenizer, labelled_rows, method_options, tiny_soft_prompt_model
from datasets import Dataset
from trained_adapters import LABELS, one_thread
from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

from softprompt_hf import (
    ChatTemplate,
    GenerationMetrics,
    SoftPromptDataCollator,
    TextGenerationMetrics,
    build_soft_prompt_model,
    constrained_labels,
    generate_labels,
    generate_texts,
    predict,
    rank_labels,
    save_adapter,
)
from softprompt_hf.adapter.card import ModelCardCallback
from softprompt_hf.adapter.saving import INFERENCE_CONFIG_NAME
from softprompt_hf.cli import main as cli_main
from softprompt_hf.inference.labels import generate_label_ids

pytestmark = pytest.mark.usefixtures(one_thread.__name__)


def messages(text: str, answer: str | None = None) -> list[dict[str, str]]:
    turns = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER.format(text=text)}]
    return turns + ([{"role": "assistant", "content": answer}] if answer is not None else [])


def chat_ids(tokenizer, conversation, **options) -> list[int]:
    return list(tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=False, **options))


# -- Ids: the prompt, the target, one BOS -------------------------------------------------------------------------
@pytest.mark.parametrize("name", FORMATS)
def test_prompt_ids_are_the_chat_templates_own_with_one_bos(name):
    tokenizer = chat_tokenizer(name)
    chat = ChatTemplate(user=USER, system=SYSTEM)
    for text in TEXTS[:3]:
        ids = chat.encode(tokenizer, text)
        assert ids == chat_ids(tokenizer, messages(text), add_generation_prompt=True)
        bos = FORMATS[name][3]
        if bos is None:
            assert tokenizer.bos_token_id not in ids
        else:
            assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
    if name == "gemma":
        # Negative control: the rendered text through a plain tokenizer call gets a second BOS.
        rendered = tokenizer.apply_chat_template(messages(TEXTS[0]), add_generation_prompt=True, tokenize=False)
        assert tokenizer(rendered)["input_ids"][:2] == [tokenizer.bos_token_id] * 2


@pytest.mark.parametrize("name", FORMATS)
def test_target_is_the_assistant_message_up_to_the_end_of_turn_token(name):
    tokenizer = chat_tokenizer(name)
    chat = ChatTemplate(user=USER, system=SYSTEM)
    end = tokenizer.convert_tokens_to_ids(FORMATS[name][2])
    assert chat.end_of_turn(tokenizer) == FORMATS[name][2]
    assert chat.stop_ids(tokenizer) == (end, tokenizer.eos_token_id)
    for label in LABELS:
        target = chat.encode_target(tokenizer, label)
        assert target[-1] == end and end not in target[:-1]
        assert tokenizer.decode(target[:-1]) == label
        for text in TEXTS[:3]:
            # Prompt + target: the conversation the chat template writes, cut after the end-of-turn token.
            conversation = chat_ids(tokenizer, messages(text, label))
            prompt = chat.encode(tokenizer, text)
            assert conversation[: len(prompt) + len(target)] == prompt + target
            assert tokenizer.decode(conversation[len(prompt) + len(target) :]).strip() == ""


def test_an_end_of_turn_token_that_is_eos_is_one_stop_token():
    tokenizer = chat_tokenizer("chatml")
    tokenizer.eos_token = "<|im_end|>"  # as SmolLM2-Instruct's
    assert ChatTemplate().stop_ids(tokenizer) == (tokenizer.convert_tokens_to_ids("<|im_end|>"),)


# -- Training ids: the collator -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", FORMATS)
def test_collator_rows_are_inference_prompt_then_target_with_loss_on_the_target_only(name):
    tokenizer = chat_tokenizer(name)
    chat = ChatTemplate(user=USER, system=SYSTEM)
    rows = labelled_rows(4)
    collator = SoftPromptDataCollator(tokenizer, template=chat)  # {text} reads the collator's "Tweet text"
    batch = collator(rows)
    end = tokenizer.convert_tokens_to_ids(FORMATS[name][2])
    for row, ids, mask, labels in zip(rows, batch["input_ids"], batch["attention_mask"], batch["labels"], strict=True):
        length = int(mask.sum())
        ids, labels = ids[:length].tolist(), labels[:length].tolist()
        prompt = chat.encode(tokenizer, row["Tweet text"])  # what every decoder feeds the model
        target = chat.encode_target(tokenizer, row["text_label"])
        assert ids == prompt + target
        assert ids == chat_ids(tokenizer, messages(row["Tweet text"], row["text_label"]))[: len(ids)]
        assert labels == [-100] * len(prompt) + target
        assert labels[-1] == end
        if FORMATS[name][3] is not None:
            assert ids.count(tokenizer.bos_token_id) == 1


@pytest.mark.parametrize("side", ["right", "left"])
def test_max_length_cuts_the_text_never_the_chat_template(side):
    tokenizer = chat_tokenizer("gemma")
    tokenizer.truncation_side = side
    chat = ChatTemplate(user=USER, system=SYSTEM)
    text = "@Acme " + "my parcel never arrived and nobody answers " * 3
    full = chat.encode(tokenizer, text)
    budget = len(full) - 6
    cut = chat.encode(tokenizer, text, max_tokens=budget)
    assert len(cut) <= budget
    # The prompt of a shorter text, cut from its end (or start): the system message and the chat template whole.
    shorter = [text[:k] if side == "right" else text[-k:] for k in range(1, len(text))]
    assert any(chat.encode(tokenizer, kept) == cut for kept in shorter)
    rendered = tokenizer.decode(cut)
    assert SYSTEM in rendered and rendered.endswith("<end_of_turn>\n<start_of_turn>model\n")
    row = {"Tweet text": text, "text_label": "complaint"}
    target = chat.encode_target(tokenizer, "complaint")
    batch = SoftPromptDataCollator(tokenizer, template=chat, max_length=budget + len(target))([row])
    assert batch["input_ids"][0].tolist() == cut + target
    with pytest.raises(ValueError, match="chat template's prompt with an empty"):
        chat.encode(tokenizer, text, max_tokens=len(chat.encode(tokenizer, "")) - 1)


# -- Decoding stops at the end-of-turn token ----------------------------------------------------------------------
@pytest.mark.parametrize("name", FORMATS)
@pytest.mark.parametrize("method", METHODS)
def test_every_decoder_stops_at_the_end_of_turn_token(name, method):
    tokenizer = chat_tokenizer(name)
    chat = ChatTemplate(user=USER, system=SYSTEM)
    base = answering_model(tokenizer, chat, "no complaint")
    target = chat.encode_target(tokenizer, "no complaint")
    # Negative control: the model goes on after the end-of-turn token; only EOS would stop it otherwise.
    prompt = torch.tensor([chat.encode(tokenizer, TEXTS[0])])
    raw = base.generate(prompt, max_new_tokens=len(target) + 3, eos_token_id=tokenizer.eos_token_id, do_sample=False)
    assert raw[0, prompt.shape[1] :].tolist() == target + [tokenizer.convert_tokens_to_ids("x")] * 3
    model = build_soft_prompt_model(base, **method_options(method, prompt_tuning_init="RANDOM", num_virtual_tokens=4))
    for options in ({}, {"use_cache": False}, {"use_generate": True}):
        ids = generate_label_ids(
            model, tokenizer, TEXTS, template=chat, max_new_tokens=20, batch_size=4, show_progress=False, **options
        )
        assert ids == [target] * len(TEXTS), options
    labels = generate_labels(model, tokenizer, TEXTS, LABELS, template=chat, show_progress=False)
    assert labels == ["no complaint"] * len(TEXTS)
    texts = generate_texts(model, tokenizer, TEXTS[:3], template=chat, max_new_tokens=20, show_progress=False)
    assert texts == ["no complaint"] * 3
    labels = constrained_labels(model, tokenizer, TEXTS[:3], LABELS, template=chat, show_progress=False)
    assert labels == ["no complaint"] * 3


def test_rank_labels_scores_each_label_and_its_end_of_turn_token():
    tokenizer = chat_tokenizer("chatml")
    chat = ChatTemplate(user=USER)
    model = tiny_soft_prompt_model(tokenizer, "llama", "prompt_tuning")
    scores = rank_labels(model, tokenizer, TEXTS[:4], LABELS, template=chat, batch_size=3, show_progress=False)
    model.eval()
    with torch.no_grad():
        for text, row in zip(TEXTS[:4], scores, strict=True):
            prompt = chat.encode(tokenizer, text)
            for label in LABELS:
                target = chat.encode_target(tokenizer, label)
                assert target[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
                ids = torch.tensor([prompt + target])
                logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -len(target) - 1 : -1]
                expected = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(target)[:, None]).sum()
                assert row[label] == pytest.approx(float(expected), abs=1e-4)


@pytest.mark.parametrize("name", ["chatml", "gemma"])
@pytest.mark.parametrize("method", ["prompt_tuning", "prefix_tuning"])
def test_batched_decoding_equals_one_by_one_with_a_chat_template(name, method):
    tokenizer = chat_tokenizer(name)
    chat = ChatTemplate(user=USER, system=SYSTEM)
    model = tiny_soft_prompt_model(tokenizer, "llama", method)
    options = {"template": chat, "show_progress": False}
    alone = [generate_labels(model, tokenizer, [t], LABELS, batch_size=1, **options)[0] for t in TEXTS]
    assert generate_labels(model, tokenizer, TEXTS, LABELS, batch_size=4, **options) == alone
    alone = [generate_texts(model, tokenizer, [t], max_new_tokens=6, batch_size=1, **options)[0] for t in TEXTS]
    assert generate_texts(model, tokenizer, TEXTS, max_new_tokens=6, batch_size=4, **options) == alone
    assert (
        generate_texts(model, tokenizer, TEXTS, max_new_tokens=6, batch_size=4, use_generate=True, **options) == alone
    )


# -- The metrics objects and the stock Trainer --------------------------------------------------------------------
def test_metrics_objects_score_what_the_chat_model_answers():
    tokenizer = chat_tokenizer("llama3")
    chat = ChatTemplate(user=USER, system=SYSTEM)
    model = build_soft_prompt_model(
        answering_model(tokenizer, chat, "complaint"),
        method="prompt_tuning",
        prompt_tuning_init="RANDOM",
        num_virtual_tokens=4,
    )
    rows = labelled_rows(6)
    metrics = GenerationMetrics(tokenizer, LABELS, rows, template=chat, model=model, batch_size=4)
    result = metrics.evaluate(model)
    complaints = sum(row["text_label"] == "complaint" for row in rows)
    assert result["accuracy"] == complaints / len(rows) and result["invalid_rate"] == 0
    assert {p.output for p in metrics.last_predictions} == {"complaint"}
    text_metrics = TextGenerationMetrics(
        tokenizer, rows, template=chat, target_column="text_label", metrics="exact_match", model=model
    )
    result = text_metrics.evaluate(model)
    assert result["exact_match"] == complaints / len(rows)
    # gen_len: the answer's tokens, its end-of-turn token not counted.
    assert result["gen_len"] == len(chat.encode_target(tokenizer, "complaint")) - 1


def test_the_stock_trainer_trains_and_evaluates_with_a_chat_template(tmp_path):
    tokenizer = chat_tokenizer("chatml")
    chat = ChatTemplate(user=USER)
    model = tiny_soft_prompt_model(tokenizer, "llama", "prompt_tuning")
    before = model.prompt_encoder["default"].embedding.weight.detach().clone()
    rows = labelled_rows(8)
    metrics = GenerationMetrics(tokenizer, LABELS, rows[:4], template=chat, mode="rank")
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=2,
        learning_rate=3e-2,
        remove_unused_columns=False,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        eval_dataset=Dataset.from_list(rows[:4]),
        data_collator=SoftPromptDataCollator(tokenizer, template=chat),
        **metrics.trainer_kwargs(),
    )
    trainer.train()
    assert not torch.equal(model.prompt_encoder["default"].embedding.weight, before)
    results = trainer.evaluate()
    assert {"eval_loss", "eval_accuracy", "eval_f1"} <= results.keys()
    # The card's data (what HubPushCallback saves with) records the chat template; the saved folder predicts with it.
    card = ModelCardCallback.of(trainer, base_model="org/tiny-chat", metrics=metrics).card_data(model)
    assert (card.template, card.chat) == (USER, {"user": USER, "system": None})
    folder = save_adapter(model, tmp_path / "adapter", tokenizer=tokenizer, card=card)
    assert json.loads((folder / INFERENCE_CONFIG_NAME).read_text())["chat"] == {"user": USER, "system": None}


# -- Bad input ----------------------------------------------------------------------------------------------------
def test_a_tokenizer_without_a_chat_template_names_the_model_and_the_plain_prompt_instead():
    tokenizer = build_tokenizer()
    tokenizer.name_or_path = "google/gemma-3-270m"
    with pytest.raises(ValueError, match=r"'google/gemma-3-270m' has no chat template.*PromptTemplate"):
        ChatTemplate().encode(tokenizer, "hi")
    with pytest.raises(ValueError, match="has no chat template"):
        SoftPromptDataCollator(tokenizer, template=ChatTemplate())
    with pytest.raises(ValueError, match="has no chat template"):
        GenerationMetrics(tokenizer, LABELS, labelled_rows(2), template=ChatTemplate())


def test_a_user_message_field_that_no_row_holds_is_named():
    tokenizer = chat_tokenizer("chatml")
    chat = ChatTemplate(user="{title}: {text}")
    collator = SoftPromptDataCollator(tokenizer, template=chat)
    with pytest.raises(ValueError, match=r"reads the column\(s\) \['title'\]"):
        collator(labelled_rows(2))
    with pytest.raises(ValueError, match=r"user message '\{title\}: \{text\}' reads the column\(s\) \['title'\]"):
        GenerationMetrics(tokenizer, LABELS, labelled_rows(2), template=chat)
    with pytest.raises(ValueError, match="no '{text}' field"):
        ChatTemplate(user="Is this a complaint?")


def test_a_chat_template_whose_assistant_turn_is_not_at_the_end_is_refused():
    tokenizer = chat_tokenizer("chatml")
    tokenizer.chat_template = (  # the assistant's messages first, then the others
        "{% for m in messages if m['role'] == 'assistant' %}<|im_start|>assistant\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% for m in messages if m['role'] != 'assistant' %}<|im_start|>{{ m['role'] }}\n"
        "{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    with pytest.raises(ValueError, match="does not put the assistant turn at the end"):
        ChatTemplate().encode(tokenizer, "hi")
    tokenizer.chat_template = CHATML.replace("{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}", "")
    with pytest.raises(ValueError, match="between its generation prompt and the assistant message"):
        SoftPromptDataCollator(tokenizer, template=ChatTemplate())
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    with pytest.raises(ValueError, match="holds no special token"):
        ChatTemplate().encode_target(tokenizer, "complaint")


# -- Save and predict ---------------------------------------------------------------------------------------------
def test_a_saved_adapter_predicts_with_its_chat_template(tmp_path):
    tokenizer = chat_tokenizer("gemma")
    chat = ChatTemplate(user=USER, system=SYSTEM, text_column="Tweet text")
    answering_model(tokenizer, chat, "no complaint").save_pretrained(tmp_path / "base")
    model = build_soft_prompt_model(
        AutoModelForCausalLM.from_pretrained(tmp_path / "base"),
        method="prompt_tuning",
        prompt_tuning_init="RANDOM",
        num_virtual_tokens=4,
    )
    folder = save_adapter(
        model, tmp_path / "adapter", tokenizer=tokenizer, labels=LABELS, template=chat, text_column="Tweet text"
    )
    settings = json.loads((folder / INFERENCE_CONFIG_NAME).read_text())
    assert settings["chat"] == {"user": USER, "system": SYSTEM}
    predictions = predict(str(folder), TEXTS[:3], device="cpu")
    assert [(p.output, p.predicted) for p in predictions] == [("no complaint", "no complaint")] * 3
    assert [p.predicted for p in predict(str(folder), TEXTS[:3], mode="rank", device="cpu")] == ["no complaint"] * 3
    texts = predict(str(folder), TEXTS[:2], task="text", max_new_tokens=20, device="cpu")
    answer = len(chat.encode_target(tokenizer, "no complaint")) - 1  # its end-of-turn token not counted
    assert [(p.output, p.tokens) for p in texts] == [("no complaint", answer)] * 2
    output = tmp_path / "cli.jsonl"
    assert cli_main(["predict", str(folder), "--text", TEXTS[0], "--device", "cpu", "--output", str(output)]) == 0
    assert json.loads(output.read_text())["predicted"] == "no complaint"
    # Negative control: the same adapter prompted with a plain template does not answer.
    plain = predict(str(folder), TEXTS[:3], template="{text}", device="cpu")
    assert all(p.predicted is None for p in plain)
    # An in-memory model predicts with a ChatTemplate passed in.
    in_memory = predict(model, TEXTS[:3], labels=LABELS, template=chat, tokenizer=tokenizer)
    assert [p.predicted for p in in_memory] == ["no complaint"] * 3
    # The card's usage snippet builds the same ChatTemplate, and runs as written on the folder.
    card = (folder / "README.md").read_text()
    assert "the base model's chat template" in card and "end-of-turn token" in card
    (snippet,) = re.findall(r"```python\n(.*?)```", card, re.DOTALL)
    assert f"ChatTemplate(user={USER!r}, system={SYSTEM!r}, text_column='Tweet text')" in snippet
    namespace: dict = {}
    exec(compile(snippet.replace("'path/to/adapter'", repr(str(folder))), "card-snippet", "exec"), namespace)
    assert namespace["answers"] == ["no complaint"] * len(namespace["texts"])
