from __future__ import annotations

import pytest
import torch
from conftest import labelled_rows
from transformers import PreTrainedTokenizer

from softprompt_hf import SoftPromptDataCollator
from softprompt_hf.data.prompt import DEFAULT_TEMPLATE, PromptTemplate

ROW = {"ID": 7, "Tweet text": "@Acme my order never arrived", "Label": 1, "text_label": "no complaint"}


def supervised_pairs(input_ids: list[int], labels: list[int]) -> list[tuple[int, int]]:
    """(position whose logits are trained, token it must predict), after the causal LM's label shift."""
    return [(t, labels[t + 1]) for t in range(len(labels) - 1) if labels[t + 1] != -100]


def seed_preprocess(examples, tokenizer, text_column="Tweet text", label_column="text_label", max_length=64):
    """The seed guide's preprocess_function (../shared/seed/), reproduced for the regression test."""
    batch_size = len(examples[text_column])
    inputs = [f"{text_column} : {x} Label : " for x in examples[text_column]]
    targets = [str(x) for x in examples[label_column]]
    model_inputs = tokenizer(inputs)
    labels = tokenizer(targets)
    for i in range(batch_size):
        sample_input_ids = model_inputs["input_ids"][i]
        label_input_ids = labels["input_ids"][i]
        model_inputs["input_ids"][i] = [tokenizer.pad_token_id] * (
            max_length - len(sample_input_ids)
        ) + sample_input_ids
        model_inputs["attention_mask"][i] = [0] * (max_length - len(sample_input_ids)) + model_inputs["attention_mask"][
            i
        ]
        labels["input_ids"][i] = [-100] * (max_length - len(label_input_ids)) + label_input_ids
        model_inputs["input_ids"][i] = model_inputs["input_ids"][i][:max_length]
        model_inputs["attention_mask"][i] = model_inputs["attention_mask"][i][:max_length]
        labels["input_ids"][i] = labels["input_ids"][i][:max_length]
    model_inputs["labels"] = labels["input_ids"]
    return model_inputs


def test_row_is_prompt_then_target_then_eos(tokenizer):
    batch = SoftPromptDataCollator(tokenizer)([ROW])
    # The template's closing space goes with the label, as the tokenizer writes the joined text.
    prompt = tokenizer("Tweet text : @Acme my order never arrived Label :")["input_ids"]
    joined = tokenizer("Tweet text : @Acme my order never arrived Label : no complaint")["input_ids"]
    assert joined[: len(prompt)] == prompt
    target = joined[len(prompt) :]
    assert len(target) >= 2, "the test needs a multi-token label"
    expected = prompt + target + [tokenizer.eos_token_id]
    assert batch["input_ids"][0].tolist() == expected
    assert batch["attention_mask"][0].tolist() == [1] * len(expected)
    assert batch["labels"][0].tolist() == [-100] * len(prompt) + target + [tokenizer.eos_token_id]


def test_first_target_token_is_predicted_from_last_prompt_position(tokenizer):
    batch = SoftPromptDataCollator(tokenizer)([ROW])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    n_prompt = len(PromptTemplate().encode(tokenizer, ROW["Tweet text"]))
    target = PromptTemplate().encode_target(tokenizer, "no complaint")
    pairs = supervised_pairs(ids, labels)
    # The last prompt position (where greedy generation reads its first token) learns the first
    # target token, and every later target token is learned with the previous one as input.
    assert pairs == [(n_prompt - 1 + i, tok) for i, tok in enumerate(target)]
    assert [ids[pos] for pos, _ in pairs[1:]] == target[:-1]


def test_seed_preprocessing_misses_first_position_and_multi_token_labels(tokenizer):
    """Regression against the seed guide: it never supervises the first generated position and
    never shows the label tokens as inputs; ours does both."""
    rows = [ROW, {**ROW, "text_label": "complaint"}]
    seed = seed_preprocess({k: [r[k] for r in rows] for k in ROW}, tokenizer)
    ours = SoftPromptDataCollator(tokenizer)(rows)
    for i, row in enumerate(rows):
        target = PromptTemplate().encode_target(tokenizer, row["text_label"])[:-1]
        seed_ids, seed_labels = seed["input_ids"][i], seed["labels"][i]
        last_prompt_pos = len(seed_ids) - 1  # the seed left-pads, so the prompt ends the row
        seed_pairs = supervised_pairs(seed_ids, seed_labels)
        assert all(pos != last_prompt_pos for pos, _ in seed_pairs)
        # The seed's label ids sit under prompt tokens: they are predicted from the prompt's tail.
        assert all(seed_ids[pos + 1] != tok for pos, tok in seed_pairs)
        assert len(seed_pairs) < len(target) + 1  # the first label token and the EOS are never learned
        ids = [t for t, m in zip(ours["input_ids"][i].tolist(), ours["attention_mask"][i].tolist(), strict=True) if m]
        n_prompt = len(ids) - len(target) - 1
        our_pairs = supervised_pairs(ids, ours["labels"][i].tolist()[: len(ids)])
        assert our_pairs[0] == (n_prompt - 1, target[0])
        assert [tok for _, tok in our_pairs] == [*target, tokenizer.eos_token_id]
        assert ids[n_prompt : n_prompt + len(target)] == target


