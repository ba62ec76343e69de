"""Shared pieces of the benchmarks: the model, the data, the seed guide's path, timing and reporting.

The seed's path is reimplemented here for measurement only, line for line as the seed guide writes it
(``preprocess_function`` padding every row to 64 on the left, ``default_data_collator``, a manual AdamW
loop, one-by-one ``generate``). Nothing in the package uses it.
"""

from __future__ import annotations

import gc
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import json
import platform
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, BloomConfig, BloomForCausalLM
from transformers.utils import logging as hf_logging

from softprompt_hf import build_soft_prompt_model, load_raft
from softprompt_hf.core.upstream import remove_prefix_cache_routing, route_prefix_cache_argument
from softprompt_hf.embedded import EMBEDDED_DATA_FILES, EMBEDDED_MODEL_PATH

METHODS = ("prompt_tuning", "p_tuning", "prefix_tuning")
TEXT_COLUMN = "Tweet text"
BLOOMZ_VOCAB = 250_880
SEED_MAX_LENGTH = 64
SEED_BATCH_SIZE = 16
SEED_LR = 3e-2

# The seed guide's configs; prompt tuning's TEXT init has 8 tokens with bloomz' tokenizer.
METHOD_OPTIONS: dict[str, dict[str, Any]] = {
    "prompt_tuning": {"num_virtual_tokens": 8},
    "p_tuning": {"num_virtual_tokens": 20, "encoder_hidden_size": 128},
    "prefix_tuning": {"num_virtual_tokens": 20},
}


@dataclass(frozen=True)
class ModelSize:
    """A Bloom architecture: bloomz' vocabulary, a chosen depth and width."""

    hidden_size: int
    n_layer: int
    n_head: int
    vocab_size: int = BLOOMZ_VOCAB

    def describe(self) -> str:
        return (
            f"Bloom, vocab {self.vocab_size:,}, hidden {self.hidden_size}, {self.n_layer} layers, {self.n_head} heads"
        )


CPU_SIZE = ModelSize(hidden_size=512, n_layer=4, n_head=8)
TINY_SIZE = ModelSize(hidden_size=32, n_layer=2, n_head=4, vocab_size=4_096)
BLOOMZ_560M = ModelSize(hidden_size=1024, n_layer=24, n_head=16)
SIZES = {"cpu": CPU_SIZE, "tiny": TINY_SIZE, "bloomz-560m": BLOOMZ_560M}


def set_threads(threads: int | None) -> None:
    """Pin torch to ``threads`` CPU threads. On a machine shared with other jobs, one thread per benchmark is
    far steadier: with two, every small operator waits for both threads to be scheduled."""
    if threads:
        torch.set_num_threads(threads)


def add_threads_argument(parser: Any) -> None:
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's, one per core).")


def quiet() -> None:
    """Silence the libraries' per-call warnings so that the tables stay readable."""
    warnings.filterwarnings("ignore")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def tokenizer() -> Any:
    """The embedded miniature bloomz tokenizer: its token counts for tweets are those of a real tokenizer
    (prompts of 11 to 99 tokens, median 34), and its ids fit any vocabulary of at least 2,048 tokens."""
    tok = AutoTokenizer.from_pretrained(EMBEDDED_MODEL_PATH)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def labelled_rows(n: int | None = None) -> list[dict[str, Any]]:
    """The embedded dataset's labelled rows (synthetic customer tweets, RAFT twitter_complaints' schema),
    cycled to ``n`` rows."""
    data = load_raft(data_files=EMBEDDED_DATA_FILES, validation_size=0.2, seed=0)
    rows = data.train.to_list() + data.validation.to_list()
    if n is None:
        return rows
    return [rows[i % len(rows)] for i in range(n)]


def base_model(size: ModelSize, *, dtype: torch.dtype = torch.float32, device: str = "cpu", seed: int = 0) -> Any:
    """A randomly initialised Bloom causal LM of ``size`` (nothing downloaded)."""
    torch.manual_seed(seed)
    config = BloomConfig(
        vocab_size=size.vocab_size,
        hidden_size=size.hidden_size,
        n_layer=size.n_layer,
        n_head=size.n_head,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    return BloomForCausalLM(config).to(device=device, dtype=dtype)


def pretrained_tokenizer(path: str) -> Any:
    """A local model folder's own tokenizer; EOS doubles as the pad token if it has none, as in the recipes."""
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def pretrained_model(path: str, *, dtype: torch.dtype = torch.float32, device: str = "cpu") -> Any:
    """The causal LM saved in the local folder ``path`` (e.g. Gemma 3 270M as ``softprompt-hf prepare-real`` saves
    it)."""
    return AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)


def describe_pretrained(path: str) -> str:
    config = AutoConfig.from_pretrained(path)
    text = getattr(config, "text_config", config)
    return (
        f"{config.architectures[0] if config.architectures else config.model_type} from {path}, vocab "
        f"{text.vocab_size:,}, hidden {text.hidden_size}, {text.num_hidden_layers} layers"
    )


def soft_prompt_model(base: Any, method: str, tok: Any) -> Any:
    return build_soft_prompt_model(base, method=method, tokenizer=tok, **METHOD_OPTIONS[method])


