"""softprompt_hf.serving.export and ``softprompt-hf export``: a soft prompt exported as prompt embeddings, fed to the
plain base model (no peft) as ``inputs_embeds = [exported | the base model's token embeddings]``, gives the adapter's
greedy outputs and label scores; Gemma's embedding scale applies to the token embeddings only."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
from chat_models import SYSTEM, USER, chat_tokenizer
from conftest import build_tokenizer, labelled_rows, method_options, model_config
from safetensors import safe_open
from safetensors.torch import load_file
from trained_adapters import LABELS, one_thread, single_thread
from transformers import AutoModelForCausalLM, AutoTokenizer

import softprompt_hf
from softprompt_hf import ChatTemplate, PromptTemplate, build_soft_prompt_model, generate_labels, rank_labels
from softprompt_hf.adapter.saving import save_adapter
from softprompt_hf.cli import main as cli_main
from softprompt_hf.inference.labels import generate_label_ids
from softprompt_hf.inference.loops import decode_outputs
from softprompt_hf.serving.export import (
    EXPORT_CONFIG_NAME,
    EXPORT_TENSOR_NAME,
    EXPORT_WEIGHTS_NAME,
    export_soft_prompt,
    soft_prompt_embeddings,
)
from softprompt_hf.serving.predict import load_adapter, predict

pytestmark = pytest.mark.usefixtures(one_thread.__name__)

ARCHS = ("gpt2", "llama", "gemma3_text")
METHODS = ("prompt_tuning", "p_tuning")
TEMPLATE = "{text_column} says: {text} Label : "
# Of different lengths; the longest crosses the tiny Gemma's 20-token sliding window.
TEXTS = [row["Tweet text"] for row in labelled_rows(8, seed=11)[:4]] + ["hi", "@Acme a much longer tweet " * 3]


@pytest.fixture(scope="module")
def base_dirs(tmp_path_factory) -> dict[str, Path]:
    """Tiny random GPT-2, Llama and Gemma 3 models saved with the tiny tokenizer, and a Llama in bfloat16."""
    tokenizer = build_tokenizer()
    dirs = {}
    for arch in (*ARCHS, "llama-bf16"):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(model_config(arch.removesuffix("-bf16"), len(tokenizer)))
        if arch.endswith("-bf16"):
            model = model.to(torch.bfloat16)
        path = tmp_path_factory.mktemp(f"base-{arch}")
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        dirs[arch] = path
    return dirs


def _adapter(base_dir: Path, method: str, folder: Path, seed: int = 0):
    """A random 4-token soft prompt of ``method`` (P-tuning: the MLP encoder) on the model in ``base_dir``, saved
    with its labels and template to ``folder``: returns (in-memory model, tokenizer, folder)."""
    tokenizer = AutoTokenizer.from_pretrained(base_dir)  # the base model's own: the folder holds none
    torch.manual_seed(seed)
    model = build_soft_prompt_model(
        AutoModelForCausalLM.from_pretrained(base_dir),
        **method_options(
            method, prompt_tuning_init="RANDOM", num_virtual_tokens=4, encoder_reparameterization_type="MLP"
        ),
    )
    model.eval()
    save_adapter(model, folder, tokenizer=tokenizer, labels=LABELS, template=TEMPLATE, text_column="Tweet text")
    return model, tokenizer, folder


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, base_dirs):
    """(arch, method) -> (in-memory model, tokenizer, saved folder)."""
    saved = {}
    with single_thread():
        for arch in ARCHS:
            for method in METHODS:
                saved[arch, method] = _adapter(base_dirs[arch], method, tmp_path_factory.mktemp(arch) / method)
    return saved


def _exported(folder: Path) -> tuple[dict, torch.Tensor]:
    return json.loads((folder / EXPORT_CONFIG_NAME).read_text()), load_file(folder / EXPORT_WEIGHTS_NAME)[
        EXPORT_TENSOR_NAME
    ]


def _template(description: dict) -> PromptTemplate:
    """The prompt as soft_prompt.json describes it: what a server would build."""
    prompt = description["prompt"]
    assert prompt["kind"] == "template"
    return PromptTemplate(prompt["template"], prompt["text_column"], prompt["label_tokenization"])


def _inputs_embeds(base, soft: torch.Tensor | None, ids: list[int]) -> torch.Tensor:
    """``[soft | the base model's token embeddings of ids]``, one row; no soft prompt: the tokens alone."""
    tokens = base.get_input_embeddings()(torch.tensor([ids]))[0]
    return (tokens if soft is None else torch.cat([soft, tokens]))[None]


@torch.no_grad()
def _logits(base, embeds: torch.Tensor) -> torch.Tensor:
    mask = torch.ones(embeds.shape[:2], dtype=torch.long)
    return base(inputs_embeds=embeds, attention_mask=mask).logits[0]


def _greedy(base, soft, prompts: list[list[int]], max_new_tokens: int, stops) -> list[list[int]]:
    """Greedy decoding on the plain base model with a full forward at every step (no cache), one prompt at a time,
    up to and including a stop token."""
    outputs = []
    for prompt in prompts:
        generated: list[int] = []
        while len(generated) < max_new_tokens:
            token = int(_logits(base, _inputs_embeds(base, soft, prompt + generated))[-1].argmax())
            generated.append(token)
            if token in stops:
                break
        outputs.append(generated)
    return outputs


def _scores(base, soft, prompts: list[list[int]], label_ids: dict[str, list[int]]) -> list[dict[str, float]]:
    """Each label's log-likelihood (its ids, EOS included) after each prompt, on the plain base model."""
    rows = []
    for prompt in prompts:
        row = {}
        for label, target in label_ids.items():
            logits = _logits(base, _inputs_embeds(base, soft, prompt + target))[-len(target) - 1 : -1]
            log_probs = torch.log_softmax(logits.float(), dim=-1)
            row[label] = float(log_probs.gather(-1, torch.tensor(target)[:, None]).sum())
        rows.append(row)
    return rows


def _close(actual: list[dict[str, float]], expected: list[dict[str, float]]) -> None:
    # Another batch shape is another matrix-product shape: equal to float32 rounding only.
    assert [list(row) for row in actual] == [list(row) for row in expected]
    torch.testing.assert_close(
        [list(row.values()) for row in actual], [list(row.values()) for row in expected], rtol=1e-5, atol=1e-4
    )


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", ARCHS)
def test_the_plain_base_model_fed_the_export_gives_the_adapters_outputs_and_scores(
    adapters, base_dirs, arch, method, tmp_path
):
    _, tokenizer, folder = adapters[arch, method]
    out = export_soft_prompt(folder, tmp_path / "served")
    description, soft = _exported(out)
    assert soft.shape == (4, 32) and soft.dtype == torch.float32 and soft.is_contiguous()
    assert description["sha256"] == hashlib.sha256((out / EXPORT_WEIGHTS_NAME).read_bytes()).hexdigest()
    template = _template(description)
    prompts = [template.encode(tokenizer, text) for text in TEXTS]
    label_ids = description["label_token_ids"]
    stops = description["stop_token_ids"]
    max_new_tokens = max(len(ids) for ids in label_ids.values())  # EOS, or one token past the longest label
    base = AutoModelForCausalLM.from_pretrained(base_dirs[arch]).eval()  # no peft anywhere

    greedy = _greedy(base, soft, prompts, max_new_tokens, stops)
    loaded = load_adapter(folder, device="cpu")
    engine = generate_label_ids(loaded.model, tokenizer, TEXTS, template=template, max_new_tokens=max_new_tokens)
    assert greedy == engine
    outputs = decode_outputs(tokenizer, greedy, stops)
    assert outputs == generate_labels(loaded.model, tokenizer, TEXTS, LABELS, template=template, show_progress=False)
    assert outputs == [p.output for p in predict(loaded, TEXTS)]  # the fixed model.generate()

    scores = _scores(base, soft, prompts, label_ids)
    _close(scores, rank_labels(loaded.model, tokenizer, TEXTS, LABELS, template=template, show_progress=False))
    _close(scores, [p.scores for p in predict(loaded, TEXTS, mode="rank")])

    # The soft prompt matters: without it the base model scores (and, here, labels) otherwise, so an export that
    # were ignored or zero could not pass the checks above.
    bare = _scores(base, None, prompts, label_ids)
    gaps = [abs(row[label] - bare_row[label]) for row, bare_row in zip(scores, bare, strict=True) for label in row]
    assert max(gaps) > 0.5
    assert greedy != _greedy(base, None, prompts, max_new_tokens, stops)


@pytest.mark.parametrize("method", METHODS)
def test_gemma_scales_the_token_embeddings_and_never_the_soft_prompt(adapters, method, tmp_path):
    """Gemma 3's input-embedding layer multiplies token embeddings by sqrt(hidden_size); peft's virtual tokens
    bypass it. The documented rule reproduces the adapter's logits, and either other rule does not."""
    model, tokenizer, folder = adapters["gemma3_text", method]
    description, soft = _exported(export_soft_prompt(folder, tmp_path / "served"))
    assert description["soft_prompt_scaled"] is False
    assert description["input_embedding_scale"] == pytest.approx(math.sqrt(32), rel=1e-6)
    assert "includes its own scale" in description["token_embeddings"]
    base = model.get_base_model()
    embedding = base.get_input_embeddings()
    assert type(embedding).__name__ == "Gemma3TextScaledWordEmbedding"
    ids = _template(description).encode(tokenizer, TEXTS[0])
    with torch.no_grad():
        expected = model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long))
        tokens = embedding(torch.tensor(ids))
        unscaled_tokens = embedding.weight[torch.tensor(ids)]
    assert not torch.allclose(tokens, unscaled_tokens)  # the layer scales

    def gap(embeds: torch.Tensor) -> float:
        return float((_logits(base, embeds[None]) - expected.logits[0]).abs().max())

    scale = math.sqrt(32)
    right = gap(torch.cat([soft, tokens]))
    soft_scaled = gap(torch.cat([soft * scale, tokens]))
    tokens_unscaled = gap(torch.cat([soft, unscaled_tokens]))
    assert right < 1e-5
    assert soft_scaled > 0.1 and tokens_unscaled > 0.1, (soft_scaled, tokens_unscaled)


