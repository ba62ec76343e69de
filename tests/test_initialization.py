"""Where a soft prompt starts: each initialisation's values, against peft's own where peft has it, seeded."""

from __future__ import annotations

import pytest
import torch
from conftest import model_config
from peft import PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model
from transformers import AutoModelForCausalLM

from softprompt_hf import build_soft_prompt_model
from softprompt_hf.modeling.initialization import SoftPromptInit, fit_to_length, initialize_soft_prompt, text_token_ids
from softprompt_hf.modeling.methods import SEED_PROMPT_TUNING_INIT_TEXT

LABELS = ("complaint", "no complaint")


def tiny_model(arch: str, tokenizer, seed: int = 0):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(model_config(arch, len(tokenizer)))


def prompt_rows(peft_model) -> torch.Tensor:
    return peft_model.prompt_encoder["default"].embedding.weight.detach()


def input_embeddings(peft_model, token_ids) -> torch.Tensor:
    """What the model's input-embedding layer gives the tokens: the values its real tokens enter it with."""
    with torch.no_grad():
        return peft_model.get_base_model().get_input_embeddings()(torch.tensor(token_ids))


def test_fit_to_length_cuts_or_repeats_as_peft_does():
    assert fit_to_length([1, 2, 3], 2) == [1, 2]
    assert fit_to_length([1, 2, 3], 3) == [1, 2, 3]
    assert fit_to_length([1, 2, 3], 7) == [1, 2, 3, 1, 2, 3, 1]


@pytest.mark.parametrize("num_virtual_tokens", [None, 4, 50], ids=["text-length", "cut", "repeated"])
def test_text_init_is_peft_own_text_init(bos_tokenizer, tmp_path, num_virtual_tokens):
    """TEXT is peft's TEXT exactly, BOS included, on a model whose tokenizer starts every input with BOS; peft's
    own is built from the same tokenizer saved to a folder (peft loads it by name)."""
    bos_tokenizer.save_pretrained(tmp_path)
    with_bos = bos_tokenizer(SEED_PROMPT_TUNING_INIT_TEXT)["input_ids"]
    assert with_bos[0] == bos_tokenizer.bos_token_id
    count = num_virtual_tokens or len(with_bos)
    peft_config = PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM,
        num_virtual_tokens=count,
        prompt_tuning_init=PromptTuningInit.TEXT,
        prompt_tuning_init_text=SEED_PROMPT_TUNING_INIT_TEXT,
        tokenizer_name_or_path=str(tmp_path),
    )
    peft_own = get_peft_model(tiny_model("llama", bos_tokenizer), peft_config)
    ours = build_soft_prompt_model(
        tiny_model("llama", bos_tokenizer),
        method="prompt_tuning",
        prompt_tuning_init="TEXT",
        num_virtual_tokens=num_virtual_tokens,
        tokenizer=bos_tokenizer,
    )
    assert ours.peft_config["default"].num_virtual_tokens == count
    torch.testing.assert_close(prompt_rows(ours), prompt_rows(peft_own), rtol=0, atol=1e-6)
    torch.testing.assert_close(prompt_rows(ours), input_embeddings(ours, fit_to_length(with_bos, count)))


def test_text_without_special_tokens_leaves_the_bos_out(bos_tokenizer):
    """The text's own tokens only: the input then holds one BOS, after the virtual tokens."""
    own = bos_tokenizer(SEED_PROMPT_TUNING_INIT_TEXT, add_special_tokens=False)["input_ids"]
    assert text_token_ids(bos_tokenizer, SEED_PROMPT_TUNING_INIT_TEXT, special_tokens=False) == own
    model = build_soft_prompt_model(
        tiny_model("llama", bos_tokenizer),
        method="prompt_tuning",
        prompt_tuning_init="TEXT_WITHOUT_SPECIAL_TOKENS",
        tokenizer=bos_tokenizer,
    )
    assert model.peft_config["default"].num_virtual_tokens == len(own)
    assert bos_tokenizer.bos_token_id not in own
    torch.testing.assert_close(prompt_rows(model), input_embeddings(model, own), rtol=0, atol=1e-6)