# -- The seed guide's path ------------------------------------------------------------------------------
def seed_preprocess(rows: Sequence[dict[str, Any]], tok: Any, max_length: int = SEED_MAX_LENGTH) -> list[dict]:
    """The seed's ``preprocess_function``: prompt left-padded to 64 tokens, label ids right-aligned under
    its end, first 64 tokens kept."""
    inputs = [f"{TEXT_COLUMN} : {row[TEXT_COLUMN]} Label : " for row in rows]
    targets = [str(row["text_label"]) for row in rows]
    model_inputs = tok(inputs)
    labels = tok(targets)
    processed = []
    for i in range(len(rows)):
        sample_input_ids = model_inputs["input_ids"][i]
        label_input_ids = labels["input_ids"][i]
        input_ids = [tok.pad_token_id] * (max_length - len(sample_input_ids)) + sample_input_ids
        attention_mask = [0] * (max_length - len(sample_input_ids)) + model_inputs["attention_mask"][i]
        label_row = [-100] * (max_length - len(label_input_ids)) + label_input_ids
        processed.append(
            {
                "input_ids": torch.tensor(input_ids[:max_length]),
                "attention_mask": torch.tensor(attention_mask[:max_length]),
                "labels": torch.tensor(label_row[:max_length]),
            }
        )
    return processed


def seed_generate_one_by_one(model: Any, tok: Any, texts: Sequence[str], max_new_tokens: int) -> list[list[int]]:
    """The seed's inference: one ``tokenizer(prompt)`` and one ``model.generate`` per text."""
    outputs = []
    model.eval()
    # The seed runs peft's own generate() on the model as plain peft builds it: build_soft_prompt_model's
    # prefix-tuning hook (softprompt_hf.core.upstream, entry 2) refuses that generate()'s cache beside the prefix, so
    # it is off for the call.
    routed = remove_prefix_cache_routing(model)
    try:
        with torch.no_grad():
            for text in texts:
                inputs = tok(f"{TEXT_COLUMN} : {text} Label : ", return_tensors="pt")
                inputs = {k: v.to(model.device) for k, v in inputs.items()}
                generated = model.generate(input_ids=inputs["input_ids"], max_new_tokens=max_new_tokens)
                outputs.append(generated[0, inputs["input_ids"].shape[1] :].tolist())
    finally:
        if routed:
            route_prefix_cache_argument(model)
    return outputs


# -- Timing and reporting -------------------------------------------------------------------------------
def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str = "cpu") -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def interleaved_times(
    paths: dict[str, Callable[[], Any]], repeats: int, device: str = "cpu", runs: dict[str, int] | None = None
) -> dict[str, list[float]]:
    """Seconds of each of ``paths``, timed ``repeats`` times with the paths' runs interleaved (so that a change
    of the machine's speed hits all of them alike); ``runs`` caps the runs of slow paths (0 skips one)."""
    times: dict[str, list[float]] = {name: [] for name in paths}
    for repeat in range(repeats):
        for name, fn in paths.items():
            if repeat < (runs or {}).get(name, repeats):
                times[name].append(timed(fn, device))
    return times


def rss_bytes() -> int:
    """This process's resident memory (Linux)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


class PeakRss(threading.Thread):
    """Samples this process's resident memory every ``interval`` seconds from ``start()`` to ``stop()``, which
    returns the peak seen."""

    def __init__(self, interval: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.peak = rss_bytes()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        return max(self.peak, rss_bytes())


class PeakMemory:
    """``with PeakMemory(device) as memory: ...``: the peak memory of the block above the memory just before it, in
    bytes (``memory.bytes``, after the block): torch's allocated GPU memory on CUDA, else this process's resident
    memory sampled every 5 ms (``PeakRss``). Garbage is collected first, so that it is not counted as held."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")
        self.bytes = 0

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.baseline = torch.cuda.memory_allocated()
        else:
            self.baseline = rss_bytes()
            self._sampler = PeakRss()
            self._sampler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            peak = self._sampler.stop()
        self.bytes = peak - self.baseline


def low_mmap_threshold_environment(glibc_default: bool = False) -> dict[str, str]:
    """The environment for a process whose resident memory is measured. Unless ``glibc_default``, glibc serves
    allocations over 64 KiB with mmap, so freed tensors go back to the system at once and resident memory follows
    live memory; with glibc's default threshold (which adapts upwards), freed tensor buffers stay in the heap and
    its high-water mark grows with the number of batches run, which is not memory the measured call holds."""
    env = dict(os.environ)
    if not glibc_default:
        env.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    return env


def versions() -> dict[str, str]:
    import accelerate
    import peft
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "accelerate": accelerate.__version__,
    }


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}"
    if hasattr(os, "getloadavg"):
        text += f", load average {os.getloadavg()[0]:.1f} at start"
    if torch.cuda.is_available():
        text += f"; GPU {torch.cuda.get_device_name()}"
    return text


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def flags(args: Any) -> str:
    """The command-line flags this run was given (empty when run with the defaults)."""
    given = getattr(args, "argv", None)
    if given is None:
        given = sys.argv[1:]
    return "".join(f" {flag}" for flag in given)


def header(title: str, command: str) -> str:
    return (
        f"## {title}\n\n`{command}`\n\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {machine()}; "
        + ", ".join(f"{k} {v}" for k, v in versions().items())
        + "\n"
    )


def dump_json(path: str | None, payload: Any) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(payload, f, indent=2)
