from __future__ import annotations

import pytest
import torch
from conftest import METHODS, method_options, model_config
from peft import PrefixTuningConfig, PromptEncoderConfig, PromptTuningConfig, PromptTuningInit
from transformers import AutoModelForCausalLM, BloomConfig, HfArgumentParser, TrainingArguments

from softprompt_hf import SoftPromptArguments, build_soft_prompt_model
from softprompt_hf.modeling.initialization import SoftPromptInit
from softprompt_hf.modeling.methods import SEED_PROMPT_TUNING_INIT_TEXT, build_peft_config, eval_mode

# bigscience/bloomz-560m's architecture, from its config.json.
BLOOMZ_560M = {"vocab_size": 250880, "hidden_size": 1024, "n_layer": 24, "n_head": 16}


@pytest.mark.parametrize(
    ("method", "options", "trainable", "total"),
    [
        ("p_tuning", {"num_virtual_tokens": 20, "encoder_hidden_size": 128}, 300_288, 559_514_880),
        ("prefix_tuning", {"num_virtual_tokens": 20}, 983_040, 560_197_632),
        ("prompt_tuning", {"num_virtual_tokens": 8, "prompt_tuning_init": "RANDOM"}, 8_192, 559_222_784),
    ],
)
def test_seed_parameter_counts_on_bloomz_560m(method, options, trainable, total):
    """The seed guide's printed counts, on bloomz-560m built on the meta device (no download)."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(BloomConfig(**BLOOMZ_560M))
    peft_model = build_soft_prompt_model(model, method=method, **options)
    assert peft_model.get_nb_trainable_parameters() == (trainable, total)


def test_seed_defaults_are_the_seed_configs():
    p_tuning = build_peft_config(method="p_tuning")
    assert isinstance(p_tuning, PromptEncoderConfig)
    assert (p_tuning.num_virtual_tokens, p_tuning.encoder_hidden_size) == (20, 128)
    prefix = build_peft_config(method="prefix_tuning")
    assert isinstance(prefix, PrefixTuningConfig)
    assert (prefix.num_virtual_tokens, prefix.prefix_projection) == (20, False)
    assert SoftPromptArguments().prompt_tuning_init_text == "Classify if the tweet is a complaint or no complaint.\n"


def tiny_model(arch="bloom", vocab_size=400):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(model_config(arch, vocab_size))


def test_text_init_copies_init_text_embeddings(tokenizer):
    model = tiny_model(vocab_size=len(tokenizer))
    peft_model = build_soft_prompt_model(model, tokenizer=tokenizer, tokenizer_name_or_path="org/base")
    ids = tokenizer(SEED_PROMPT_TUNING_INIT_TEXT)["input_ids"]
    config = peft_model.peft_config["default"]
    assert isinstance(config, PromptTuningConfig)
    assert config.num_virtual_tokens == len(ids)
    assert config.prompt_tuning_init == PromptTuningInit.TEXT
    assert config.prompt_tuning_init_text == SEED_PROMPT_TUNING_INIT_TEXT
    assert config.tokenizer_name_or_path == "org/base"
    prompt = peft_model.prompt_encoder["default"].embedding.weight
    assert torch.equal(prompt, model.get_input_embeddings().weight[ids])


@pytest.mark.parametrize(
    ("init", "special_tokens"), [("TEXT", True), ("TEXT_WITHOUT_SPECIAL_TOKENS", False)], ids=["TEXT", "without"]
)
def test_text_inits_count_their_tokens_as_they_tokenize_the_text(bos_tokenizer, init, special_tokens):
    """TEXT is peft's: a tokenizer that starts every input with BOS (Llama, Gemma) puts a BOS first, and the default
    prompt length counts it; TEXT_WITHOUT_SPECIAL_TOKENS takes the text's own tokens (one BOS in the input)."""
    model = tiny_model("llama", vocab_size=len(bos_tokenizer))
    peft_model = build_soft_prompt_model(model, tokenizer=bos_tokenizer, prompt_tuning_init=init)
    own = bos_tokenizer(SEED_PROMPT_TUNING_INIT_TEXT, add_special_tokens=False)["input_ids"]
    assert bos_tokenizer(SEED_PROMPT_TUNING_INIT_TEXT)["input_ids"] == [bos_tokenizer.bos_token_id, *own]
    ids = [bos_tokenizer.bos_token_id, *own] if special_tokens else own
    assert SoftPromptArguments(prompt_tuning_init=init).num_virtual_tokens_for(bos_tokenizer) == len(ids)
    assert peft_model.peft_config["default"].num_virtual_tokens == len(ids)
    prompt = peft_model.prompt_encoder["default"].embedding.weight
    assert torch.equal(prompt, model.get_input_embeddings().weight[ids])


