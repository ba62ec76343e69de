"""Values shared by the library and the ``softprompt-hf`` command line, importable without torch, transformers
or peft: the command answers ``--help`` and argument errors before those load (seconds)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = [
    "__version__",
    "DEFAULT_COMMIT_MESSAGE",
    "DEFAULT_TIMEOUT",
    "EXPORT_DTYPES",
    "LABEL_TOKENIZATIONS",
    "MODES",
    "TASKS",
    "TEXT_METRIC_NAMES",
]

try:
    #: The installed distribution's version (``setup.cfg`` declares it, once).
    __version__ = version("softprompt_hf")
except PackageNotFoundError:  # a source tree put on sys.path without being installed
    __version__ = "0+unknown"

#: How a label is read from the model: generated greedily, ranked by likelihood, or decoded over the labels' tokens.
MODES = ("generate", "rank", "constrained")

#: What a run's targets are: a closed set of labels, or free text (summaries, answers), scored by generation.
TASKS = ("classification", "text")

#: The text metrics the package ships (``softprompt_hf.evaluation.text_metrics.TEXT_METRICS``), by name.
TEXT_METRIC_NAMES = ("rouge", "bleu", "chrf", "exact_match")

#: The ways a prompt and its label are tokenized (``PromptTemplate.label_tokenization``): ``"joint"`` (the
#: default) follows what the tokenizer does with the prompt and the label as one text; ``"separate"`` tokenizes
#: them apart, as the seed guide (and softprompt_hf before it had the choice) did.
LABEL_TOKENIZATIONS = ("joint", "separate")

#: Seconds a single Hub request may stay silent before it is abandoned (huggingface_hub waits forever). The client
#: retries a timed-out or failed (HTTP 5xx) upload request a few times, so a push can wait several times this.
DEFAULT_TIMEOUT = 60.0

#: The message of a push's commit.
DEFAULT_COMMIT_MESSAGE = "Upload soft-prompt adapter with softprompt_hf"

#: The dtypes an exported soft prompt can be written in (``export_soft_prompt(dtype=...)``, ``softprompt-hf export
#: --dtype``); by default it takes the base model's.
EXPORT_DTYPES = ("float32", "float16", "bfloat16")