@pytest.mark.parametrize("arch", ["bloom", "gemma3_text"])
@pytest.mark.parametrize("init", ["TEXT", "TEXT_WITHOUT_SPECIAL_TOKENS"])
def test_text_inits_use_the_input_embedding_layer(bos_tokenizer, arch, init):
    """Gemma's input-embedding layer scales its rows by sqrt(hidden size): the virtual tokens must be on that
    scale, the one the real tokens have, not the raw weight rows."""
    model = build_soft_prompt_model(
        tiny_model(arch, bos_tokenizer), method="prompt_tuning", prompt_tuning_init=init, tokenizer=bos_tokenizer
    )
    ids = text_token_ids(bos_tokenizer, SEED_PROMPT_TUNING_INIT_TEXT, special_tokens=init == "TEXT")
    expected = input_embeddings(model, ids)
    torch.testing.assert_close(prompt_rows(model), expected, rtol=0, atol=1e-6)
    raw = model.get_base_model().get_input_embeddings().weight[ids].detach()
    assert torch.equal(expected, raw) == (arch == "bloom")  # scaled on Gemma only


@pytest.mark.parametrize("arch", ["bloom", "gemma3_text"])
@pytest.mark.parametrize("num_virtual_tokens", [2, 6])
def test_class_labels_init_is_each_labels_mean_embedding_then_vocabulary_rows(bos_tokenizer, arch, num_virtual_tokens):
    model = build_soft_prompt_model(
        tiny_model(arch, bos_tokenizer),
        method="prompt_tuning",
        prompt_tuning_init="CLASS_LABELS",
        num_virtual_tokens=num_virtual_tokens,
        tokenizer=bos_tokenizer,
        class_labels=list(LABELS),
    )
    rows = prompt_rows(model)
    assert rows.shape[0] == num_virtual_tokens
    for row, label in zip(rows, LABELS, strict=False):
        ids = bos_tokenizer(label, add_special_tokens=False)["input_ids"]
        torch.testing.assert_close(row, input_embeddings(model, ids).mean(dim=0), rtol=0, atol=1e-6)
    assert len(bos_tokenizer("no complaint", add_special_tokens=False)["input_ids"]) > 1  # a real mean
    vocabulary = input_embeddings(model, list(range(len(bos_tokenizer))))
    for row in rows[len(LABELS) :]:
        assert (vocabulary - row).abs().amax(dim=1).min() < 1e-6  # a vocabulary token's input embedding


def test_class_labels_that_do_not_fit_are_refused(tokenizer):
    with pytest.raises(
        ValueError, match="3 labels do not fit in 2 virtual tokens. Set num_virtual_tokens to at least 3"
    ):
        build_soft_prompt_model(
            tiny_model("bloom", tokenizer),
            method="prompt_tuning",
            prompt_tuning_init="CLASS_LABELS",
            num_virtual_tokens=2,
            tokenizer=tokenizer,
            class_labels=["complaint", "no complaint", "other"],
        )


@pytest.mark.parametrize("labels", [None, [], ["complaint", " "]])
def test_class_labels_init_without_labels_says_what_to_pass(tokenizer, labels):
    with pytest.raises(ValueError, match=r"class_labels=|needs the class labels"):
        build_soft_prompt_model(
            tiny_model("bloom", tokenizer),
            method="prompt_tuning",
            prompt_tuning_init="CLASS_LABELS",
            tokenizer=tokenizer,
            class_labels=labels,
        )


def test_sample_vocab_init_is_peft_own_sample_vocab(tokenizer):
    """The same draw as peft's SAMPLE_VOCAB from the same seed (torch's global generator)."""
    config = PromptTuningConfig(
        task_type=TaskType.CAUSAL_LM, num_virtual_tokens=6, prompt_tuning_init=PromptTuningInit.SAMPLE_VOCAB
    )
    bases = [tiny_model("bloom", tokenizer) for _ in range(2)]
    torch.manual_seed(7)
    peft_own = get_peft_model(bases[0], config)
    torch.manual_seed(7)
    ours = build_soft_prompt_model(
        bases[1], method="prompt_tuning", prompt_tuning_init="SAMPLE_VOCAB", num_virtual_tokens=6
    )
    torch.testing.assert_close(prompt_rows(ours), prompt_rows(peft_own), rtol=0, atol=1e-6)