def test_template_ending_in_space_tokenizes_like_inference(tokenizer):
    """label_tokenization='separate' (the seed's): the prompt, closing space included, is tokenized on its own,
    as inference tokenizes it, never together with the label."""
    assert DEFAULT_TEMPLATE.endswith(" ")
    text = ROW["Tweet text"]
    prompt = PromptTemplate().render(text)
    inference_ids = tokenizer(prompt)["input_ids"]
    joint_ids = tokenizer(prompt + ROW["text_label"])["input_ids"]
    # Tokenizing the rendered prompt and the target together merges the trailing space into the label's
    # first token: the premise of this test.
    assert joint_ids[: len(inference_ids)] != inference_ids
    batch = SoftPromptDataCollator(tokenizer, label_tokenization="separate")([ROW])
    assert batch["input_ids"][0].tolist()[: len(inference_ids)] == inference_ids
    assert inference_ids == PromptTemplate(label_tokenization="separate").encode(tokenizer, text)
    # The default ('joint') gives that space to the label; its prompt is what inference tokenizes too.
    joint_prompt = PromptTemplate().encode(tokenizer, text)
    assert joint_prompt == tokenizer(prompt.rstrip())["input_ids"]
    assert SoftPromptDataCollator(tokenizer)([ROW])["input_ids"][0].tolist() == joint_ids + [tokenizer.eos_token_id]


def test_bos_tokenizer_keeps_bos_on_prompt_only(bos_tokenizer):
    batch = SoftPromptDataCollator(bos_tokenizer)([ROW])
    ids = batch["input_ids"][0].tolist()
    assert ids[0] == bos_tokenizer.bos_token_id
    assert ids.count(bos_tokenizer.bos_token_id) == 1
    prompt = bos_tokenizer(PromptTemplate().prompt_text(ROW["Tweet text"]))["input_ids"]
    joined = bos_tokenizer(PromptTemplate().render(ROW["Tweet text"]) + "no complaint")["input_ids"]
    assert ids == joined + [bos_tokenizer.eos_token_id]
    assert ids[: len(prompt)] == prompt


def test_custom_template_and_columns(tokenizer):
    collator = SoftPromptDataCollator(
        tokenizer, text_column="review", target_column="sentiment", template="Review: {text}\nSentiment:"
    )
    batch = collator([{"review": "great phone", "sentiment": "positive"}])
    prompt = tokenizer("Review: great phone\nSentiment:")["input_ids"]
    assert batch["input_ids"][0].tolist()[: len(prompt)] == prompt
    assert batch["labels"][0].tolist()[len(prompt) :] == tokenizer("positive", add_special_tokens=False)[
        "input_ids"
    ] + [tokenizer.eos_token_id]


def test_pads_right_to_longest_row_whatever_the_tokenizer_says(tokenizer):
    tokenizer.padding_side = "left"
    rows = [ROW, {**ROW, "Tweet text": "@Acme " + "very " * 12 + "late", "text_label": "complaint"}]
    collator = SoftPromptDataCollator(tokenizer)
    singles = [collator([r]) for r in rows]
    batch = collator(rows)
    lengths = [s["input_ids"].shape[1] for s in singles]
    assert batch["input_ids"].shape == (2, max(lengths))
    for i, single in enumerate(singles):
        n = lengths[i]
        for key in ("input_ids", "attention_mask", "labels"):
            assert batch[key][i, :n].tolist() == single[key][0].tolist()
        assert batch["input_ids"][i, n:].tolist() == [tokenizer.pad_token_id] * (max(lengths) - n)
        assert batch["attention_mask"][i, n:].tolist() == [0] * (max(lengths) - n)
        assert batch["labels"][i, n:].tolist() == [-100] * (max(lengths) - n)
    assert all(v.dtype == torch.long for v in batch.values())