@pytest.mark.parametrize("method", METHODS)
def test_an_in_memory_model_exports_what_its_saved_folder_exports(adapters, method, tmp_path):
    model, tokenizer, folder = adapters["llama", method]
    model.train()  # as during training: the export runs in eval mode (no dropout) and gives the mode back
    try:
        from_memory = export_soft_prompt(
            model, tmp_path / "memory", tokenizer=tokenizer, labels=LABELS, template=TEMPLATE, text_column="Tweet text"
        )
        assert model.training and all(module.training for module in model.prompt_encoder.modules())
    finally:
        model.eval()
    from_folder = export_soft_prompt(folder, tmp_path / "folder")
    memory, memory_soft = _exported(from_memory)
    saved, saved_soft = _exported(from_folder)
    torch.testing.assert_close(memory_soft, saved_soft, rtol=0, atol=0)
    torch.testing.assert_close(memory_soft, model.get_prompt(batch_size=1)[0].detach(), rtol=0, atol=0)
    assert memory == saved  # the same file, byte for byte (sha256), and the same description


def test_the_description_says_what_to_prepend_and_how(adapters, tmp_path):
    _, tokenizer, folder = adapters["gpt2", "p_tuning"]
    description, soft = _exported(export_soft_prompt(folder, tmp_path / "served"))
    assert sorted(description) == sorted(
        [
            "format", "format_version", "softprompt_hf_version", "method", "base_model", "file", "tensor", "sha256",
            "num_virtual_tokens", "hidden_size", "dtype", "base_model_dtype", "position", "token_embeddings",
            "soft_prompt_scaled", "input_embedding_scale", "scaling", "inputs_embeds", "prompt", "stop_token_ids",
            "task", "labels", "label_token_ids",
        ]
    )  # fmt: skip
    settings = json.loads((folder / "softprompt_hf.json").read_text())
    assert description["format_version"] == 1
    assert description["method"] == "p_tuning"
    assert description["base_model"] == settings["base_model"]
    assert (description["num_virtual_tokens"], description["hidden_size"]) == tuple(soft.shape) == (4, 32)
    assert (description["dtype"], description["base_model_dtype"]) == ("float32", "float32")
    assert (description["file"], description["tensor"]) == (EXPORT_WEIGHTS_NAME, EXPORT_TENSOR_NAME)
    assert description["position"] == "before the prompt's token embeddings"
    assert description["token_embeddings"] == (
        "the base model's input-embedding layer output (model.get_input_embeddings()(ids), which includes its own "
        "scale, e.g. Gemma's sqrt(hidden_size))"
    )
    assert description["soft_prompt_scaled"] is False
    assert description["input_embedding_scale"] is None  # GPT-2 scales nothing
    prompt = description["prompt"]
    assert {key: prompt[key] for key in ("kind", "template", "text_column", "label_tokenization", "tokenizer")} == {
        "kind": "template",
        "template": TEMPLATE,
        "text_column": "Tweet text",
        "label_tokenization": "joint",
        "tokenizer": "base_model",
    }
    assert "PromptTemplate(template, text_column, label_tokenization).encode(tokenizer, text)" in prompt["token_ids"]
    assert description["task"] == "classification"
    assert description["labels"] == LABELS
    template = _template(description)
    assert description["label_token_ids"] == {label: template.encode_target(tokenizer, label) for label in LABELS}
    assert description["stop_token_ids"] == [tokenizer.eos_token_id]
    with safe_open(str(tmp_path / "served" / EXPORT_WEIGHTS_NAME), "pt") as weights:
        assert list(weights.keys()) == [EXPORT_TENSOR_NAME]
        assert weights.metadata() == {"format": "pt"}