@pytest.mark.parametrize("init", ["SAMPLE_VOCAB", "CLASS_LABELS", "RANDOM"])
def test_random_inits_are_seeded(tokenizer, init):
    def built(seed: int) -> torch.Tensor:
        base = tiny_model("bloom", tokenizer)
        torch.manual_seed(seed)
        model = build_soft_prompt_model(
            base,
            method="prompt_tuning",
            prompt_tuning_init=init,
            num_virtual_tokens=8,
            tokenizer=tokenizer,
            class_labels=list(LABELS),
        )
        return prompt_rows(model)

    assert torch.equal(built(1), built(1))
    assert not torch.equal(built(1), built(2))


@pytest.mark.parametrize("arch", ["gpt2", "llama", "bloom", "gemma3_text"])
def test_prefix_text_init_makes_the_model_read_its_input_after_the_text(bos_tokenizer, arch):
    """Li & Liang's initialisation: a prefix of the key/values the frozen model computes for the text makes the
    model's logits for an input those of the text followed by the input."""
    text = "Classify the tweet."
    model = build_soft_prompt_model(
        tiny_model(arch, bos_tokenizer),
        method="prefix_tuning",
        prefix_tuning_init="TEXT",
        prefix_tuning_init_text=text,
        tokenizer=bos_tokenizer,
    )
    text_ids = bos_tokenizer(text)["input_ids"]
    assert model.peft_config["default"].num_virtual_tokens == len(text_ids)  # the default: the text's length
    input_ids = bos_tokenizer("@Acme my parcel never arrived")["input_ids"]
    model.eval()
    with torch.no_grad():
        prefixed = model(input_ids=torch.tensor([input_ids]), attention_mask=torch.ones(1, len(input_ids))).logits
        plain = model.get_base_model()(input_ids=torch.tensor([text_ids + input_ids])).logits
    torch.testing.assert_close(prefixed[0], plain[0, len(text_ids) :], rtol=0, atol=1e-5)


def test_prefix_text_init_repeats_the_text_to_fill_the_prefix(tokenizer):
    model = build_soft_prompt_model(
        tiny_model("llama", tokenizer),
        method="prefix_tuning",
        prefix_tuning_init="TEXT",
        prefix_tuning_init_text="complaint",
        num_virtual_tokens=5,
        tokenizer=tokenizer,
    )
    text_ids = fit_to_length(tokenizer("complaint")["input_ids"], 5)
    input_ids = tokenizer("no complaint")["input_ids"]
    model.eval()
    with torch.no_grad():
        prefixed = model(input_ids=torch.tensor([input_ids]), attention_mask=torch.ones(1, len(input_ids))).logits
        plain = model.get_base_model()(input_ids=torch.tensor([text_ids + input_ids])).logits
    torch.testing.assert_close(prefixed[0], plain[0, 5:], rtol=0, atol=1e-5)


def test_prefix_text_init_longer_than_a_sliding_window_is_refused(tokenizer):
    # The tiny Gemma 3's local layer keeps 20 positions: a 30-token prefix would lose its start there.
    with pytest.raises(ValueError, match="sliding window shorter than the prefix.*prefix_tuning_init=RANDOM"):
        build_soft_prompt_model(
            tiny_model("gemma3_text", tokenizer),
            method="prefix_tuning",
            prefix_tuning_init="TEXT",
            num_virtual_tokens=30,
            tokenizer=tokenizer,
        )


