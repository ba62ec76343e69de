"""Atomic saving: a failed or interrupted save leaves the previous complete adapter in place."""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest
import torch
from conftest import model_config, tiny_soft_prompt_model
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, PreTrainedTokenizerFast

from softprompt_hf import build_soft_prompt_model
from softprompt_hf.adapter.card import ModelCardInputs, render_model_card
from softprompt_hf.adapter.saving import (
    CARD_KEY,
    INFERENCE_CONFIG_NAME,
    save_adapter,
)
from softprompt_hf.core.files import atomic_write_json, atomic_write_text, replace_folder
from softprompt_hf.data.prompt import DEFAULT_TEMPLATE


def test_save_adapter_writes_a_complete_folder_with_the_hub_id(tmp_path, tokenizer, model_dirs):
    model = tiny_soft_prompt_model(tokenizer, "bloom", "p_tuning")
    target = save_adapter(model, tmp_path / "adapter", tokenizer=tokenizer, base_model_id="org/base", labels=["a"])
    names = sorted(os.listdir(target))
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "softprompt_hf.json"} <= set(names)
    assert '"base_model_name_or_path": "org/base"' in (target / "adapter_config.json").read_text()
    # org/base is in no local cache, so nothing tells whether the tokenizer is its own: it is kept.
    assert json.loads((target / INFERENCE_CONFIG_NAME).read_text())["tokenizer"] == "adapter"
    # The live model keeps the path it was loaded from; only the saved copy names the Hub id.
    assert model.peft_config["default"].base_model_name_or_path != "org/base"
    assert stat.S_IMODE(target.stat().st_mode) == 0o777 & ~_umask()
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]  # no temporary folders left behind


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_failed_save_keeps_the_previous_adapter(tmp_path, tokenizer):
    model = tiny_soft_prompt_model(tokenizer, "bloom", "prompt_tuning")
    target = save_adapter(model, tmp_path / "adapter", tokenizer=tokenizer)
    before = {name: (target / name).read_bytes() for name in os.listdir(target)}

    class BrokenTokenizer:
        def save_pretrained(self, path):
            with open(os.path.join(path, "tokenizer.json"), "w") as half_written:
                half_written.write("{half")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_adapter(model, target, tokenizer=BrokenTokenizer())
    assert {name: (target / name).read_bytes() for name in os.listdir(target)} == before
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]


def test_save_adapter_refuses_a_folder_with_other_content(tmp_path, tokenizer):
    model = tiny_soft_prompt_model(tokenizer, "bloom", "prefix_tuning")
    (tmp_path / "checkpoint-10").mkdir()
    with pytest.raises(ValueError, match="Save the adapter into a folder of its own"):
        save_adapter(model, tmp_path)
    assert (tmp_path / "checkpoint-10").is_dir()
    with pytest.raises(TypeError, match="PeftModel"):
        save_adapter(model.get_base_model(), tmp_path / "adapter")


def test_replace_folder_swaps_whole_folders(tmp_path):
    target = tmp_path / "out"
    replace_folder(target, lambda folder: (folder / "a.txt").write_text("1"))
    replace_folder(target, lambda folder: (folder / "b.txt").write_text("2"))
    assert sorted(os.listdir(target)) == ["b.txt"]
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_atomic_writes_replace_files_whole(tmp_path):
    path = atomic_write_json(tmp_path / "x" / "state.json", {"b": 1, "a": [1, 2]})
    assert path.read_text() == '{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}\n'
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and os.listdir(path.parent) == ["state.json"]
    with pytest.raises(TypeError):
        atomic_write_json(path, {"x": object()})
    assert path.read_text() == "new" and os.listdir(path.parent) == ["state.json"]


