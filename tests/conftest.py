"""Shared fixtures: tiny tokenizers and causal LMs built in the test session, never downloaded."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import random
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    BloomConfig,
    Gemma3TextConfig,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    PreTrainedTokenizerFast,
)

METHODS = ("prompt_tuning", "p_tuning", "prefix_tuning")

_COMPANIES = ["@Acme", "@FastShip", "@TelcoHelp", "@SkyAir", "@BankCo", "@PizzaNow"]
_COMPLAINTS = [
    "my order never arrived and nobody answers",
    "third time the app crashed today, fix it",
    "charged twice for one ticket, I want a refund",
    "the internet has been down since monday!!",
    "waited an hour on hold, terrible service",
    "my parcel came broken again",
]
_PRAISE = [
    "thanks for the quick delivery, love it",
    "great support today, problem solved",
    "the new menu looks amazing",
    "happy with my new phone plan",
    "see you at the launch event tomorrow",
    "what time does the store open on sunday?",
]


def labelled_rows(n: int = 24, seed: int = 0) -> list[dict]:
    """Balanced tweet-like rows in RAFT twitter_complaints' schema plus ``text_label``."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        complaint = i % 2 == 0
        body = rng.choice(_COMPLAINTS if complaint else _PRAISE)
        rows.append(
            {
                "ID": i,
                "Tweet text": f"{rng.choice(_COMPANIES)} {body}",
                "Label": 1 if complaint else 2,
                "text_label": "complaint" if complaint else "no complaint",
            }
        )
    return rows


def _corpus() -> list[str]:
    lines = [f"Tweet text : {c} {b} Label : " for c in _COMPANIES for b in _COMPLAINTS + _PRAISE]
    lines += ["complaint", "no complaint", "Classify if the tweet is a complaint or no complaint."]
    return lines * 3


def build_tokenizer(add_bos: bool = False) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (about 400 tokens) trained on tweet-like text, EOS reused as pad."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def model_config(arch: str, vocab_size: int):
    # A wide weight init (0.2 instead of 0.02) makes the random model's outputs depend on its inputs,
    # so a soft prompt has something to steer and its loss visibly falls in a few dozen steps.
    common = {
        "vocab_size": vocab_size,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 2,
        "initializer_range": 0.2,
    }
    if arch == "bloom":
        return BloomConfig(hidden_size=32, n_layer=2, n_head=4, **common)
    if arch == "gpt2":
        return GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=256, **common)
    llama_like = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 256,
    }
    if arch == "llama":
        return LlamaConfig(**llama_like, **common)
    if arch == "mistral":
        return MistralConfig(**llama_like, sliding_window=24, **common)
    if arch == "gemma3_text":
        # Gemma 3's mix of local (sliding-window) layers and a global one, here one of each.
        return Gemma3TextConfig(
            **llama_like,
            head_dim=8,
            query_pre_attn_scalar=8,
            sliding_window=20,
            layer_types=["sliding_attention", "full_attention"],
            **common,
        )
    if arch == "qwen3":
        return AutoConfig.for_model(arch, **llama_like, head_dim=8, **common)
    if arch == "gpt_bigcode":
        # peft 0.21.2's prefix tuning cannot run GPTBigCode's default multi-query attention (its prefix cache
        # gets n_head key/value heads where the layers expect one; even the training forward fails), and it
        # would read a num_key_value_heads attribute as the key/value head count: one config without either
        # serves all three methods.
        return AutoConfig.for_model(arch, n_embd=32, n_layer=2, n_head=4, n_positions=256, multi_query=False, **common)
    if arch in MORE_ARCHS:
        return AutoConfig.for_model(arch, **llama_like, **common)
    raise ValueError(arch)


# Rotary-position models with and without a fused QKV, for checks beyond the main matrix (ARCHS).
MORE_ARCHS = ("qwen2", "gpt_neox", "phi")


ARCHS = ("gpt2", "llama", "bloom")

# Sliding-window attention, with windows small enough for the test prompts to cross (window_crossing_texts):
# Mistral (24 tokens, every layer) and Gemma 3 (20 tokens in its local layer).
SLIDING_ARCHS = ("mistral", "gemma3_text")