def test_a_bfloat16_base_model_gives_a_bfloat16_soft_prompt(base_dirs, tmp_path):
    model, tokenizer, folder = _adapter(base_dirs["llama-bf16"], "prompt_tuning", tmp_path / "adapter")
    assert model.get_input_embeddings().weight.dtype == torch.bfloat16
    description, soft = _exported(export_soft_prompt(folder, tmp_path / "served"))
    assert soft.dtype == torch.bfloat16
    assert (description["dtype"], description["base_model_dtype"]) == ("bfloat16", "bfloat16")
    torch.testing.assert_close(soft, model.get_prompt(batch_size=1)[0].detach().to(torch.bfloat16), rtol=0, atol=0)
    # What peft's forward feeds the bfloat16 model, so the same logits.
    base = model.get_base_model()
    ids = PromptTemplate(TEMPLATE).encode(tokenizer, TEXTS[0])
    with torch.no_grad():
        expected = model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    torch.testing.assert_close(_logits(base, _inputs_embeds(base, soft, ids)), expected.logits[0], rtol=0, atol=0)

    as_float16 = export_soft_prompt(folder, tmp_path / "fp16", dtype="float16")
    description, soft = _exported(as_float16)
    assert soft.dtype == torch.float16
    assert (description["dtype"], description["base_model_dtype"]) == ("float16", "bfloat16")