def test_pad_to_multiple_of(tokenizer):
    batch = SoftPromptDataCollator(tokenizer, pad_to_multiple_of=16)(labelled_rows(4))
    unpadded = SoftPromptDataCollator(tokenizer)(labelled_rows(4))["input_ids"].shape[1]
    assert batch["input_ids"].shape[1] == -(-unpadded // 16) * 16
    assert batch["input_ids"].shape[1] % 16 == 0


@pytest.mark.parametrize("side", ["right", "left"])
def test_truncation_removes_text_tokens_only(tokenizer, side):
    tokenizer.truncation_side = side
    words = [f"w{i}" for i in range(40)]
    row = {**ROW, "Tweet text": "@Acme " + " ".join(words)}
    full = SoftPromptDataCollator(tokenizer)([row])["input_ids"].shape[1]
    max_length = full - 25
    batch = SoftPromptDataCollator(tokenizer, max_length=max_length)([row])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    target = PromptTemplate().encode_target(tokenizer, "no complaint")
    assert len(ids) <= max_length
    assert ids[-len(target) :] == target and labels[-len(target) :] == target
    prompt = tokenizer.decode(ids[: -len(target)])
    assert prompt.startswith("Tweet text : ") and prompt.endswith(" Label :")
    kept = prompt[len("Tweet text : ") : -len(" Label :")]
    assert len(kept) < len(row["Tweet text"])
    if side == "right":
        assert row["Tweet text"].startswith(kept) and "w0" in kept
    else:
        assert row["Tweet text"].endswith(kept) and "w39" in kept
    # Inference truncates the same text to the same prompt tokens.
    assert ids[: -len(target)] == PromptTemplate().encode(tokenizer, row["Tweet text"], max_length - len(target))


def test_truncation_leaves_short_rows_alone(tokenizer):
    batch = SoftPromptDataCollator(tokenizer, max_length=512)([ROW])
    assert batch["input_ids"].tolist() == SoftPromptDataCollator(tokenizer)([ROW])["input_ids"].tolist()


def test_max_length_too_small_for_template(tokenizer):
    n_target = len(PromptTemplate().encode_target(tokenizer, "no complaint"))
    n_template = len(PromptTemplate().encode(tokenizer, ""))
    with pytest.raises(ValueError, match=f"template alone takes {n_template} tokens"):
        SoftPromptDataCollator(tokenizer, max_length=n_target + n_template - 1)([ROW])
    with pytest.raises(ValueError, match="leaves no room for the prompt"):
        SoftPromptDataCollator(tokenizer, max_length=n_target)([ROW])


def test_pretokenized_rows_are_padded_not_changed(tokenizer):
    rows = [
        {"input_ids": [5, 6, 7, 2], "labels": [-100, -100, 7, 2]},
        {"input_ids": torch.tensor([5, 6]), "labels": torch.tensor([-100, 6]), "attention_mask": [1, 1]},
    ]
    batch = SoftPromptDataCollator(tokenizer)(rows)
    pad = tokenizer.pad_token_id
    assert batch["input_ids"].tolist() == [[5, 6, 7, 2], [5, 6, pad, pad]]
    assert batch["labels"].tolist() == [[-100, -100, 7, 2], [-100, 6, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]


def test_pretokenized_errors(tokenizer):
    collator = SoftPromptDataCollator(tokenizer)
    with pytest.raises(ValueError, match="need 'labels'"):
        collator([{"input_ids": [1, 2]}])
    with pytest.raises(ValueError, match="must be equal"):
        collator([{"input_ids": [1, 2], "labels": [1, 2, 3]}])
    with pytest.raises(ValueError, match="more than max_length=2"):
        SoftPromptDataCollator(tokenizer, max_length=2)([{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}])


def test_removed_columns_message_says_how_to_fix(tokenizer):
    with pytest.raises(ValueError, match=r"remove_unused_columns=False.*pre-tokenize"):
        SoftPromptDataCollator(tokenizer)([{"ID": 3}])


@pytest.mark.parametrize(
    ("row", "match"),
    [
        ({"Tweet text": "   ", "text_label": "complaint"}, "non-empty strings"),
        ({"Tweet text": None, "text_label": "complaint"}, "non-empty strings"),
        ({"Tweet text": "hello"}, "cannot be trained on"),
        ({"Tweet text": "hello", "text_label": None}, "cannot be trained on"),
        ({"Tweet text": "hello", "text_label": ""}, "non-empty target strings"),
    ],
)
def test_bad_rows(tokenizer, row, match):
    with pytest.raises(ValueError, match=match):
        SoftPromptDataCollator(tokenizer)([row])


def test_tokenizer_without_pad_is_refused(tokenizer):
    tokenizer.pad_token = None
    with pytest.raises(ValueError, match=r"tokenizer.pad_token = tokenizer.eos_token"):
        SoftPromptDataCollator(tokenizer)


@pytest.mark.parametrize(
    ("template", "match"),
    [
        ("{text_column} only", "no '{text}' field"),
        ("{text} {0}", "a field is a column name in braces"),
        ("{text.upper}", "a field is a column name in braces"),
        ("{text!r}", "a field is a column name in braces"),
        ("{text} {", "not a valid"),
    ],
)
def test_bad_templates(tokenizer, template, match):
    with pytest.raises(ValueError, match=match):
        SoftPromptDataCollator(tokenizer, template=template)


class WordTokenizer(PreTrainedTokenizer):
    """A whitespace word tokenizer on the python backend: no offsets mapping (``is_fast`` is False)."""

    def __init__(self, words, **kwargs):
        self.vocab = {w: i for i, w in enumerate(["<unk>", "</s>", *words])}
        self.ids = {i: w for w, i in self.vocab.items()}
        super().__init__(unk_token="<unk>", eos_token="</s>", pad_token="</s>", **kwargs)

    @property
    def vocab_size(self):
        return len(self.vocab)

    def get_vocab(self):
        return dict(self.vocab)

    def _tokenize(self, text):
        return text.split()

    def _convert_token_to_id(self, token):
        return self.vocab.get(token, 0)

    def _convert_id_to_token(self, index):
        return self.ids[index]

    def convert_tokens_to_string(self, tokens):
        return " ".join(tokens)


def test_truncation_with_a_tokenizer_without_offsets():
    tokenizer = WordTokenizer(["Tweet", "text", ":", "Label", "complaint", *[f"w{i}" for i in range(10)]])
    assert not tokenizer.is_fast
    row = {"Tweet text": " ".join(f"w{i}" for i in range(10)), "text_label": "complaint"}
    batch = SoftPromptDataCollator(tokenizer, max_length=12)([row])
    ids = batch["input_ids"][0].tolist()
    # "Tweet text :" (3) + 5 kept words + "Label :" (2) + "complaint" + EOS = 12 tokens.
    assert tokenizer.decode(ids) == "Tweet text : w0 w1 w2 w3 w4 Label : complaint </s>"


# -- Free-text targets and templates over any column of the row (issue 28) --------------------------------------

PAPER = {
    "title": "Soft prompts at scale",
    "abstract": "We tune twenty virtual tokens of a frozen model and match full fine-tuning on three tasks.",
    "summary": "Prompt tuning matches fine-tuning when the model is large.",
}
PAPER_TEMPLATE = "Title : {title} Abstract : {abstract} Summary : "


def test_a_template_reads_any_column_of_the_row(tokenizer):
    collator = SoftPromptDataCollator(tokenizer, target_column="summary", template=PAPER_TEMPLATE)
    batch = collator([PAPER])
    prompt = PromptTemplate(PAPER_TEMPLATE)
    prompt_text = f"Title : {PAPER['title']} Abstract : {PAPER['abstract']} Summary :"
    assert prompt.prompt_text(PAPER) == prompt_text
    prompt_ids = tokenizer(prompt_text)["input_ids"]
    target_ids = prompt.encode_target(tokenizer, PAPER["summary"])
    assert len(target_ids) > 8, "the test needs a long target"
    assert batch["input_ids"][0].tolist() == prompt_ids + target_ids
    assert batch["labels"][0].tolist() == [-100] * len(prompt_ids) + target_ids
    # The joined text's own tokens: the summary continues the prompt as the tokenizer writes the whole.
    joined = tokenizer(prompt_text + " " + PAPER["summary"])["input_ids"]
    assert joined == prompt_ids + target_ids[:-1]
    assert prompt.fields == ("title", "abstract") and prompt.cut_field == "abstract"


def test_a_template_field_that_no_column_holds_names_the_rows_columns(tokenizer):
    collator = SoftPromptDataCollator(tokenizer, target_column="summary", template="{title} {authors} Summary : ")
    with pytest.raises(
        ValueError, match=r"reads the column\(s\) \['authors'\].*columns found: \['abstract', 'summary', 'title'\]"
    ):
        collator([PAPER])
    with pytest.raises(ValueError, match=r"\['authors'\], not found in the data"):
        PromptTemplate("{title} {authors} Summary : ").check_columns(PAPER)
    with pytest.raises(ValueError, match=r"pass rows .* holding the columns \['title', 'abstract'\], not a text"):
        PromptTemplate(PAPER_TEMPLATE).encode(tokenizer, "a text")


def test_only_the_cut_field_is_shortened_to_fit_max_length(tokenizer):
    long_paper = {**PAPER, "abstract": " ".join(["tokens"] * 80)}
    full = SoftPromptDataCollator(tokenizer, target_column="summary", template=PAPER_TEMPLATE)([long_paper])
    cut = SoftPromptDataCollator(tokenizer, target_column="summary", template=PAPER_TEMPLATE, max_length=100)(
        [long_paper]
    )
    ids, labels = cut["input_ids"][0].tolist(), cut["labels"][0].tolist()
    assert len(ids) <= 100 < full["input_ids"].shape[1]
    text = tokenizer.decode(ids)
    assert text.startswith(f"Title : {PAPER['title']} Abstract : tokens")
    assert " Summary : " + PAPER["summary"] in text  # the template's tail, the other field and the target stay
    target = [t for t in labels if t != -100]
    assert target == PromptTemplate(PAPER_TEMPLATE).encode_target(tokenizer, PAPER["summary"])


def test_a_long_target_is_cut_to_max_target_length_keeping_its_eos(tokenizer, caplog):
    collator = SoftPromptDataCollator(tokenizer, target_column="summary", template=PAPER_TEMPLATE, max_target_length=5)
    full = PromptTemplate(PAPER_TEMPLATE).encode_target(tokenizer, PAPER["summary"])
    labels = collator([PAPER])["labels"][0].tolist()
    assert [t for t in labels if t != -100] == [*full[:4], tokenizer.eos_token_id]
    short = {**PAPER, "summary": "Yes."}
    short_ids = PromptTemplate(PAPER_TEMPLATE).encode_target(tokenizer, "Yes.")
    assert len(short_ids) <= 5
    assert [t for t in collator([short])["labels"][0].tolist() if t != -100] == short_ids
    assert collator.count_cut([PAPER, short, PAPER]) == {"rows": 3, "sources_cut": 0, "targets_cut": 2}


def test_targets_cut_first_then_the_source_to_fit_max_length(tokenizer):
    long_paper = {**PAPER, "abstract": " ".join(["tokens"] * 80)}
    collator = SoftPromptDataCollator(
        tokenizer, target_column="summary", template=PAPER_TEMPLATE, max_length=60, max_target_length=6
    )
    batch = collator([long_paper])
    assert batch["input_ids"].shape[1] <= 60
    assert len([t for t in batch["labels"][0].tolist() if t != -100]) == 6
    short_abstract = {**PAPER, "abstract": "Short."}
    assert collator.count_cut([long_paper, short_abstract]) == {"rows": 2, "sources_cut": 1, "targets_cut": 2}


def test_a_target_longer_than_max_target_length_is_refused_when_cutting_is_off(tokenizer):
    collator = SoftPromptDataCollator(
        tokenizer, target_column="summary", template=PAPER_TEMPLATE, max_target_length=5, truncate_targets=False
    )
    with pytest.raises(ValueError, match=r"more than max_target_length=5, and truncate_targets is off"):
        collator([PAPER])
    with pytest.raises(ValueError, match=r"max_target_length=1 leaves no room"):
        SoftPromptDataCollator(tokenizer, max_target_length=1)


def test_a_target_that_leaves_no_room_for_the_prompt_says_how_to_cut_it(tokenizer):
    collator = SoftPromptDataCollator(tokenizer, target_column="summary", template=PAPER_TEMPLATE, max_length=8)
    with pytest.raises(ValueError, match=r"set max_target_length below it to cut long targets"):
        collator([PAPER])


@pytest.mark.parametrize("value", [None, ""])
def test_an_empty_target_is_refused(tokenizer, value):
    collator = SoftPromptDataCollator(tokenizer, target_column="summary", template=PAPER_TEMPLATE)
    with pytest.raises(ValueError, match=r"summary"):
        collator([{**PAPER, "summary": value}])


def test_a_field_holding_none_is_refused_and_numbers_are_written_as_text(tokenizer):
    template = PromptTemplate("Year : {year} Title : {title} Summary : ")
    assert template.render({"year": 2021, "title": "Soft prompts"}) == "Year : 2021 Title : Soft prompts Summary : "
    with pytest.raises(ValueError, match=r"The row's 'year' is empty \(None\)"):
        template.render({"year": None, "title": "Soft prompts"})