@pytest.mark.parametrize(
    ("method", "init", "match"),
    [
        ("p_tuning", "TEXT", r"does not apply to p_tuning; it takes \['RANDOM'\]. P-tuning keeps peft's random"),
        ("prefix_tuning", "CLASS_LABELS", r"does not apply to prefix_tuning; it takes \['RANDOM', 'TEXT'\]"),
    ],
)
def test_an_init_of_another_method_is_refused(tokenizer, method, init, match):
    model = build_soft_prompt_model(tiny_model("bloom", tokenizer), method=method)
    with pytest.raises(ValueError, match=match):
        initialize_soft_prompt(model, SoftPromptInit(init, text="Hi", class_labels=LABELS), tokenizer=tokenizer)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kind": "ZEROS"}, "Unknown soft-prompt initialisation 'ZEROS'"),
        ({"kind": "TEXT", "text": " "}, "needs a non-empty init text"),
        ({"kind": "CLASS_LABELS"}, "needs the class labels"),
    ],
)
def test_bad_inits_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SoftPromptInit(**kwargs)


def test_text_inits_without_tokenizer_say_what_to_do(tokenizer):
    model = build_soft_prompt_model(tiny_model("bloom", tokenizer), method="prompt_tuning", prompt_tuning_init="RANDOM")
    with pytest.raises(ValueError, match=r"needs the model's tokenizer \(pass tokenizer=...\)"):
        initialize_soft_prompt(model, SoftPromptInit("TEXT_WITHOUT_SPECIAL_TOKENS", text="Hi"))


@pytest.mark.parametrize(
    ("method", "init", "options", "recorded"),
    [
        ("prompt_tuning", "TEXT_WITHOUT_SPECIAL_TOKENS", {}, {"text": SEED_PROMPT_TUNING_INIT_TEXT}),
        ("prompt_tuning", "CLASS_LABELS", {"num_virtual_tokens": 4}, {"class_labels": list(LABELS)}),
        ("prompt_tuning", "TEXT", {}, {"text": SEED_PROMPT_TUNING_INIT_TEXT}),
        ("prompt_tuning", "SAMPLE_VOCAB", {"num_virtual_tokens": 4}, {}),
        ("prefix_tuning", "TEXT", {"num_virtual_tokens": 4}, {"text": SEED_PROMPT_TUNING_INIT_TEXT}),
        ("p_tuning", "RANDOM", {"num_virtual_tokens": 4}, {}),
    ],
)
def test_the_init_is_recorded_in_the_saved_adapter_and_its_card(tokenizer, tmp_path, method, init, options, recorded):
    """adapter_config.json names peft's own inits only (a prompt set from TEXT_WITHOUT_SPECIAL_TOKENS or CLASS_LABELS
    is built RANDOM): softprompt_hf.json and the card say where the soft prompt really started."""
    import json

    from softprompt_hf import save_adapter
    from softprompt_hf.modeling.initialization import initialization_of

    key = {"prompt_tuning": "prompt_tuning_init", "prefix_tuning": "prefix_tuning_init"}.get(method)
    if key is not None:
        options[key] = init
        options[f"{method}_init_text"] = SEED_PROMPT_TUNING_INIT_TEXT
    model = build_soft_prompt_model(
        tiny_model("gpt2", tokenizer), method=method, tokenizer=tokenizer, class_labels=list(LABELS), **options
    )
    assert initialization_of(model).kind == init
    folder = save_adapter(model, tmp_path / "adapter", tokenizer=tokenizer, labels=list(LABELS))
    saved = json.loads((folder / "softprompt_hf.json").read_text())["card"]["initialization"]
    assert saved == {"kind": init, "text": None, "class_labels": None, **recorded}
    card = (folder / "README.md").read_text()
    assert f"Initialisation: `{init}`" in card
    peft_init = json.loads((folder / "adapter_config.json").read_text()).get("prompt_tuning_init")
    assert ("softprompt_hf then set its values" in card) == (peft_init is not None and peft_init != init)
    if init in ("TEXT_WITHOUT_SPECIAL_TOKENS", "CLASS_LABELS"):
        assert peft_init == "RANDOM"  # what the card's note is for