def test_base_model_id_also_replaces_a_local_tokenizer_path(tmp_path, tokenizer, tokenizer_dir, model_dirs):
    from transformers import AutoModelForCausalLM

    from softprompt_hf import build_soft_prompt_model

    model = build_soft_prompt_model(
        AutoModelForCausalLM.from_pretrained(model_dirs["bloom"]),
        method="prompt_tuning",
        tokenizer=tokenizer,
        tokenizer_name_or_path=str(tokenizer_dir),
    )
    target = save_adapter(model, tmp_path / "adapter", base_model_id="org/base")
    config = (target / "adapter_config.json").read_text()
    assert str(tokenizer_dir) not in config and str(model_dirs["bloom"]) not in config
    assert '"tokenizer_name_or_path": "org/base"' in config
    assert model.peft_config["default"].tokenizer_name_or_path == str(tokenizer_dir)


def _lstm_p_tuning_with_dropout(tokenizer):
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(model_config("bloom", len(tokenizer)))
    return build_soft_prompt_model(
        base,
        method="p_tuning",
        num_virtual_tokens=4,
        encoder_reparameterization_type="LSTM",
        encoder_hidden_size=16,
        encoder_dropout=0.5,
    )


def test_save_adapter_saves_the_prompt_without_dropout_and_gives_the_modes_back(tmp_path, tokenizer):
    model = _lstm_p_tuning_with_dropout(tokenizer)
    model.train()
    model.get_base_model().eval()  # the caller's own mixture of modes is what must come back
    modes = {name: module.training for name, module in model.named_modules()}
    torch.manual_seed(1)
    target = save_adapter(model, tmp_path / "adapter")
    assert {name: module.training for name, module in model.named_modules()} == modes
    saved = load_file(str(target / "adapter_model.safetensors"))["prompt_embeddings"]
    with torch.no_grad():
        dropped = model.get_prompt_embedding_to_save("default")  # still in train mode: dropout applied
        model.eval()
        without_dropout = model.get_prompt_embedding_to_save("default")
    assert (dropped - without_dropout).abs().max() > 1e-3  # the dropout is real, so the test can tell
    torch.testing.assert_close(saved, without_dropout, rtol=0, atol=1e-6)


def test_save_adapter_gives_the_modes_back_when_saving_fails(tmp_path, tokenizer, monkeypatch):
    model = _lstm_p_tuning_with_dropout(tokenizer)
    model.train()
    seen = []

    def broken_save_pretrained(path, **kwargs):
        seen.append(model.training)
        raise OSError("disk full")

    monkeypatch.setattr(model, "save_pretrained", broken_save_pretrained)
    with pytest.raises(OSError, match="disk full"):
        save_adapter(model, tmp_path / "adapter")
    assert seen == [False]  # the save ran in eval mode
    assert all(module.training for module in model.modules())


def test_every_folder_gets_the_card_rendered_from_the_data_in_its_one_settings_file(tmp_path, tokenizer):
    model = tiny_soft_prompt_model(tokenizer, "bloom", "prompt_tuning")
    target = save_adapter(
        model,
        tmp_path / "adapter",
        tokenizer=tokenizer,
        base_model_id="org/base",
        labels=["yes", "no"],
        text_column="body",
        eval_mode="rank",
    )
    settings = json.loads((target / INFERENCE_CONFIG_NAME).read_text())
    expected = {"method", "base_model", "labels", "template", "text_column", "label_tokenization", "eval_mode", "task"}
    assert set(settings) == expected | {"tokenizer", CARD_KEY}
    assert settings["method"] == "prompt_tuning" and settings["base_model"] == "org/base"
    assert settings["task"] == "classification"  # what predict does with the folder: label, not write free text
    assert settings["label_tokenization"] == "joint"  # the collator's default, which predict then uses
    assert settings["labels"] == ["yes", "no"] and settings["template"] == DEFAULT_TEMPLATE
    card = ModelCard.load(target / "README.md")  # ours, not peft's generic card
    assert card.data.base_model == "org/base" and card.data.library_name == "peft"
    assert card.content == render_model_card(ModelCardInputs.from_dict(settings[CARD_KEY])).content
    assert "text_column='body'" in card.text and settings[CARD_KEY]["labels"] == ["yes", "no"]