def test_a_chat_template_is_described_with_its_stop_token(tmp_path):
    """An in-memory Gemma 3 model trained on prompts in its chat template: the soft prompt goes before the chat
    template's BOS, and the description's chat rebuilds the prompt the adapter scores."""
    tokenizer = chat_tokenizer("gemma")
    chat = ChatTemplate(user=USER, system=SYSTEM, text_column="Tweet text")
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(model_config("gemma3_text", len(tokenizer)))
    model = build_soft_prompt_model(base, method="prompt_tuning", prompt_tuning_init="RANDOM", num_virtual_tokens=4)
    model.eval()
    out = export_soft_prompt(model, tmp_path / "served", tokenizer=tokenizer, labels=LABELS, template=chat)
    description, soft = _exported(out)
    prompt = description["prompt"]
    assert (prompt["kind"], prompt["chat"], prompt["text_column"]) == (
        "chat",
        {"user": USER, "system": SYSTEM},
        "Tweet text",
    )
    assert "template" not in prompt and "label_tokenization" not in prompt
    assert "apply_chat_template" in prompt["token_ids"]
    assert description["stop_token_ids"] == list(chat.stop_ids(tokenizer))
    assert tokenizer.convert_tokens_to_ids("<end_of_turn>") in description["stop_token_ids"]
    rebuilt = ChatTemplate(**prompt["chat"], text_column=prompt["text_column"])
    prompts = [rebuilt.encode(tokenizer, text) for text in TEXTS[:3]]
    assert all(ids[0] == tokenizer.bos_token_id for ids in prompts)  # after the soft prompt
    expected = rank_labels(model, tokenizer, TEXTS[:3], LABELS, template=chat, show_progress=False)
    _close(_scores(model.get_base_model(), soft, prompts, description["label_token_ids"]), expected)