def window_crossing_texts() -> list[str]:
    """Tweets whose prompts (with a few virtual and new tokens) are, some, short enough and of different lengths
    to share a padded batch within SLIDING_ARCHS' windows, and, the others, long enough to cross them."""
    short = ["hi", "@Acme hi", "@Acme thanks", "@Acme my parcel", "@SkyAir late again"]
    return short + [row["Tweet text"] for row in labelled_rows(6)] + ["@Acme a much longer tweet " * 3]


def method_options(method: str, **options) -> dict:
    """``method=method`` and those of ``options`` that apply to it: ``SoftPromptArguments`` refuses an option of
    another method (``prompt_tuning_init`` for P-tuning, ``encoder_hidden_size`` for prefix tuning without
    projection), so a test run over the three methods passes each only its own."""
    from softprompt_hf.modeling.methods import METHOD_OPTIONS

    kept = {name: value for name, value in options.items() if method in METHOD_OPTIONS.get(name, (method,))}
    if method == "prefix_tuning" and not kept.get("prefix_projection"):
        kept.pop("encoder_hidden_size", None)
    return {"method": method, **kept}


def tiny_soft_prompt_model(tokenizer, arch: str, method: str):
    """A tiny random ``arch`` model with a random 4-token soft prompt of ``method``, seeded."""
    from softprompt_hf import build_soft_prompt_model

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(model_config(arch, len(tokenizer)))
    return build_soft_prompt_model(base, **method_options(method, prompt_tuning_init="RANDOM", num_virtual_tokens=4))


def tiny_trainer(model, tokenizer, output_dir, steps: int = 4, rows: int = 16, callbacks=()):
    """The stock Trainer for ``model`` on ``rows`` labelled rows, batches of 4, ``steps`` steps, logging every
    step, saving nothing."""
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    from softprompt_hf import SoftPromptDataCollator

    args = TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=4,
        max_steps=steps,
        learning_rate=3e-2,
        logging_steps=1,
        remove_unused_columns=False,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )
    return Trainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(labelled_rows(rows)),
        data_collator=SoftPromptDataCollator(tokenizer),
        callbacks=list(callbacks),
    )


def train_a_few_steps(model, tokenizer, output_dir, steps: int = 4):
    """Trains ``model`` with the stock Trainer on 16 labelled rows, batches of 4, logging every step; returns
    the logged losses and the trainable parameters after training."""
    trainer = tiny_trainer(model, tokenizer, output_dir, steps=steps)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return losses, [p.detach().clone() for p in model.parameters() if p.requires_grad]


@torch.no_grad()
def next_token_logits(model, tokenizer, texts) -> torch.Tensor:
    """The model's next-token logits after each text's prompt, one text at a time (eval mode)."""
    from softprompt_hf.data.prompt import PromptTemplate

    model.eval()
    rows = []
    for text in texts:
        ids = torch.tensor([PromptTemplate().encode(tokenizer, text)])
        rows.append(model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1])
    return torch.stack(rows)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tokenizer")
    build_tokenizer().save_pretrained(path)
    return path


@pytest.fixture
def tokenizer(tokenizer_dir):
    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="session")
def bos_tokenizer():
    return build_tokenizer(add_bos=True)


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory, tokenizer_dir) -> dict[str, Path]:
    """Tiny random causal LMs (Bloom, GPT-2, Llama style) saved to disk with the tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    dirs = {}
    for arch in ("bloom", "gpt2", "llama"):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(model_config(arch, len(tokenizer)))
        path = tmp_path_factory.mktemp(f"tiny-{arch}")
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        dirs[arch] = path
    return dirs


@pytest.fixture
def rows() -> list[dict]:
    return labelled_rows()


@pytest.fixture
def restore_recipe_logging():
    """A recipe configures logging for its process (setup_logging); undo that for the tests that follow."""
    import logging

    from transformers.utils import logging as hf_logging

    ours = logging.getLogger("softprompt_hf")
    level, verbosity = ours.level, hf_logging.get_verbosity()
    yield
    ours.setLevel(level)
    hf_logging.set_verbosity(verbosity)


def accelerate_two_processes(script: Path, *args: str) -> list[str]:
    """The command that runs ``script args`` in 2 processes with ``accelerate launch``.

    accelerate 1.15 starts a single process for ``--cpu --num_processes 2`` (multi-CPU needs MPI); its multi-GPU
    launcher (torchrun) starts two, and the script's ``--use_cpu true`` makes them train on CPU with gloo.
    """
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(script), *args,
    ]  # fmt: skip