GEMMA3_VOCAB_SIZE = 262_144
ADAPTER_FILES = ["README.md", "adapter_config.json", "adapter_model.safetensors", INFERENCE_CONFIG_NAME]


@pytest.fixture(scope="module")
def big_vocab_base(tmp_path_factory):
    """A tiny Llama-style model saved with a tokenizer of Gemma 3's vocabulary size (262,144 tokens), as a
    pretrained model's folder holds it: its tokenizer.json is megabytes, the model a few layers of width 8."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}
    vocab.update((f"w{i}", i) for i in range(len(vocab), GEMMA3_VOCAB_SIZE))
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    config = LlamaConfig(
        vocab_size=GEMMA3_VOCAB_SIZE,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("big-vocab")
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _prompt_tuning_on(base_dir):
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(base_dir)
    return build_soft_prompt_model(base, method="prompt_tuning", prompt_tuning_init="RANDOM", num_virtual_tokens=8)


def _settings(folder):
    return json.loads((folder / INFERENCE_CONFIG_NAME).read_text())


def test_adapter_folder_holds_no_copy_of_the_base_models_tokenizer(tmp_path, big_vocab_base):
    """Issue 15: with Gemma 3's 262k vocabulary every adapter folder carried a 33 MB tokenizer.json beside a
    36 KB adapter. The base model's own tokenizer, unchanged, is not copied: softprompt_hf.json and the card say
    to load it from the base model."""
    tokenizer = AutoTokenizer.from_pretrained(big_vocab_base)
    model = _prompt_tuning_on(big_vocab_base)
    folder = save_adapter(model, tmp_path / "adapter", tokenizer=tokenizer, labels=["w5", "w6"])
    assert sorted(os.listdir(folder)) == ADAPTER_FILES
    base_tokenizer_size = (big_vocab_base / "tokenizer.json").stat().st_size
    folder_size = sum(path.stat().st_size for path in folder.iterdir())
    assert base_tokenizer_size > 5_000_000 and folder_size < 50_000  # 8 virtual tokens of width 8, and text
    assert _settings(folder)["tokenizer"] == "base_model" and _settings(folder)["base_model"] == str(big_vocab_base)
    card = (folder / "README.md").read_text()
    assert f'tokenizer = AutoTokenizer.from_pretrained({str(big_vocab_base)!r}, padding_side="left")' in card
    assert "AutoTokenizer.from_pretrained(adapter" not in card
    # What the folder says to load is the tokenizer the model was trained with.
    recorded = AutoTokenizer.from_pretrained(_settings(folder)["base_model"])
    assert recorded("w7 w8 w262143").input_ids == tokenizer("w7 w8 w262143").input_ids
    assert (recorded.pad_token, recorded.eos_token, len(recorded)) == ("<pad>", "</s>", GEMMA3_VOCAB_SIZE)


@pytest.fixture(scope="module")
def no_pad_base(tmp_path_factory, model_dirs):
    """The tiny GPT-2 model with a tokenizer that has no pad token, as GPT-2's, Llama's or Mistral's has none."""
    path = tmp_path_factory.mktemp("no-pad")
    shutil.copytree(model_dirs["gpt2"], path, dirs_exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(path)
    return path


def test_a_tokenizer_loaded_online_is_still_the_base_models(tmp_path, model_dirs):
    """transformers 5.24 writes how a tokenizer was loaded (local_files_only: false online, true offline) into
    tokenizer_config.json (softprompt_hf.core.upstream, entry 26): that alone does not make it another tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(model_dirs["gpt2"])
    tokenizer.init_kwargs["local_files_only"] = False  # what a load with the Hub reachable records
    folder = save_adapter(_prompt_tuning_on(model_dirs["gpt2"]), tmp_path / "adapter", tokenizer=tokenizer)
    assert sorted(os.listdir(folder)) == ADAPTER_FILES and _settings(folder)["tokenizer"] == "base_model"


CHANGES = {
    "pad token set to EOS": lambda tokenizer: setattr(tokenizer, "pad_token", tokenizer.eos_token),
    "added token": lambda tokenizer: tokenizer.add_tokens(["<extra>"]),
    "chat template": lambda tokenizer: setattr(tokenizer, "chat_template", "{{ messages[0]['content'] }}"),
}


@pytest.mark.parametrize("change", list(CHANGES))
def test_a_tokenizer_that_differs_from_the_base_models_is_saved_with_the_adapter(tmp_path, no_pad_base, change):
    tokenizer = AutoTokenizer.from_pretrained(no_pad_base)
    assert tokenizer.pad_token is None
    CHANGES[change](tokenizer)
    model = _prompt_tuning_on(no_pad_base)
    folder = save_adapter(model, tmp_path / "adapter", tokenizer=tokenizer)
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(os.listdir(folder))
    assert _settings(folder)["tokenizer"] == "adapter"
    assert 'AutoTokenizer.from_pretrained(adapter, padding_side="left")' in (folder / "README.md").read_text()
    saved = AutoTokenizer.from_pretrained(folder)
    for name in ("pad_token", "chat_template"):
        assert getattr(saved, name) == getattr(tokenizer, name)
    assert len(saved) == len(tokenizer)


def test_save_tokenizer_always_never_or_refused(tmp_path, no_pad_base):
    tokenizer = AutoTokenizer.from_pretrained(no_pad_base)
    model = _prompt_tuning_on(no_pad_base)
    kept = save_adapter(model, tmp_path / "always", tokenizer=tokenizer, save_tokenizer=True)
    assert "tokenizer.json" in os.listdir(kept) and _settings(kept)["tokenizer"] == "adapter"
    # A card of the caller's own may load the tokenizer from the folder (build_model_card's snippets do): kept.
    own_card = save_adapter(model, tmp_path / "own-card", tokenizer=tokenizer, card=ModelCard("---\n---\nMine."))
    assert "tokenizer.json" in os.listdir(own_card) and _settings(own_card)["tokenizer"] == "adapter"
    CHANGES["pad token set to EOS"](tokenizer)
    left_out = save_adapter(model, tmp_path / "never", tokenizer=tokenizer, save_tokenizer=False)
    assert sorted(os.listdir(left_out)) == ADAPTER_FILES and _settings(left_out)["tokenizer"] == "base_model"
    # No tokenizer given: inference can only use the base model's, and the folder says so.
    bare = save_adapter(model, tmp_path / "bare")
    assert sorted(os.listdir(bare)) == ADAPTER_FILES and _settings(bare)["tokenizer"] == "base_model"
    with pytest.raises(ValueError, match="save_tokenizer must be 'auto', True or False"):
        save_adapter(model, tmp_path / "bad", tokenizer=tokenizer, save_tokenizer="yes")
    assert not (tmp_path / "bad").exists()


def test_a_base_model_without_a_tokenizer_keeps_the_runs(tmp_path, model_dirs):
    """The base model's tokenizer cannot be loaded to compare (here a folder with the weights only; offline, a
    Hub id that is not in the cache): the tokenizer is saved, as before."""
    weights_only = tmp_path / "weights-only"
    weights_only.mkdir()
    for path in model_dirs["gpt2"].iterdir():
        if not path.name.startswith("tokenizer"):
            shutil.copy(path, weights_only / path.name)
    tokenizer = AutoTokenizer.from_pretrained(model_dirs["gpt2"])
    folder = save_adapter(_prompt_tuning_on(weights_only), tmp_path / "adapter", tokenizer=tokenizer)
    assert "tokenizer.json" in os.listdir(folder) and _settings(folder)["tokenizer"] == "adapter"
