"""Atomic saving: a failed or interrupted save leaves the previous complete adapter in place."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch
from conftest import model_config, tiny_soft_prompt_model
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from softprompt_hf import build_soft_prompt_model
from softprompt_hf.card import ModelCardInputs, render_model_card
from softprompt_hf.prompt import DEFAULT_TEMPLATE
from softprompt_hf.saving import (
    CARD_KEY,
    INFERENCE_CONFIG_NAME,
    atomic_write_json,
    atomic_write_text,
    replace_folder,
    save_adapter,
)


def test_save_adapter_writes_a_complete_folder_with_the_hub_id(tmp_path, tokenizer, model_dirs):
    model = tiny_soft_prompt_model(tokenizer, "bloom", "p_tuning")
    target = save_adapter(model, tmp_path / "adapter", tokenizer=tokenizer, base_model_id="org/base", labels=["a"])
    names = sorted(os.listdir(target))
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "softprompt_hf.json"} <= set(names)
    assert '"base_model_name_or_path": "org/base"' in (target / "adapter_config.json").read_text()
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
    assert set(settings) == {
        "method",
        "base_model",
        "labels",
        "template",
        "text_column",
        "label_tokenization",
        "eval_mode",
        CARD_KEY,
    }
    assert settings["method"] == "prompt_tuning" and settings["base_model"] == "org/base"
    assert settings["label_tokenization"] == "joint"  # the collator's default, which predict then uses
    assert settings["labels"] == ["yes", "no"] and settings["template"] == DEFAULT_TEMPLATE
    card = ModelCard.load(target / "README.md")  # ours, not peft's generic card
    assert card.data.base_model == "org/base" and card.data.library_name == "peft"
    assert card.content == render_model_card(ModelCardInputs.from_dict(settings[CARD_KEY])).content
    assert "text_column='body'" in card.text and settings[CARD_KEY]["labels"] == ["yes", "no"]