def test_prefix_tuning_is_refused_with_the_reason(base_dirs, tmp_path):
    model, _, folder = _adapter(base_dirs["llama"], "prefix_tuning", tmp_path / "adapter")
    for adapter in (folder, model):
        with pytest.raises(ValueError, match=r"Prefix tuning cannot be exported as prompt embeddings") as caught:
            export_soft_prompt(adapter, tmp_path / "served", tokenizer=build_tokenizer())
        assert "key/value pair in every attention layer" in str(caught.value)
        assert "prompt_embeds" in str(caught.value)
    with pytest.raises(ValueError, match="prompt tuning or P-tuning"):
        soft_prompt_embeddings(model)
    assert not (tmp_path / "served").exists()


def test_an_existing_output_is_replaced_only_with_overwrite(adapters, tmp_path):
    _, _, first = adapters["llama", "prompt_tuning"]
    _, _, second = adapters["llama", "p_tuning"]
    target = export_soft_prompt(first, tmp_path / "served")
    before = (target / EXPORT_WEIGHTS_NAME).read_bytes()
    with pytest.raises(FileExistsError, match=r"already exists: pass overwrite=True \(CLI: --overwrite\)"):
        export_soft_prompt(second, target)
    assert (target / EXPORT_WEIGHTS_NAME).read_bytes() == before
    export_soft_prompt(second, target, overwrite=True)
    assert _exported(target)[0]["method"] == "p_tuning"
    assert sorted(p.name for p in target.iterdir()) == sorted([EXPORT_CONFIG_NAME, EXPORT_WEIGHTS_NAME])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["served"]  # no temporary folder left behind

    # overwrite replaces an earlier export, never a folder of other files nor a file.
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"holds files that are not part of an export \(notes\.txt\)"):
        export_soft_prompt(first, tmp_path / "other", overwrite=True)
    (tmp_path / "file").write_text("mine")
    with pytest.raises(ValueError, match="exists and is not a folder"):
        export_soft_prompt(first, tmp_path / "file", overwrite=True)
    assert (tmp_path / "other" / "notes.txt").read_text() == (tmp_path / "file").read_text() == "mine"


def test_bad_arguments_say_what_to_pass(adapters, tmp_path):
    model, _, folder = adapters["gpt2", "prompt_tuning"]
    with pytest.raises(ValueError, match=r"needs its tokenizer: pass tokenizer="):
        export_soft_prompt(model, tmp_path / "a")
    with pytest.raises(ValueError, match=r"dtype='float8': choose one of \['float32', 'float16', 'bfloat16'\]"):
        export_soft_prompt(folder, tmp_path / "b", dtype="float8")
    with pytest.raises(ValueError, match="takes a soft-prompt PeftModel"):
        soft_prompt_embeddings(model.get_base_model())
    with pytest.raises(ValueError, match=r"takes a soft-prompt PeftModel \(prompt tuning or P-tuning\), got GPT2"):
        export_soft_prompt(model.get_base_model(), tmp_path / "c")
    assert not any(tmp_path.iterdir())


def test_the_command_exports_and_refuses_in_one_line(adapters, base_dirs, tmp_path, capsys):
    _, _, folder = adapters["gemma3_text", "p_tuning"]
    out = tmp_path / "served"
    assert cli_main(["export", str(folder), str(out)]) == 0
    said = capsys.readouterr().out
    assert f"Exported the p_tuning soft prompt of {folder} to {out}" in said and "(4 x 32, float32)" in said
    assert sorted(p.name for p in out.iterdir()) == sorted([EXPORT_CONFIG_NAME, EXPORT_WEIGHTS_NAME])

    assert cli_main(["export", str(folder), str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("softprompt-hf export: error: ") and "--overwrite" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err

    args = ["export", str(folder), str(out), "--overwrite", "--dtype", "bfloat16", "--base-model"]
    assert cli_main([*args, str(base_dirs["gemma3_text"])]) == 0
    capsys.readouterr()
    assert _exported(out)[0]["dtype"] == "bfloat16"

    prefix = _adapter(base_dirs["gpt2"], "prefix_tuning", tmp_path / "prefix")[2]
    capsys.readouterr()
    for argv in (["export", str(prefix), str(tmp_path / "p")], ["export", str(tmp_path / "none"), str(tmp_path / "n")]):
        assert cli_main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("softprompt-hf export: error: ") and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "p").exists() and not (tmp_path / "n").exists()


def test_export_soft_prompt_is_public():
    assert softprompt_hf.export_soft_prompt is export_soft_prompt
    assert "export_soft_prompt" in softprompt_hf.__all__
