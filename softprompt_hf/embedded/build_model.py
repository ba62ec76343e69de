"""Builds the embedded model: a tiny instruction-tuned Bloom ("bloomz in miniature") and its tokenizer.

Run from the repository root, after ``build_data`` (about five minutes on two CPU cores)::

    python -m softprompt_hf.embedded.build_model

Steps: draw the multitask corpus (:mod:`softprompt_hf.embedded.tasks`) over fresh tweets that
exclude every row of the shipped dataset; train a byte-level BPE tokenizer on it; pretrain a
``BloomForCausalLM`` from scratch on it (loss on the answer and EOS, plus a down-weighted
language-model loss on the prompt, see ``lm_weight``); score the result on the shipped labelled
rows with and without the complaint instruction (accuracy) and the describe instruction (ROUGE-L
against ``describe.parquet``); save the model (safetensors), tokenizer and ``manifest.json``
(settings, library versions, scores and the sha256 of every shipped file) into
``softprompt_hf/embedded/model/``.

Everything is seeded and runs with deterministic torch kernels, so a rebuild on the same platform
and library versions reproduces the files; another CPU or torch version may change the weights in
the last bits, and the scores in the manifest are what a rebuild must keep.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from softprompt_hf.core.files import sha256_of_file
from softprompt_hf.embedded import (
    COMPLAINT_INSTRUCTION,
    DESCRIBE_INSTRUCTION,
    DESCRIPTION_COLUMN,
    LABEL_NAMES,
    TEXT_COLUMN,
)
from softprompt_hf.embedded.build_data import DATA_SEED, build_rows, build_text_rows
from softprompt_hf.embedded.scoring import label_accuracy, text_rouge_l
from softprompt_hf.embedded.tasks import TASKS, iter_examples

__all__ = ["BuildSettings", "build_model", "train_tokenizer"]

_DEFAULT_OUT = Path(__file__).resolve().parent / "model"
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")  # ids 0-3, as in bloom's tokenizer


@dataclass(frozen=True)
class BuildSettings:
    """Everything that determines the built model."""

    seed: int = 1234
    num_examples: int = 60_000
    p_bare: float = 0.15
    vocab_size: int = 2048
    hidden_size: int = 128
    n_layer: int = 4
    n_head: int = 4
    steps: int = 1200
    batch_size: int = 48
    lr: float = 4e-3
    lm_weight: float = 0.3  # without it, topic and company answers collapse to one class
    warmup_steps: int = 60
    weight_decay: float = 0.01
    num_threads: int = 2


def train_tokenizer(texts: list[str], vocab_size: int):
    """Trains a byte-level BPE tokenizer (no prefix space, no BOS added: like bloom's)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        padding_side="right",
        model_max_length=1024,
        clean_up_tokenization_spaces=False,
    )


def _encode(tokenizer, prompt: str, answer: str) -> tuple[list[int], int]:
    """Token ids of prompt + answer + EOS, tokenized as the package's collator does, and the prompt length."""
    prompt_ids = tokenizer(prompt)["input_ids"]
    answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    return prompt_ids + answer_ids + [tokenizer.eos_token_id], len(prompt_ids)


def _batches(encoded: list[tuple[list[int], int]], settings: BuildSettings, rng: random.Random):
    """Yields (input_ids, attention_mask, labels) batches of similar lengths, right-padded."""
    order = list(range(len(encoded)))
    while True:
        rng.shuffle(order)
        pool = settings.batch_size * 32
        batches = []
        for start in range(0, len(order), pool):
            chunk = sorted(order[start : start + pool], key=lambda i: len(encoded[i][0]))
            batches += [chunk[j : j + settings.batch_size] for j in range(0, len(chunk), settings.batch_size)]
        rng.shuffle(batches)
        for batch in batches:
            width = max(len(encoded[i][0]) for i in batch)
            input_ids = torch.full((len(batch), width), SPECIAL_TOKENS.index("<pad>"))
            attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
            labels = torch.full((len(batch), width), -100)
            for row, i in enumerate(batch):
                ids, prompt_len = encoded[i]
                input_ids[row, : len(ids)] = torch.tensor(ids)
                attention_mask[row, : len(ids)] = 1
                labels[row, prompt_len : len(ids)] = torch.tensor(ids[prompt_len:])
            yield input_ids, attention_mask, labels


def _loss(model, input_ids, attention_mask, labels, lm_weight: float) -> torch.Tensor:
    """Answer loss plus ``lm_weight`` times the language-modelling loss on the prompt tokens.

    The output layer is applied only at supervised positions, which saves time when
    ``lm_weight`` is 0.
    """
    hidden = model.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, :-1]
    next_ids = input_ids[:, 1:]
    answer = labels[:, 1:] != -100
    loss = torch.nn.functional.cross_entropy(model.lm_head(hidden[answer]), next_ids[answer])
    if lm_weight:
        prompt = (attention_mask[:, 1:] == 1) & ~answer
        loss = loss + lm_weight * torch.nn.functional.cross_entropy(model.lm_head(hidden[prompt]), next_ids[prompt])
    return loss


def _lr_factor(step: int, settings: BuildSettings) -> float:
    if step < settings.warmup_steps:
        return (step + 1) / settings.warmup_steps
    progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))


