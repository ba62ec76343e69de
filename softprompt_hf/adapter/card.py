"""The model card of a trained soft prompt: Hub metadata, what was trained and how, and how to use it.

The card is data first: ``ModelCardInputs`` holds everything it shows, filled from the run (by
``ModelCardCallback`` while the Trainer runs, or by ``model_card_inputs`` from a finished run), stored in the
adapter folder's ``softprompt_hf.json`` and rendered by ``render_model_card`` from one Jinja template,
``softprompt_hf/adapter/templates/model_card.md.jinja``. A card for another repository or base model is the same data
rendered again; nothing is patched into a rendered card.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import string
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jinja2
import peft
import transformers
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers import TrainerCallback, TrainingArguments

from ..constants import __version__
from ..core.locations import is_hub_id
from ..core.upstream import stock_generate_is_wrong
from ..data.chat import ChatTemplate, prompt_format
from ..data.prompt import DEFAULT_TEMPLATE, SAVED_WITHOUT_LABEL_TOKENIZATION, PromptTemplate
from ..evaluation.metrics import INVALID_COLUMN, ClassificationReport
from ..inference.generate import fixes_generate
from ..modeling.initialization import initialization_of

__all__ = [
    "METHOD_TAGS",
    "ModelCardCallback",
    "ModelCardInputs",
    "build_model_card",
    "model_card_inputs",
    "render_model_card",
]

#: Hub tag of each peft soft-prompt type.
METHOD_TAGS = {"PROMPT_TUNING": "prompt-tuning", "P_TUNING": "p-tuning", "PREFIX_TUNING": "prefix-tuning"}
#: The Jinja template every card is rendered from (shipped as package data).
TEMPLATE_PATH = Path(__file__).parent / "templates" / "model_card.md.jinja"

# Training arguments that never go into a card: credentials, and local paths that mean nothing to readers.
_NEVER_IN_CARD = {"output_dir", "logging_dir", "run_name", "resume_from_checkpoint", "deepspeed", "hub_model_id"}
# Set by TrainingArguments from other fields; the Trainer itself does not read them.
_NEVER_IN_CARD |= {"do_train", "do_eval", "do_predict"}
# Per-evaluation timings, not results.
_NOT_METRICS = ("runtime", "samples_per_second", "steps_per_second", "epoch", "step")
_METRIC_NAMES = {
    "accuracy": "Accuracy",
    "f1": "Macro F1",
    "invalid_rate": "Invalid output rate",
    "loss": "Loss",
    "rouge1": "ROUGE-1",
    "rouge2": "ROUGE-2",
    "rougeL": "ROUGE-L",
    "rougeLsum": "ROUGE-Lsum",
    "bleu": "BLEU",
    "chrf": "chrF",
    "exact_match": "Exact match",
    "gen_len": "Generated length (tokens)",
}
# The model-index task of each kind of run (TASKS).
_TASK_TYPES = {
    "classification": ("text-classification", "Text classification"),
    "text": ("text-generation", "Text generation"),
}
_METHOD_NAMES = {"prompt-tuning": "prompt tuning", "p-tuning": "P-tuning", "prefix-tuning": "prefix tuning"}
# How many of the run's validation texts the usage snippets label, and what they label when the run had none.
_NUM_EXAMPLE_TEXTS = 2
_PLACEHOLDER_TEXTS = ["The first text to label", "The second text to label"]


def build_model_card(model: Any, *, repo_id: str | None = None, **values: Any) -> ModelCard:
    """Builds the model card (``README.md``) of a trained soft-prompt adapter.

    The YAML metadata has ``library_name: peft``, ``base_model``, ``pipeline_tag: text-generation``, tags
    for the method, the dataset, the license and, given ``metrics``, a ``model-index`` with the validation
    metrics. The text describes the adapter, gives its PEFT config and trainable-parameter count, the
    training hyperparameters that differ from ``TrainingArguments``' defaults (never credentials or local
    paths), the metrics of each evaluation made during training in ``log_history``, the confusion matrix of
    ``report`` and a runnable usage snippet with ``AutoPeftModelForCausalLM``.

    This is ``render_model_card(model_card_inputs(model, **values), repo_id=repo_id)``: the card is rendered from
    ``ModelCardInputs``, which can be stored beside the adapter and rendered again for another repository.

    Args:
        model: The trained ``PeftModel``.
        repo_id: The Hub repository the card is for (used in the snippet and as the model's name).
        **values: What the card shows, as ``model_card_inputs`` takes it (``base_model`` is required).

    Returns:
        A ``huggingface_hub.ModelCard``; ``card.save(path)`` writes it.

    Example:

    ```python
    >>> card = build_model_card(model, base_model="bigscience/bloomz-560m", repo_id="me/bloomz-complaints")
    >>> card.data.library_name, card.data.base_model
    ('peft', 'bigscience/bloomz-560m')
    >>> card.save("README.md")

    ```
    """
    return render_model_card(model_card_inputs(model, **values), repo_id=repo_id)


@dataclasses.dataclass
class ModelCardInputs:
    """Everything a model card is rendered from, as plain JSON-able data (see ``render_model_card``).

    Kept in the adapter folder's ``softprompt_hf.json`` (key ``"card"``) so that a push renders the card for
    the repository it goes to. It holds only what the card itself shows: no credentials, no local paths other
    than a local base model's (which a card built with ``allow_local_base`` names too). Data written by an
    older softprompt_hf lacks the newer fields, which keep their defaults.
    """

    method_tag: str
    peft_config: dict[str, Any]
    trainable_parameters: int
    all_parameters: int
    base_model: str
    local_base: bool = False
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)
    report: dict[str, Any] | None = None
    hyperparameters: dict[str, Any] = dataclasses.field(default_factory=dict)
    evaluations: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    dataset: str | None = None
    dataset_config: str | None = None
    labels: list[str] | None = None
    template: str = DEFAULT_TEMPLATE
    #: The chat template's messages, ``{"user": <pattern>, "system": <text or None>}``, when the model was trained on
    #: prompts in the base model's chat template (``ChatTemplate``; ``template`` is then its user message); else None.
    chat: dict[str, Any] | None = None
    #: The text column the model was trained on (fills ``{text_column}``); None: not known, and the card says so.
    text_column: str | None = None
    #: Where the prompt ends and the label begins in training (``PromptTemplate.label_tokenization``); data stored
    #: before the choice existed was trained with ``"separate"`` (see ``from_dict``).
    label_tokenization: str = "joint"
    license: str | None = None
    #: The repository the card was last rendered for (None: none, the snippet loads ``path/to/adapter``).
    repo_id: str | None = None
    #: What the usage snippets label: the run's first validation texts (None: a neutral placeholder).
    example_texts: list[str] | None = None
    #: What the adapter's targets are (``softprompt_hf.constants.TASKS``): labels, or free text.
    task: str = "classification"
    #: A free-text task's first validation rows (the template's columns only), what the usage snippets generate for.
    example_rows: list[dict[str, str]] | None = None
    #: A free-text task's generation budget in evaluation (tokens, EOS included).
    max_new_tokens: int | None = None
    #: The versions of peft, transformers and softprompt_hf the adapter was saved with.
    versions: dict[str, str] = dataclasses.field(default_factory=dict)
    #: Whether peft's own ``PeftModel.generate()`` is known to give wrong tokens for this adapter with ``versions``
    #: (softprompt_hf/core/upstream.py, entry 3); None: not recorded.
    stock_generate_wrong: bool | None = None
    #: Where the usage snippets load the tokenizer from: ``"base_model"`` (the adapter was trained with the base
    #: model's own tokenizer, and its folder holds none) or ``"adapter"`` / None (the folder's own).
    tokenizer: str | None = None
    #: Where the soft prompt started (``softprompt_hf.modeling.initialization``): ``{"kind", "text", "class_labels"}``;
    #: None: not recorded (an adapter not initialised by softprompt_hf in the session that saved it).
    initialization: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ModelCardInputs:
        names = {spec.name for spec in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"Unknown model card inputs {unknown}: the folder was written by a newer softprompt_hf.")
        # Written before label_tokenization existed: trained with the seed's separate tokenization.
        return cls(**{"label_tokenization": SAVED_WITHOUT_LABEL_TOKENIZATION, **values})

    def replace(self, **changes: Any) -> ModelCardInputs:
        """A copy with ``changes``; ``None`` values change nothing (so callers can pass what they may not know)."""
        return dataclasses.replace(self, **{key: value for key, value in changes.items() if value is not None})


def model_card_inputs(
    model: Any,
    *,
    base_model: str,
    metrics: Mapping[str, float] | None = None,
    report: ClassificationReport | None = None,
    training_args: TrainingArguments | None = None,
    log_history: Sequence[Mapping[str, Any]] | None = None,
    allow_local_base: bool = False,
    **values: Any,
) -> ModelCardInputs:
    """What ``render_model_card`` renders, taken from the model and a finished run.

    Args:
        model: The trained ``PeftModel``.
        base_model: The base model's Hub id (written to the card instead of any local path).
        metrics: Final validation metrics, with or without the ``eval_`` prefix.
        report: The validation ``ClassificationReport`` (e.g. ``GenerationMetrics.last_report``).
        training_args: The run's ``TrainingArguments``.
        log_history: ``trainer.state.log_history``, for the metrics of each evaluation during training
            (evaluations logged after training ended, e.g. ``trainer.evaluate()`` of the restored best adapter,
            are the final metrics, not another row).
        allow_local_base: Accept a local folder as ``base_model`` (for a card that stays on this machine, e.g.
            the embedded model's): the metadata then has no ``base_model`` and the text says so. Pushing such
            an adapter is refused (``push_adapter_folder``).
        **values: Other ``ModelCardInputs`` fields: ``dataset`` (the dataset's Hub id, e.g. ``ought/raft``),
            ``dataset_config`` (e.g. ``twitter_complaints``), ``labels`` (the label texts the model generates),
            ``template`` (the prompt template used in training), ``text_column`` (the text column the model was
            trained on, which fills ``{text_column}`` in the template; without it the card says it is not
            known), ``license`` (e.g. ``apache-2.0``), ``example_texts`` (what the usage snippets label).
    """
    return _card_inputs(
        model,
        base_model=base_model,
        allow_local_base=allow_local_base,
        metrics=_clean_metrics(metrics or {}),
        report=_report_data(report) if report is not None else None,
        hyperparameters=changed_hyperparameters(training_args) if training_args is not None else {},
        evaluations=_training_evaluations(log_history or []),
        **values,
    )


def _card_inputs(model: Any, *, base_model: str, allow_local_base: bool, **values: Any) -> ModelCardInputs:
    """``ModelCardInputs`` of ``model`` (its method, PEFT config, parameter counts, versions) with ``values``."""
    local_base = not is_hub_id(base_model)
    if local_base and not allow_local_base:
        raise ValueError(
            f"base_model={base_model!r} is not a Hub id; the card must name the base model as others can find "
            "it (e.g. 'bigscience/bloomz-560m'), not a local path."
        )
    peft_config = _active_config(model)
    method_tag = METHOD_TAGS.get(_peft_type(peft_config), _peft_type(peft_config).lower().replace("_", "-"))
    trainable, total = _parameter_counts(model)
    values = _with_chat(values)
    values = {key: value for key, value in values.items() if value is not None}
    for key in ("labels", "example_texts"):
        if key in values:
            values[key] = [str(item) for item in values[key]]
    inputs = ModelCardInputs(
        method_tag=method_tag,
        peft_config=_shown_peft_config(peft_config, base_model),
        trainable_parameters=trainable,
        all_parameters=total,
        base_model=base_model,
        local_base=local_base,
        versions=_versions(),
        stock_generate_wrong=_stock_generate_wrong(model),
        **{"initialization": _initialization(model), **values},
    )
    # Through JSON once, so that a card rendered now and one rendered later from the stored inputs are the same.
    return ModelCardInputs.from_dict(json.loads(json.dumps(inputs.to_dict(), default=str)))


class ModelCardCallback(TrainerCallback):
    """Fills the model card's data while the Trainer runs: the hyperparameters when training begins, each
    evaluation as it is made, the metrics of the latest one; ``card_data(model)`` gives the ``ModelCardInputs``.

    The text column, template and labels are those the model is trained on: given here, else the training
    collator's (a ``SoftPromptDataCollator``), else ``metrics``' (a ``GenerationMetrics``, whose first eval rows
    are also the texts the card's usage snippets label). ``HubPushCallback`` holds one; a run without one gets
    the same data from ``ModelCardCallback.of(trainer)`` afterwards.

    Args:
        base_model: The base model's Hub id (or a local folder, with ``allow_local_base``).
        metrics: The run's ``GenerationMetrics``: labels, template, text column, example texts and confusion matrix.
        allow_local_base: See ``model_card_inputs``.
        **values: Other ``ModelCardInputs`` fields, e.g. ``labels``, ``template``, ``text_column``, ``dataset``,
            ``dataset_config``, ``license``.
    """

    def __init__(self, *, base_model: str, metrics: Any | None = None, allow_local_base: bool = False, **values: Any):
        self.base_model = base_model
        self.metrics = metrics
        self.allow_local_base = allow_local_base
        self.values = values
        self.hyperparameters: dict[str, Any] = {}
        self.evaluations: list[dict[str, Any]] = []
        self.final_metrics: dict[str, float] = {}
        self.collator: Any = None
        self._training = False

    @classmethod
    def of(cls, trainer: Any, **kwargs: Any) -> ModelCardCallback:
        """The trainer's own ``ModelCardCallback``, else one built from its finished run (its arguments, log
        history and collator) with ``kwargs``."""
        for callback in trainer.callback_handler.callbacks:
            if isinstance(callback, cls):
                return callback
        collector = cls(**kwargs)
        collector._start(trainer.args, trainer.state, trainer.data_collator)
        collector._training = False
        return collector

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        self._start(args, state, getattr(train_dataloader, "collate_fn", None))

    def _start(self, args: TrainingArguments, state: Any, collator: Any) -> None:
        self.hyperparameters = changed_hyperparameters(args)
        # A resumed run starts with the evaluations (and last metrics) of the checkpoint's log history.
        self.evaluations = _training_evaluations(state.log_history)
        self.final_metrics = _clean_metrics(_last_eval_entry(state.log_history))
        self.collator = getattr(collator, "data_collator", collator)  # the Trainer may wrap it
        self._training = True

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if self._training and state.log_history:
            row = _evaluation_row(state.log_history[-1], state.log_history)
            if row is not None:
                self.evaluations.append(row)
        self.final_metrics = _clean_metrics(metrics or {})

    def on_train_end(self, args, state, control, **kwargs):
        self._training = False

    def card_data(self, model: Any, **values: Any) -> ModelCardInputs:
        """The card's data for ``model`` from what was collected; ``values`` (e.g. ``metrics``) take precedence."""
        generation_metrics = self.metrics
        trained = {
            key: getattr(self.collator, key, None) or getattr(generation_metrics, key, None)
            for key in ("text_column", "template", "label_tokenization")
        }
        trained = _with_chat(trained)
        labels = getattr(generation_metrics, "labels", None)
        report = getattr(generation_metrics, "last_report", None)
        text_task = getattr(generation_metrics, "task", "classification") == "text"
        fields = {
            "labels": list(labels) if labels is not None else None,
            **trained,
            "example_texts": None if text_task else _first_texts(generation_metrics),
            "task": "text" if text_task else None,
            "example_rows": _first_rows(generation_metrics) if text_task else None,
            "max_new_tokens": getattr(generation_metrics, "max_new_tokens", None) if text_task else None,
            "hyperparameters": self.hyperparameters,
            "evaluations": self.evaluations,
            "metrics": self.final_metrics,
            "report": _report_data(report) if report is not None else None,
            **{key: value for key, value in self.values.items() if value is not None},
        }
        if values.get("metrics") is not None:
            values["metrics"] = _clean_metrics(values["metrics"])
        fields.update({key: value for key, value in _with_chat(values).items() if value is not None})
        if text_task and not {"text", "text_column"} & _template_fields(fields.get("template") or DEFAULT_TEMPLATE):
            fields["text_column"] = None  # a template of named columns reads no text column: none is recorded
        return _card_inputs(model, base_model=self.base_model, allow_local_base=self.allow_local_base, **fields)


def render_model_card(
    inputs: ModelCardInputs, *, repo_id: str | None = None, base_model: str | None = None
) -> ModelCard:
    """Renders the model card from its inputs, for ``repo_id`` (title, model-index name, usage snippet), from
    the template ``TEMPLATE_PATH``.

    Args:
        inputs: From ``model_card_inputs``, ``ModelCardCallback.card_data`` or ``ModelCardInputs.from_dict``.
        repo_id: The repository the card is for; ``None``: a card for a local folder.
        base_model: Another name for the base model, e.g. the Hub id of a model trained from a local copy;
            default: ``inputs.base_model``.

    Returns:
        A ``huggingface_hub.ModelCard``. ``inputs`` is not changed.
    """
    if base_model is not None and base_model != inputs.base_model:
        inputs = with_base_model(inputs, base_model)
    base_model = inputs.base_model
    # Mappings in sorted order: the inputs are stored as JSON with sorted keys, and a card rendered again from
    # them must be the same card.
    scores = dict(sorted(inputs.metrics.items()))
    dataset_name = inputs.dataset or "custom"
    task_type, task_name = _TASK_TYPES.get(inputs.task, _TASK_TYPES["classification"])
    eval_results = [
        EvalResult(
            task_type=task_type,
            task_name=task_name,
            dataset_type=dataset_name,
            dataset_name=f"{dataset_name} {inputs.dataset_config}" if inputs.dataset_config else dataset_name,
            dataset_config=inputs.dataset_config,
            dataset_split="validation",
            metric_type=key,
            metric_name=_METRIC_NAMES.get(key, key),
            metric_value=value,
        )
        for key, value in scores.items()
    ]
    card_data = ModelCardData(
        library_name="peft",
        base_model=None if inputs.local_base else base_model,
        pipeline_tag="text-generation",
        tags=["peft", "soft-prompt", inputs.method_tag, "softprompt_hf", task_type],
        datasets=[inputs.dataset] if inputs.dataset else None,
        license=inputs.license,
        model_name=repo_id or f"{inputs.method_tag} adapter for {base_model}",
        eval_results=eval_results or None,
        metrics=sorted({r.metric_type for r in eval_results}) or None,
    )
    values = dataclasses.asdict(inputs)
    values.update(
        card_data=card_data.to_yaml(),
        repo_id=repo_id,
        adapter=repo_id or "path/to/adapter",
        method=_METHOD_NAMES.get(inputs.method_tag, inputs.method_tag),
        base_phrase=f"the local base model `{base_model}`"
        if inputs.local_base
        else f"[`{base_model}`](https://huggingface.co/{base_model})",
        uses_text_column="text_column" in _template_fields(inputs.template),
        **_prompt_boundary(inputs),
        example_texts=inputs.example_texts or _PLACEHOLDER_TEXTS,
        example_rows=inputs.example_rows or _placeholder_rows(inputs),
        peft_config_json=_peft_config_json(inputs.peft_config, base_model),
        hyperparameters=[[key, f"`{value}`"] for key, value in sorted(inputs.hyperparameters.items())],
        scores=[[_METRIC_NAMES.get(key, key), _number(value)] for key, value in scores.items()],
        invalid=INVALID_COLUMN,
        confusion=_confusion(inputs.report) if inputs.report is not None else None,
        **_per_evaluation(inputs.evaluations),
    )
    return ModelCard(_template().render(**values))


def with_base_model(inputs: ModelCardInputs, base_model: str) -> ModelCardInputs:
    """``inputs`` for the base model's Hub id ``base_model`` (e.g. of a model trained from a local copy)."""
    if not is_hub_id(base_model):
        raise ValueError(f"base_model={base_model!r} is not a Hub id.")
    peft_config = _peft_config_for(inputs.peft_config, base_model)
    return dataclasses.replace(inputs, base_model=base_model, local_base=False, peft_config=peft_config)


@functools.cache
def _template() -> jinja2.Template:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE_PATH.parent),
        trim_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,  # a misspelt value fails the render instead of vanishing from the card
        autoescape=False,  # Markdown, not HTML
    )
    environment.filters.update(
        py=repr,
        code=lambda value: f"`{value}`",
        cell=lambda value: str(value).replace("|", "\\|").replace("\n", " "),
        thousands=lambda value: f"{value:,}",
    )
    return environment.get_template(TEMPLATE_PATH.name)


def _prompt_boundary(inputs: ModelCardInputs) -> dict[str, str]:
    """The snippets' prompt pattern (the template without what goes with the label) and the label's context."""
    prompt = PromptTemplate(inputs.template, inputs.text_column or "", inputs.label_tokenization)
    separator = prompt.label_separator
    return {
        "prompt_template": inputs.template[: len(inputs.template) - len(separator)],
        "label_context": prompt.label_context,
        "label_separator": separator,
    }


def _template_fields(template: str) -> set[str]:
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError:
        return set()


def _first_texts(generation_metrics: Any) -> list[str] | None:
    """The first validation texts of a ``GenerationMetrics`` (its eval rows' text column), or None."""
    rows = getattr(generation_metrics, "eval_rows", None)
    column = getattr(generation_metrics, "text_column", None)
    if rows is None or column is None:
        return None
    if hasattr(rows, "column_names"):  # a datasets.Dataset: read only the first rows
        head = rows.select(range(min(_NUM_EXAMPLE_TEXTS, len(rows))))[column] if column in rows.column_names else []
    else:
        head = [row.get(column) for row in list(rows)[:_NUM_EXAMPLE_TEXTS]]
    texts = [text for text in head if isinstance(text, str) and text.strip()]
    return texts or None


def _first_rows(generation_metrics: Any) -> list[dict[str, str]] | None:
    """The first validation rows of a ``TextGenerationMetrics``, each with only the columns its template reads."""
    rows = getattr(generation_metrics, "eval_rows", None)
    if rows is None:
        return None
    prompt = prompt_format(generation_metrics.template, generation_metrics.text_column)
    head = rows.select(range(min(_NUM_EXAMPLE_TEXTS, len(rows)))) if hasattr(rows, "column_names") else rows
    picked = [{column: str(row[column]) for column in prompt.columns} for row in list(head)[:_NUM_EXAMPLE_TEXTS]]
    return picked or None


def _with_chat(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with a ``ChatTemplate`` as ``template`` recorded as card data: its user message as ``template``,
    its messages as ``chat``."""
    values = dict(values)
    template = values.get("template")
    if isinstance(template, ChatTemplate):
        values["template"] = template.user
        values["chat"] = {"user": template.user, "system": template.system}
    return values


def _placeholder_rows(inputs: ModelCardInputs) -> list[dict[str, str]]:
    """Rows for a text task's snippets when the run recorded none: a placeholder in each column of the template."""
    prompt = PromptTemplate(inputs.template, inputs.text_column or "text")
    return [{column: f"The {column} of the first input" for column in prompt.columns}]


def _versions() -> dict[str, str]:
    return {"peft": peft.__version__, "softprompt_hf": __version__, "transformers": transformers.__version__}


def _initialization(model: Any) -> dict[str, Any] | None:
    """``model``'s recorded initialisation as card data (``initialization_of``), or None."""
    init = initialization_of(model)
    if init is None:
        return None
    return {"kind": init.kind, "text": init.text, "class_labels": list(init.class_labels or []) or None}


def _stock_generate_wrong(model: Any) -> bool:
    """Whether peft's own ``generate()`` is known to be wrong for ``model`` here: a soft prompt that
    ``enable_soft_prompt_generate`` fixes, on versions where the stock one is wrong (softprompt_hf/core/upstream.py)."""
    return fixes_generate(model) and stock_generate_is_wrong(model)


def changed_hyperparameters(training_args: TrainingArguments) -> dict[str, Any]:
    """The ``TrainingArguments`` values that differ from the defaults, without credentials or local paths.

    The defaults come from the dataclass fields, not from a fresh ``TrainingArguments()``: building one resets
    accelerate's state and breaks a Trainer that is running (this is called from a callback).
    """
    current = training_args.to_dict()
    changed = {}
    for spec in dataclasses.fields(TrainingArguments):
        name = spec.name
        if not spec.init or name not in current or name in _NEVER_IN_CARD or _is_secret(name):
            continue
        value, default = current[name], _field_default(spec)
        if isinstance(value, dict) and isinstance(default, dict):
            default = {key: default.get(key) for key in value}  # to_dict drops some internal keys
        if _plain(value) != _plain(default):
            changed[name] = value
    return changed


def _field_default(spec: dataclasses.Field) -> Any:
    if spec.name == "accelerator_config":
        from transformers.trainer_pt_utils import AcceleratorConfig

        return dataclasses.asdict(AcceleratorConfig())
    if spec.default is not dataclasses.MISSING:
        default = spec.default
    elif spec.default_factory is not dataclasses.MISSING:
        default = spec.default_factory()
    else:
        return None
    return default


def _plain(value: Any) -> Any:
    """One spelling for what ``TrainingArguments.__post_init__`` normalises: enums, and "none"/""/None/[]."""
    value = getattr(value, "value", value)
    if value in (None, "", "none", [], ["none"], False):
        return None
    return value


def _is_secret(key: str) -> bool:
    key = key.lower()
    return any(word in key for word in ("token", "secret", "password", "api_key", "credential"))


def _active_config(model: Any) -> Any:
    configs = getattr(model, "peft_config", None)
    if not configs:
        raise TypeError(f"build_model_card expects a peft PeftModel, got {type(model).__name__}.")
    return configs.get(getattr(model, "active_adapter", "default")) or next(iter(configs.values()))


def _peft_type(config: Any) -> str:
    return str(getattr(config.peft_type, "value", config.peft_type))


def _clean_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    cleaned = {}
    for key, value in metrics.items():
        name = key.removeprefix("eval_")
        if name.endswith(_NOT_METRICS) or not isinstance(value, int | float) or not math.isfinite(value):
            continue
        cleaned[name] = float(value)
    return cleaned


def _shown_peft_config(config: Any, base_model: str) -> dict[str, Any]:
    values = config.to_dict()
    values["base_model_name_or_path"] = base_model
    values["inference_mode"] = True  # as peft saves it: the stored prompt is used as is when loaded
    if values.get("tokenizer_name_or_path") and not is_hub_id(values["tokenizer_name_or_path"]):
        values["tokenizer_name_or_path"] = base_model  # a local path (TEXT init) means nothing to readers
    return values


def _peft_config_for(values: Mapping[str, Any], base_model: str) -> dict[str, Any]:
    """A shown PEFT config (``_shown_peft_config``) for the base model ``base_model`` instead of the one it names."""
    values = dict(values)
    previous_base = values.get("base_model_name_or_path")
    values["base_model_name_or_path"] = base_model
    tokenizer_source = values.get("tokenizer_name_or_path")
    if tokenizer_source and (tokenizer_source == previous_base or not is_hub_id(tokenizer_source)):
        values["tokenizer_name_or_path"] = base_model  # it names the base model (see _shown_peft_config)
    return values


def _peft_config_json(values: Mapping[str, Any], base_model: str) -> str:
    return json.dumps(_peft_config_for(values, base_model), indent=2, sort_keys=True, default=str)


def _parameter_counts(model: Any) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.prompt_encoder.parameters()) if hasattr(model, "prompt_encoder") else 0
    total = sum(p.numel() for p in model.get_base_model().parameters()) + trainable
    return trainable, total


def _training_evaluations(log_history: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The evaluations made during training, each with its epoch, step, last training loss and metrics.

    Evaluations logged after the last training summary (``train_runtime``) are left out: they come after
    ``trainer.train()`` returned (e.g. ``trainer.evaluate()`` of the restored best adapter), evaluate no epoch,
    and their metrics are the card's validation metrics already.
    """
    end = max((i for i, entry in enumerate(log_history) if "train_runtime" in entry), default=len(log_history))
    rows = [_evaluation_row(entry, log_history[:end]) for entry in log_history[:end]]
    return [row for row in rows if row is not None]


def _evaluation_row(entry: Mapping[str, Any], log_history: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The card's row for the log entry ``entry`` if it is an evaluation (its training loss: the last one logged
    in ``log_history`` up to its step), else None."""
    if not any(key.startswith("eval_") for key in entry):
        return None
    metrics = {
        key.removeprefix("eval_"): value
        for key, value in entry.items()
        if key.startswith("eval_") and not key.endswith(_NOT_METRICS)
    }
    step = entry.get("step", 0)
    train_losses = [e["loss"] for e in log_history if "loss" in e and e.get("step", 0) <= step]
    epoch = entry.get("epoch")
    return {
        "epoch": epoch if isinstance(epoch, int | float) else None,
        "step": step,
        "training_loss": train_losses[-1] if train_losses else None,
        "metrics": metrics,
    }


def _last_eval_entry(log_history: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The ``eval_`` metrics of the latest evaluation in ``log_history`` (empty if there was none)."""
    for entry in reversed(log_history):
        if any(key.startswith("eval_") for key in entry):
            return {key: value for key, value in entry.items() if key.startswith("eval_")}
    return {}


def _per_evaluation(evaluations: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The template's ``evaluation_headers`` and ``evaluations`` (rows of cells) for the per-evaluation table."""
    metric_keys = sorted({k for e in evaluations for k in e["metrics"]})
    rows = [
        [
            f"{e['epoch']:g}" if e["epoch"] is not None else "-",
            str(e["step"]),
            _number(e["training_loss"]),
            *(_number(e["metrics"].get(k)) for k in metric_keys),
        ]
        for e in evaluations
    ]
    headers = ["Epoch", "Step", "Training loss", *(_METRIC_NAMES.get(k, k) for k in metric_keys)]
    return {"evaluation_headers": headers, "evaluations": rows}


def _report_data(report: ClassificationReport) -> dict[str, Any]:
    return {"labels": list(report.labels), "confusion": report.confusion, "num_examples": report.num_examples}


def _confusion(report: Mapping[str, Any]) -> dict[str, Any]:
    """The template's confusion matrix: headers, rows of cells and the number of validation rows."""
    labels, confusion = report["labels"], report["confusion"]
    columns = [*labels, INVALID_COLUMN]
    rows = [[f"**{gold}**", *(str(confusion[gold][c]) for c in columns)] for gold in labels]
    # Backticks keep "<invalid>" from being read as an HTML tag.
    headers = ["gold \\ predicted", *labels, f"`{INVALID_COLUMN}`"]
    return {"headers": headers, "rows": rows, "num_examples": report["num_examples"]}


def _number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)
