"""The model card of a trained soft prompt: Hub metadata, what was trained and how, and how to use it."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers import TrainingArguments

from .metrics import INVALID_COLUMN, ClassificationReport
from .prompt import DEFAULT_TEMPLATE

__all__ = ["METHOD_TAGS", "ModelCardInputs", "build_model_card", "is_hub_id", "model_card_inputs", "render_model_card"]

#: Hub tag of each peft soft-prompt type.
METHOD_TAGS = {"PROMPT_TUNING": "prompt-tuning", "P_TUNING": "p-tuning", "PREFIX_TUNING": "prefix-tuning"}

# Training arguments that never go into a card: credentials, and local paths that mean nothing to readers.
_NEVER_IN_CARD = {"output_dir", "logging_dir", "run_name", "resume_from_checkpoint", "deepspeed", "hub_model_id"}
# Set by TrainingArguments from other fields; the Trainer itself does not read them.
_NEVER_IN_CARD |= {"do_train", "do_eval", "do_predict"}
# Per-evaluation timings, not results.
_NOT_METRICS = ("runtime", "samples_per_second", "steps_per_second", "epoch", "step")
_METRIC_NAMES = {"accuracy": "Accuracy", "f1": "Macro F1", "invalid_rate": "Invalid output rate", "loss": "Loss"}


def is_hub_id(name: str) -> bool:
    """Whether ``name`` can be a Hub repository id (``name`` or ``namespace/name``), not a local path."""
    if not name or name.startswith((".", "/", "~")) or "\\" in name:
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def is_local_path(name: str) -> bool:
    """Whether ``name`` means a path on this machine: it exists here, or it cannot be a Hub id (``is_hub_id``)."""
    return os.path.exists(os.path.expanduser(name)) or not is_hub_id(name)


def build_model_card(
    model: Any,
    *,
    base_model: str,
    metrics: Mapping[str, float] | None = None,
    report: ClassificationReport | None = None,
    training_args: TrainingArguments | None = None,
    log_history: Sequence[Mapping[str, Any]] | None = None,
    dataset: str | None = None,
    dataset_config: str | None = None,
    labels: Sequence[str] | None = None,
    template: str | None = None,
    text_column: str | None = None,
    license: str | None = None,
    repo_id: str | None = None,
    allow_local_base: bool = False,
) -> ModelCard:
    """Builds the model card (``README.md``) of a trained soft-prompt adapter.

    The YAML metadata has ``library_name: peft``, ``base_model``, ``pipeline_tag: text-generation``, tags
    for the method, the dataset, the license and, given ``metrics``, a ``model-index`` with the validation
    metrics. The text describes the adapter, gives its PEFT config and trainable-parameter count, the
    training hyperparameters that differ from ``TrainingArguments``' defaults (never credentials or local
    paths), the metrics of each evaluation made during training in ``log_history``, the confusion matrix of
    ``report`` and a runnable usage snippet with ``AutoPeftModelForCausalLM``.

    This is ``render_model_card(model_card_inputs(...), repo_id=repo_id)``: the card is rendered from
    ``ModelCardInputs``, which can be stored beside the adapter and rendered again for another repository.

    Args:
        model: The trained ``PeftModel``.
        base_model: The base model's Hub id (written to the card instead of any local path).
        metrics: Final validation metrics, with or without the ``eval_`` prefix.
        report: The validation ``ClassificationReport`` (e.g. ``GenerationMetrics.last_report``).
        training_args: The run's ``TrainingArguments``.
        log_history: ``trainer.state.log_history``, for the metrics of each evaluation during training
            (evaluations logged after training ended, e.g. ``trainer.evaluate()`` of the restored best adapter,
            are the final metrics, not another row).
        dataset: The dataset's Hub id, e.g. ``ought/raft``.
        dataset_config: The dataset's config, e.g. ``twitter_complaints``.
        labels: The label texts the model generates.
        template: The prompt template used in training.
        text_column: The text column's name (fills ``{text_column}`` in the template).
        license: The adapter's license id, e.g. ``apache-2.0``.
        repo_id: The Hub repository the card is for (used in the snippet and as the model's name).
        allow_local_base: Accept a local folder as ``base_model`` (for a card that stays on this machine, e.g.
            the embedded model's): the metadata then has no ``base_model`` and the text says so. Pushing such
            an adapter is refused (``push_adapter_folder``).

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
    inputs = model_card_inputs(
        model,
        base_model=base_model,
        metrics=metrics,
        report=report,
        training_args=training_args,
        log_history=log_history,
        dataset=dataset,
        dataset_config=dataset_config,
        labels=labels,
        template=template,
        text_column=text_column,
        license=license,
        allow_local_base=allow_local_base,
    )
    return render_model_card(inputs, repo_id=repo_id)


@dataclasses.dataclass
class ModelCardInputs:
    """Everything a model card is rendered from, as plain JSON-able data (see ``render_model_card``).

    Kept in the adapter folder's ``softprompt_hf.json`` (key ``"card"``) so that a push renders the card for
    the repository it goes to. It holds only what the card itself shows: no credentials, no local paths other
    than a local base model's (which a card built with ``allow_local_base`` names too).
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
    text_column: str = "text"
    license: str | None = None
    #: The repository the card was last rendered for (None: none, the snippet loads ``path/to/adapter``).
    repo_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ModelCardInputs:
        names = {spec.name for spec in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"Unknown model card inputs {unknown}: the folder was written by a newer softprompt_hf.")
        return cls(**values)


def model_card_inputs(
    model: Any,
    *,
    base_model: str,
    metrics: Mapping[str, float] | None = None,
    report: ClassificationReport | None = None,
    training_args: TrainingArguments | None = None,
    log_history: Sequence[Mapping[str, Any]] | None = None,
    dataset: str | None = None,
    dataset_config: str | None = None,
    labels: Sequence[str] | None = None,
    template: str | None = None,
    text_column: str | None = None,
    license: str | None = None,
    allow_local_base: bool = False,
) -> ModelCardInputs:
    """What ``build_model_card`` renders, taken from the model and the run (same arguments, without ``repo_id``)."""
    local_base = not is_hub_id(base_model)
    if local_base and not allow_local_base:
        raise ValueError(
            f"base_model={base_model!r} is not a Hub id; the card must name the base model as others can find "
            "it (e.g. 'bigscience/bloomz-560m'), not a local path."
        )
    peft_config = _active_config(model)
    method_tag = METHOD_TAGS.get(_peft_type(peft_config), _peft_type(peft_config).lower().replace("_", "-"))
    trainable, total = _parameter_counts(model)
    inputs = ModelCardInputs(
        method_tag=method_tag,
        peft_config=_shown_peft_config(peft_config, base_model),
        trainable_parameters=trainable,
        all_parameters=total,
        base_model=base_model,
        local_base=local_base,
        metrics=_clean_metrics(metrics or {}),
        report=_report_data(report) if report is not None else None,
        hyperparameters=changed_hyperparameters(training_args) if training_args is not None else {},
        evaluations=_training_evaluations(log_history or []),
        dataset=dataset,
        dataset_config=dataset_config,
        labels=list(labels) if labels is not None else None,
        template=template or DEFAULT_TEMPLATE,
        text_column=text_column or "text",
        license=license,
    )
    # Through JSON once, so that a card rendered now and one rendered later from the stored inputs are the same.
    return ModelCardInputs.from_dict(json.loads(json.dumps(inputs.to_dict(), default=str)))


def render_model_card(
    inputs: ModelCardInputs, *, repo_id: str | None = None, base_model: str | None = None
) -> ModelCard:
    """Renders the model card from its inputs, for ``repo_id`` (title, model-index name, usage snippet).

    Args:
        inputs: From ``model_card_inputs`` or ``ModelCardInputs.from_dict``.
        repo_id: The repository the card is for; ``None``: a card for a local folder.
        base_model: Another name for the base model, e.g. the Hub id of a model trained from a local copy;
            default: ``inputs.base_model``.

    Returns:
        A ``huggingface_hub.ModelCard``. ``inputs`` is not changed.
    """
    if base_model is not None and base_model != inputs.base_model:
        if not is_hub_id(base_model):
            raise ValueError(f"base_model={base_model!r} is not a Hub id.")
        inputs = dataclasses.replace(inputs, base_model=base_model, local_base=False)
    base_model = inputs.base_model
    local_base = inputs.local_base
    method_tag = inputs.method_tag
    # Mappings in sorted order: the inputs are stored as JSON with sorted keys, and a card rendered again from
    # them must be the same card.
    scores = dict(sorted(inputs.metrics.items()))
    dataset, dataset_config = inputs.dataset, inputs.dataset_config
    labels, template, text_column = inputs.labels, inputs.template, inputs.text_column
    dataset_name = dataset or "custom"
    eval_results = [
        EvalResult(
            task_type="text-classification",
            task_name="Text classification",
            dataset_type=dataset_name,
            dataset_name=f"{dataset_name} {dataset_config}" if dataset_config else dataset_name,
            dataset_config=dataset_config,
            dataset_split="validation",
            metric_type=key,
            metric_name=_METRIC_NAMES.get(key, key),
            metric_value=value,
        )
        for key, value in scores.items()
    ]
    card_data = ModelCardData(
        library_name="peft",
        base_model=None if local_base else base_model,
        pipeline_tag="text-generation",
        tags=["peft", "soft-prompt", method_tag, "softprompt_hf", "text-classification"],
        datasets=[dataset] if dataset else None,
        license=inputs.license,
        model_name=repo_id or f"{method_tag} adapter for {base_model}",
        eval_results=eval_results or None,
        metrics=sorted({r.metric_type for r in eval_results}) or None,
    )
    trainable, total = inputs.trainable_parameters, inputs.all_parameters
    counts = f"Trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.4f}%)."
    sections = [
        f"# {repo_id or 'Soft-prompt adapter'}",
        _description(method_tag, base_model, dataset, dataset_config, labels, template, text_column, local_base),
        "## PEFT config\n\n" + _peft_config_block(inputs.peft_config, base_model) + "\n\n" + counts,
        "## Usage\n\n" + _usage(repo_id, labels, template, text_column),
    ]
    if inputs.hyperparameters:
        sections.append(
            "## Training hyperparameters\n\nOnly the values that differ from `TrainingArguments`' defaults.\n\n"
            + _table(["Hyperparameter", "Value"], [[k, f"`{v}`"] for k, v in sorted(inputs.hyperparameters.items())])
        )
    if scores:
        sections.append(
            "## Validation metrics\n\n"
            + _table(["Metric", "Value"], [[_METRIC_NAMES.get(k, k), _number(v)] for k, v in scores.items()])
        )
    per_epoch = _per_evaluation(inputs.evaluations)
    if per_epoch:
        sections.append("## Metrics per evaluation\n\n" + per_epoch)
    if inputs.report is not None:
        sections.append("## Confusion matrix\n\n" + _confusion(inputs.report))
    body = "\n\n".join(sections) + "\n"
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}")


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


_LOCAL_BASE_NOTE = (
    "The base model was loaded from a local folder and has no Hub id here, so this adapter only loads on a machine "
    "with that folder. To share it, push it with the base model's Hub id (`softprompt-hf push <folder> <repo> "
    "--base-model-id <id>`), or train again with `--base_model_id`."
)


def _base_phrase(base_model: str, local_base: bool) -> str:
    if local_base:
        return f"the local base model `{base_model}`"
    return f"[`{base_model}`](https://huggingface.co/{base_model})"


def name_base_model_in_card(card: ModelCard, local_base: str, base_model_id: str) -> None:
    """Rewrites, in place, a card built for a local base model (``allow_local_base=True``) to name the base model
    by its Hub id: the metadata, the description (without its local-folder note), the PEFT config and any other
    mention of the local path.

    Args:
        card: The card, e.g. ``ModelCard.load(folder / "README.md")``.
        local_base: The local path the card was built with.
        base_model_id: The base model's Hub id.
    """
    if not is_hub_id(base_model_id):
        raise ValueError(f"base_model_id={base_model_id!r} is not a Hub id.")
    text = card.text.replace(_base_phrase(local_base, True), _base_phrase(base_model_id, False))
    text = text.replace("\n\n" + _LOCAL_BASE_NOTE, "")
    # What remains (the PEFT config block, JSON-escaped or not) names the model as it is loaded.
    text = text.replace(json.dumps(local_base)[1:-1], base_model_id).replace(local_base, base_model_id)
    card.text = text
    data: Any = card.data
    data.base_model = base_model_id
    if isinstance(data.model_name, str):
        data.model_name = data.model_name.replace(local_base, base_model_id)


def _description(
    method_tag: str,
    base_model: str,
    dataset: str | None,
    dataset_config: str | None,
    labels: Sequence[str] | None,
    template: str,
    text_column: str,
    local_base: bool = False,
) -> str:
    method = {"prompt-tuning": "prompt tuning", "p-tuning": "P-tuning", "prefix-tuning": "prefix tuning"}.get(
        method_tag, method_tag
    )
    lines = [
        f"A soft prompt ({method}) for {_base_phrase(base_model, local_base)} that classifies a text by generating "
        "its label, trained with the stock `transformers.Trainer` and `softprompt_hf`; the base model's weights "
        "are unchanged.",
    ]
    if local_base:
        lines.append(_LOCAL_BASE_NOTE)
    if dataset:
        name = f"{dataset} ({dataset_config})" if dataset_config else dataset
        lines.append(f"Training data: `{name}`.")
    if labels:
        lines.append("Labels: " + ", ".join(f"`{label}`" for label in labels) + ".")
    lines.append(f"Prompt template: `{template!r}` (`{{text_column}}` = `{text_column!r}`).")
    return "\n\n".join(lines)


def _shown_peft_config(config: Any, base_model: str) -> dict[str, Any]:
    values = config.to_dict()
    values["base_model_name_or_path"] = base_model
    values["inference_mode"] = True  # as peft saves it: the stored prompt is used as is when loaded
    if values.get("tokenizer_name_or_path") and not is_hub_id(values["tokenizer_name_or_path"]):
        values["tokenizer_name_or_path"] = base_model  # a local path (TEXT init) means nothing to readers
    return values


def _peft_config_block(values: Mapping[str, Any], base_model: str) -> str:
    values = dict(values)
    previous_base = values.get("base_model_name_or_path")
    values["base_model_name_or_path"] = base_model
    tokenizer_source = values.get("tokenizer_name_or_path")
    if tokenizer_source and (tokenizer_source == previous_base or not is_hub_id(tokenizer_source)):
        values["tokenizer_name_or_path"] = base_model  # it names the base model (see _shown_peft_config)
    return "```json\n" + json.dumps(values, indent=2, sort_keys=True, default=str) + "\n```"


def _parameter_counts(model: Any) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.prompt_encoder.parameters()) if hasattr(model, "prompt_encoder") else 0
    total = sum(p.numel() for p in model.get_base_model().parameters()) + trainable
    return trainable, total


def _usage(repo_id: str | None, labels: Sequence[str] | None, template: str, text_column: str) -> str:
    adapter = repo_id or "path/to/adapter"
    max_tokens = (
        "max(len(tokenizer(label, add_special_tokens=False).input_ids) for label in labels) + 1" if labels else "8"
    )
    prompt = f"{template!r}.format(text_column={text_column!r}, text=text)"
    load = f"""adapter = {adapter!r}
model = AutoPeftModelForCausalLM.from_pretrained(adapter).eval()"""
    settings = f"""labels = {list(labels or [])!r}
max_new_tokens = {max_tokens}

texts = {list(_EXAMPLE_TEXTS)!r}"""
    with_package = f"""```python
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer

from softprompt_hf import enable_soft_prompt_generate  # pip install softprompt_hf

{load}
enable_soft_prompt_generate(model)  # makes model.generate() right for the soft prompt
tokenizer = AutoTokenizer.from_pretrained(adapter, padding_side="left")
{settings}
prompts = [{prompt} for text in texts]
inputs = tokenizer(prompts, padding=True, return_tensors="pt")
outputs = model.generate(
    **inputs,
    max_new_tokens=max_new_tokens,
    do_sample=False,
    eos_token_id=tokenizer.eos_token_id,
    pad_token_id=tokenizer.pad_token_id,
)
new_tokens = outputs[:, inputs.input_ids.shape[1] :]
answers = [answer.strip() for answer in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
print(answers)  # each answer is one of the labels, or text that names none of them
```"""
    without_package = f"""```python
import torch
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer

{load}
tokenizer = AutoTokenizer.from_pretrained(adapter)
{settings}
answers = []
with torch.no_grad():
    for text in texts:
        prompt = {prompt}
        input_ids = tokenizer(prompt, return_tensors="pt").input_ids
        prompt_length = input_ids.shape[1]
        for _ in range(max_new_tokens):
            next_id = model(input_ids=input_ids).logits[0, -1].argmax()
            input_ids = torch.cat([input_ids, next_id.view(1, 1)], dim=1)
            if next_id.item() == tokenizer.eos_token_id:
                break
        answers.append(tokenizer.decode(input_ids[0, prompt_length:], skip_special_tokens=True).strip())
print(answers)
```"""
    return (
        "Label texts with the model's own `generate()`, made right for soft prompts by `softprompt_hf` "
        "(`pip install softprompt_hf`; with peft 0.21 and transformers 5, `PeftModel.generate()` alone returns "
        "wrong tokens for a soft prompt). Greedy decoding, a batch padded on the left:\n\n"
        + with_package
        + "\n\n**Without softprompt_hf**: the same greedy decoding with the model's own forward pass, one text at "
        "a time (peft and transformers only):\n\n"
        + without_package
        + "\n\nOr label a file in batches, by generation or by ranking the labels (`pip install softprompt_hf`):\n\n"
        + f"```bash\nsoftprompt-hf predict {adapter} --input texts.csv --text-column {text_column!r} "
        + "--output predictions.csv --mode rank\n```"
    )


# The texts the usage snippets label.
_EXAMPLE_TEXTS = ("@Acme my parcel never arrived", "@Acme thanks for the quick delivery, love it")


def _training_evaluations(log_history: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The evaluations made during training, each with its epoch, step, last training loss and metrics.

    Evaluations logged after the last training summary (``train_runtime``) are left out: they come after
    ``trainer.train()`` returned (e.g. ``trainer.evaluate()`` of the restored best adapter), evaluate no epoch,
    and their metrics are the card's validation metrics already.
    """
    end = max((i for i, entry in enumerate(log_history) if "train_runtime" in entry), default=len(log_history))
    rows = []
    for entry in log_history[:end]:
        metrics = {
            key.removeprefix("eval_"): value
            for key, value in entry.items()
            if key.startswith("eval_") and not key.endswith(_NOT_METRICS)
        }
        if not any(key.startswith("eval_") for key in entry):
            continue
        step = entry.get("step", 0)
        train_losses = [e["loss"] for e in log_history[:end] if "loss" in e and e.get("step", 0) <= step]
        epoch = entry.get("epoch")
        rows.append(
            {
                "epoch": epoch if isinstance(epoch, int | float) else None,
                "step": step,
                "training_loss": train_losses[-1] if train_losses else None,
                "metrics": metrics,
            }
        )
    return rows


def _per_evaluation(evaluations: Sequence[Mapping[str, Any]]) -> str:
    if not evaluations:
        return ""
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
    return _table(headers, rows)


def _report_data(report: ClassificationReport) -> dict[str, Any]:
    return {"labels": list(report.labels), "confusion": report.confusion, "num_examples": report.num_examples}


def _confusion(report: Mapping[str, Any]) -> str:
    labels, confusion = report["labels"], report["confusion"]
    columns = [*labels, INVALID_COLUMN]
    rows = [[f"**{gold}**", *(str(confusion[gold][c]) for c in columns)] for gold in labels]
    # Backticks keep "<invalid>" from being read as an HTML tag.
    headers = ["gold \\ predicted", *labels, f"`{INVALID_COLUMN}`"]
    return (
        f"Rows: gold label; columns: predicted label (`{INVALID_COLUMN}`: output that matched no label); "
        f"{report['num_examples']} validation rows.\n\n" + _table(headers, rows)
    )


def _number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