def _pretrain(model, encoded: list[tuple[list[int], int]], settings: BuildSettings, log, started: float) -> None:
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.lr, betas=(0.9, 0.98), weight_decay=settings.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, settings))
    batches = _batches(encoded, settings, random.Random(settings.seed))
    model.train()
    running = 0.0
    for step in range(settings.steps):
        input_ids, attention_mask, labels = next(batches)
        loss = _loss(model, input_ids, attention_mask, labels, settings.lm_weight)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        running = 0.98 * running + 0.02 * loss.item() if step else loss.item()
        if (step + 1) % 100 == 0:
            log(f"step {step + 1}/{settings.steps} loss {running:.4f} ({time.perf_counter() - started:.0f}s)")
    model.eval()


def build_model(out_dir: str | Path = _DEFAULT_OUT, settings: BuildSettings | None = None, log=print) -> dict:
    """Builds, scores and saves the embedded model; returns the manifest it wrote.

    Args:
        out_dir: Folder to write; files already in it are replaced.
        settings: Build settings; the defaults build the shipped model.
        log: Called with one progress line at a time.
    """
    settings = settings or BuildSettings()
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(settings.num_threads)
    torch.use_deterministic_algorithms(True)
    try:
        return _build(Path(out_dir), settings, log)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _build(out_dir: Path, settings: BuildSettings, log) -> dict:
    import tokenizers
    import transformers
    from transformers import BloomConfig, BloomForCausalLM

    started = time.perf_counter()
    torch.manual_seed(settings.seed)

    # 1. corpus: fresh tweets only, the shipped rows stay held out
    shipped = build_rows(DATA_SEED)
    exclude = frozenset(shipped["train"][TEXT_COLUMN] + shipped["test"][TEXT_COLUMN])
    stream = iter_examples(settings.seed, p_bare=settings.p_bare, exclude=exclude)
    corpus = [next(stream) for _ in range(settings.num_examples)]

    # 2. tokenizer, trained on the pieces the collator tokenizes separately
    tokenizer_texts = [ex.prompt for ex in corpus] + [ex.answer for ex in corpus]
    tokenizer_texts += [i for task in TASKS.values() for i in task.instructions]
    tokenizer = train_tokenizer(tokenizer_texts, settings.vocab_size)
    encoded = [_encode(tokenizer, ex.prompt, ex.answer) for ex in corpus]
    log(f"corpus: {len(corpus)} examples, tokenizer: {len(tokenizer)} tokens ({time.perf_counter() - started:.0f}s)")

    # 3. model, pretrained from scratch
    config = BloomConfig(
        vocab_size=len(tokenizer),
        hidden_size=settings.hidden_size,
        n_layer=settings.n_layer,
        n_head=settings.n_head,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    model = BloomForCausalLM(config)
    _pretrain(model, encoded, settings, log, started)

    # 4. scores on the shipped labelled rows (never seen in pretraining): complaint accuracy, description ROUGE-L
    texts = shipped["train"][TEXT_COLUMN]
    gold = [LABEL_NAMES[y].replace("_", " ") for y in shipped["train"]["Label"]]
    descriptions = build_text_rows(DATA_SEED)[DESCRIPTION_COLUMN]
    scores = {
        "with_instruction": label_accuracy(model, tokenizer, texts, gold, instruction=COMPLAINT_INSTRUCTION),
        "without_instruction": label_accuracy(model, tokenizer, texts, gold),
        "describe_rougeL_with_instruction": text_rouge_l(
            model, tokenizer, texts, descriptions, instruction=DESCRIBE_INSTRUCTION
        ),
        "describe_rougeL_without_instruction": text_rouge_l(model, tokenizer, texts, descriptions),
    }
    log(f"scores on the labelled rows: {scores} ({time.perf_counter() - started:.0f}s)")

    # 5. save
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.iterdir():
        if stale.is_file():
            stale.unlink()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    files = sorted(p.name for p in out_dir.iterdir() if p.is_file())
    for name in files:
        (out_dir / name).chmod(0o644)  # safetensors writes 0600; packaged data must be world-readable
    manifest = {
        "description": "Tiny instruction-tuned BloomForCausalLM built by softprompt_hf.embedded.build_model",
        "rebuild": "python -m softprompt_hf.embedded.build_data && python -m softprompt_hf.embedded.build_model",
        "settings": asdict(settings),
        "data_seed": DATA_SEED,
        "complaint_instruction": COMPLAINT_INSTRUCTION,
        "describe_instruction": DESCRIBE_INSTRUCTION,
        "config": {
            "model_type": config.model_type,
            "vocab_size": config.vocab_size,
            "hidden_size": config.hidden_size,
            "n_layer": config.n_layer,
            "n_head": config.n_head,
        },
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "scores": scores,
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
        },
        "build_seconds": round(time.perf_counter() - started, 1),
        "sha256": {name: sha256_of_file(out_dir / name) for name in files},
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    log(f"saved to {out_dir} in {manifest['build_seconds']}s")
    return manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default=str(_DEFAULT_OUT))
    for field, value in asdict(BuildSettings()).items():
        parser.add_argument(f"--{field.replace('_', '-')}", type=type(value), default=value)
    args = vars(parser.parse_args())
    out_dir = args.pop("out_dir")
    build_model(out_dir, BuildSettings(**args))


if __name__ == "__main__":
    main()