def test_text_init_repeats_text_for_longer_prompts(tokenizer):
    peft_model = build_soft_prompt_model(
        tiny_model(), tokenizer=tokenizer, prompt_tuning_init_text="complaint", num_virtual_tokens=5
    )
    ids = tokenizer("complaint")["input_ids"]
    expected = (ids * 5)[:5]
    prompt = peft_model.prompt_encoder["default"].embedding.weight
    assert torch.equal(prompt, peft_model.word_embeddings.weight[expected])


def test_sample_vocab_init_uses_vocabulary_rows(tokenizer):
    peft_model = build_soft_prompt_model(
        tiny_model(), method="prompt_tuning", prompt_tuning_init="sample_vocab", num_virtual_tokens=4
    )
    vocab = peft_model.word_embeddings.weight
    for row in peft_model.prompt_encoder["default"].embedding.weight:
        assert (vocab == row).all(dim=1).any()


@pytest.mark.parametrize("method", METHODS)
def test_only_the_prompt_is_trainable(tokenizer, method):
    peft_model = build_soft_prompt_model(tiny_model(), method=method, tokenizer=tokenizer)
    trainable = [name for name, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all(name.startswith("prompt_encoder.") for name in trainable)


def test_p_tuning_lstm_and_prefix_projection_options():
    lstm = build_soft_prompt_model(
        tiny_model(), method="p_tuning", encoder_reparameterization_type="lstm", encoder_hidden_size=16
    )
    encoder = lstm.prompt_encoder["default"]
    assert isinstance(encoder.lstm_head, torch.nn.LSTM) and encoder.lstm_head.hidden_size == 16
    plain = build_soft_prompt_model(tiny_model(), method="prefix_tuning", num_virtual_tokens=4)
    projected = build_soft_prompt_model(
        tiny_model(),
        method="prefix_tuning",
        num_virtual_tokens=4,
        prefix_projection=True,
        encoder_hidden_size=8,
    )
    # Plain prefix: 4 tokens x 2 layers x (key, value) x hidden 32.
    assert plain.get_nb_trainable_parameters()[0] == 4 * 2 * 2 * 32
    # Projection: embedding 4x32, then 32->8->(2*2*32) MLP with biases.
    assert projected.get_nb_trainable_parameters()[0] == 4 * 32 + (32 * 8 + 8) + (8 * 128 + 128)


CHECKPOINTING_FLAGS = [
    f for f in ("activation_checkpointing", "gradient_checkpointing") if hasattr(TrainingArguments, f)
]


@pytest.mark.filterwarnings("ignore:`gradient_checkpointing:FutureWarning")
@pytest.mark.parametrize("flag", CHECKPOINTING_FLAGS)
def test_prefix_tuning_with_gradient_checkpointing_is_refused(tmp_path, flag):
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], **{flag: True})
    with pytest.raises(ValueError, match="activation_checkpointing=False"):
        build_soft_prompt_model(tiny_model(), method="prefix_tuning", training_args=args)
    model = tiny_model()
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()
    with pytest.raises(ValueError, match="Prefix tuning cannot be combined with gradient checkpointing"):
        build_soft_prompt_model(model, method="prefix_tuning")
    # The other methods accept it.
    build_soft_prompt_model(tiny_model(), method="p_tuning", training_args=args)


@pytest.mark.parametrize("method", METHODS)
def test_label_smoothing_is_refused(tmp_path, method):
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], label_smoothing_factor=0.1)
    with pytest.raises(ValueError, match="Set label_smoothing_factor=0"):
        build_soft_prompt_model(tiny_model(), **method_options(method, prompt_tuning_init="RANDOM"), training_args=args)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"method": "lora"}, "Unknown soft-prompt method 'lora'"),
        ({"prompt_tuning_init": "zeros"}, "Unknown prompt_tuning_init"),
        ({"encoder_reparameterization_type": "GRU"}, "Unknown encoder_reparameterization_type"),
        ({"num_virtual_tokens": 0}, "num_virtual_tokens must be at least 1"),
        ({"encoder_dropout": 1.5}, "encoder_dropout"),
        ({"prompt_tuning_init_text": " "}, "non-empty prompt_tuning_init_text"),
        ({"prompt_tuning_init": "TEXT_WITHOUT_SPECIAL_TOKENS", "prompt_tuning_init_text": ""}, "non-empty"),
        ({"method": "prefix_tuning", "prefix_tuning_init": "vocab"}, "Unknown prefix_tuning_init 'VOCAB'"),
        (
            {"method": "prefix_tuning", "prefix_tuning_init": "TEXT", "prefix_tuning_init_text": " "},
            "prefix_tuning_init=TEXT needs a non-empty prefix_tuning_init_text",
        ),
        (
            {"method": "prefix_tuning", "prefix_tuning_init": "TEXT", "prefix_projection": True},
            "Set prefix_projection=False, or prefix_tuning_init=RANDOM",
        ),
        ({"prefix_tuning_init": "TEXT"}, r"prefix_tuning_init='TEXT' does not apply to prompt_tuning"),
        ({"method": "p_tuning", "prefix_tuning_init_text": "Hi"}, "does not apply to p_tuning: only prefix_tuning"),
    ],
)
def test_bad_arguments(options, match):
    with pytest.raises(ValueError, match=match):
        SoftPromptArguments(**options)


@pytest.mark.parametrize(
    "options",
    [
        {"method": "prompt_tuning"},
        {"method": "prompt_tuning", "prompt_tuning_init": "TEXT_WITHOUT_SPECIAL_TOKENS"},
        {"method": "prefix_tuning", "prefix_tuning_init": "TEXT"},
    ],
)
def test_text_init_without_tokenizer_says_what_to_do(options):
    with pytest.raises(ValueError, match=r"init=TEXT.* needs the tokenizer \(pass tokenizer=...\)"):
        build_peft_config(**options)


@pytest.mark.parametrize(
    ("init", "recorded"),
    [
        ("TEXT", PromptTuningInit.TEXT),
        ("TEXT_WITHOUT_SPECIAL_TOKENS", PromptTuningInit.RANDOM),
        ("CLASS_LABELS", PromptTuningInit.RANDOM),
        ("SAMPLE_VOCAB", PromptTuningInit.SAMPLE_VOCAB),
        ("RANDOM", PromptTuningInit.RANDOM),
    ],
)
def test_peft_config_records_peft_own_name_for_each_init(tokenizer, init, recorded):
    """peft's config can name TEXT, SAMPLE_VOCAB and RANDOM; the other inits are values set after peft built a
    random prompt, and a saved adapter must load with peft, so its config says RANDOM."""
    config = build_peft_config(method="prompt_tuning", prompt_tuning_init=init, tokenizer=tokenizer)
    assert config.prompt_tuning_init == recorded
    assert (config.prompt_tuning_init_text is not None) == (init == "TEXT")
    expected = {"TEXT": len(tokenizer(SEED_PROMPT_TUNING_INIT_TEXT)["input_ids"])}
    expected["TEXT_WITHOUT_SPECIAL_TOKENS"] = expected["TEXT"]  # this tokenizer adds no BOS
    assert config.num_virtual_tokens == expected.get(init, 20)


def test_initialization_of_the_arguments():
    args = SoftPromptArguments(prompt_tuning_init="class_labels")
    assert args.initialization(["complaint", "no complaint"]) == SoftPromptInit(
        "CLASS_LABELS", class_labels=("complaint", "no complaint")
    )
    with pytest.raises(ValueError, match=r"pass class_labels=\.\.\. \(the label texts"):
        args.initialization()
    assert SoftPromptArguments().initialization() == SoftPromptInit("TEXT", text=SEED_PROMPT_TUNING_INIT_TEXT)
    assert SoftPromptArguments(method="p_tuning").initialization() == SoftPromptInit("RANDOM")
    assert SoftPromptArguments(method="prefix_tuning").initialization() == SoftPromptInit("RANDOM")
    prefix = SoftPromptArguments(method="prefix_tuning", prefix_tuning_init="TEXT", prefix_tuning_init_text="Hi")
    assert prefix.initialization() == SoftPromptInit("TEXT", text="Hi")


def test_explicit_init_replaces_that_of_a_ready_peft_config(tokenizer):
    """A recipe's peft config records RANDOM for CLASS_LABELS; the init it passes sets the values, and the caller's
    config is given back as it was."""
    config = build_peft_config(method="prompt_tuning", prompt_tuning_init="CLASS_LABELS", num_virtual_tokens=3)
    init = SoftPromptInit("CLASS_LABELS", class_labels=("complaint", "no complaint"))
    model = build_soft_prompt_model(tiny_model(vocab_size=len(tokenizer)), config, tokenizer=tokenizer, init=init)
    ids = tokenizer("complaint", add_special_tokens=False)["input_ids"]
    first = model.prompt_encoder["default"].embedding.weight[0]
    torch.testing.assert_close(first, model.word_embeddings.weight[ids].mean(dim=0), rtol=0, atol=1e-6)
    assert config.prompt_tuning_init == PromptTuningInit.RANDOM


def test_arguments_parse_from_command_line():
    (args,) = HfArgumentParser(SoftPromptArguments).parse_args_into_dataclasses(
        ["--method", "p_tuning", "--num_virtual_tokens", "12", "--encoder_reparameterization_type", "LSTM"]
    )
    config = build_peft_config(args)
    assert isinstance(config, PromptEncoderConfig)
    assert config.num_virtual_tokens == 12
    assert config.encoder_reparameterization_type.value == "LSTM"


@pytest.mark.parametrize(
    ("flags", "field", "value"),
    [
        (["--prompt_tuning_init", "CLASS_LABELS"], "prompt_tuning_init", "CLASS_LABELS"),
        (["--prompt_tuning_init", "TEXT_WITHOUT_SPECIAL_TOKENS"], "prompt_tuning_init", "TEXT_WITHOUT_SPECIAL_TOKENS"),
        (["--method", "prefix_tuning", "--prefix_tuning_init", "TEXT"], "prefix_tuning_init", "TEXT"),
        (["--method", "prefix_tuning", "--prefix_tuning_init_text", "Hi"], "prefix_tuning_init_text", "Hi"),
    ],
)
def test_init_flags_parse_from_command_line(flags, field, value):
    (args,) = HfArgumentParser(SoftPromptArguments).parse_args_into_dataclasses(flags)
    assert getattr(args, field) == value
    if field.endswith("_init"):
        with pytest.raises(SystemExit):  # argparse's own error for a value outside the choices
            HfArgumentParser(SoftPromptArguments).parse_args_into_dataclasses([*flags[:-1], "ZEROS"])


def test_text_init_config_is_given_back_when_peft_fails(tokenizer, monkeypatch):
    import softprompt_hf.modeling.methods as methods

    config = build_peft_config(method="prompt_tuning", tokenizer=tokenizer)
    assert config.prompt_tuning_init == PromptTuningInit.TEXT
    seen = []

    def failing_get_peft_model(model, peft_config):
        seen.append(peft_config.prompt_tuning_init)
        raise RuntimeError("peft failed")

    monkeypatch.setattr(methods, "get_peft_model", failing_get_peft_model)
    with pytest.raises(RuntimeError, match="peft failed"):
        build_soft_prompt_model(tiny_model(vocab_size=len(tokenizer)), config, tokenizer=tokenizer)
    assert seen == [PromptTuningInit.RANDOM]  # built with a random prompt, the text copied in afterwards
    assert config.prompt_tuning_init == PromptTuningInit.TEXT  # the caller's config, as it was


def test_eval_mode_gives_every_module_its_mode_back_also_on_errors():
    model = tiny_model()
    model.train()
    model.transformer.h[0].eval()
    modes = {name: module.training for name, module in model.named_modules()}
    with pytest.raises(RuntimeError, match="inside"), eval_mode(model):
        assert not any(module.training for module in model.modules())
        raise RuntimeError("inside")
    assert {name: module.training for name, module in model.named_modules()} == modes
