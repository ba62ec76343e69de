"""Soft-prompt fine-tuning (prompt tuning, P-tuning, prefix tuning) of causal LMs with the stock Trainer.

The package's public names, by what users do with them (everything else is importable from its module; the
"Package layout", docs/layout.md, says which module does what):

- train: ``SoftPromptArguments``, ``SoftPromptTrainingArguments``, ``build_soft_prompt_model``,
  ``SoftPromptDataCollator``, ``PromptTemplate``, ``ChatTemplate`` (an instruct model's chat format), ``load_raft``,
  ``load_classification_data``, ``load_text_data`` (with its ``TextData``), and the exact speed-ups
  ``enable_label_only_logits`` and ``enable_shared_prompt``;
- train safely: ``SoftPromptCheckpointCallback``, ``SoftPromptGuardCallback``;
- evaluate: ``GenerationMetrics`` (the Trainer's ``compute_metrics``), ``generate_labels``, ``rank_labels``,
  ``constrained_labels``, and for free text ``TextGenerationMetrics`` and ``generate_texts``;
- score free text: ``Rouge``, ``Bleu``, ``Chrf``, ``ExactMatch`` (``evaluate`` metrics that work offline),
  ``TEXT_METRICS``, ``load_text_metric``, ``default_text_metrics``;
- save, push and export: ``save_adapter``, ``push_adapter``, ``HubPushCallback``, ``HubPushError``, and
  ``export_soft_prompt`` (the soft prompt for an engine that takes prompt embeddings, such as vLLM);
- predict: ``predict`` (with several soft prompts on one base model: ``load_adapters``, its ``LoadedAdapters``), and
  ``enable_soft_prompt_generate`` / ``disable_soft_prompt_generate`` /
  ``soft_prompt_generate`` for ``model.generate()``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .constants import __version__ as __version__  # light: no torch, transformers or peft

if TYPE_CHECKING:  # for type checkers and IDEs; at run time each name is imported when first used (below)
    from .adapter.hub import HubPushError, push_adapter
    from .adapter.hub_callback import HubPushCallback
    from .adapter.saving import save_adapter
    from .data.chat import ChatTemplate
    from .data.collator import SoftPromptDataCollator
    from .data.loading import TextData, load_classification_data, load_raft, load_text_data
    from .data.prompt import PromptTemplate
    from .evaluation.compute_metrics import GenerationMetrics, TextGenerationMetrics
    from .evaluation.text_metrics import (
        TEXT_METRICS,
        Bleu,
        Chrf,
        ExactMatch,
        Rouge,
        default_text_metrics,
        load_text_metric,
    )
    from .inference.generate import disable_soft_prompt_generate, enable_soft_prompt_generate, soft_prompt_generate
    from .inference.labels import constrained_labels, generate_labels, generate_texts, rank_labels
    from .modeling.label_logits import enable_label_only_logits
    from .modeling.methods import SoftPromptArguments, build_soft_prompt_model
    from .modeling.shared_prompt import enable_shared_prompt
    from .serving.export import export_soft_prompt
    from .serving.multi import LoadedAdapters, load_adapters
    from .serving.predict import AdapterLoadError, LoadedAdapter, load_adapter, predict
    from .training.arguments import SoftPromptTrainingArguments
    from .training.callbacks import SoftPromptGuardCallback
    from .training.checkpoints import SoftPromptCheckpointCallback

# Where each public name lives. `import softprompt_hf` (and so `softprompt-hf --help`) loads none of torch,
# transformers or peft, which takes seconds; `softprompt_hf.<name>` imports its module on first use.
_MODULES = {
    "constrained_labels": "inference.labels",
    "generate_labels": "inference.labels",
    "generate_texts": "inference.labels",
    "rank_labels": "inference.labels",
    "SoftPromptTrainingArguments": "training.arguments",
    "SoftPromptCheckpointCallback": "training.checkpoints",
    "SoftPromptGuardCallback": "training.callbacks",
    "ChatTemplate": "data.chat",
    "SoftPromptDataCollator": "data.collator",
    "load_classification_data": "data.loading",
    "load_raft": "data.loading",
    "load_text_data": "data.loading",
    "TextData": "data.loading",
    "GenerationMetrics": "evaluation.compute_metrics",
    "TextGenerationMetrics": "evaluation.compute_metrics",
    "export_soft_prompt": "serving.export",
    "disable_soft_prompt_generate": "inference.generate",
    "enable_soft_prompt_generate": "inference.generate",
    "soft_prompt_generate": "inference.generate",
    "HubPushCallback": "adapter.hub_callback",
    "HubPushError": "adapter.hub",
    "push_adapter": "adapter.hub",
    "enable_label_only_logits": "modeling.label_logits",
    "SoftPromptArguments": "modeling.methods",
    "build_soft_prompt_model": "modeling.methods",
    "LoadedAdapters": "serving.multi",
    "load_adapters": "serving.multi",
    "AdapterLoadError": "serving.predict",
    "LoadedAdapter": "serving.predict",
    "load_adapter": "serving.predict",
    "predict": "serving.predict",
    "PromptTemplate": "data.prompt",
    "save_adapter": "adapter.saving",
    "enable_shared_prompt": "modeling.shared_prompt",
    "Bleu": "evaluation.text_metrics",
    "Chrf": "evaluation.text_metrics",
    "ExactMatch": "evaluation.text_metrics",
    "Rouge": "evaluation.text_metrics",
    "TEXT_METRICS": "evaluation.text_metrics",
    "default_text_metrics": "evaluation.text_metrics",
    "load_text_metric": "evaluation.text_metrics",
}


def __getattr__(name: str) -> Any:
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # the next lookup finds it directly
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULES))


__all__ = [
    # train
    "SoftPromptArguments",
    "SoftPromptTrainingArguments",
    "build_soft_prompt_model",
    "SoftPromptDataCollator",
    "PromptTemplate",
    "ChatTemplate",
    "load_raft",
    "load_classification_data",
    "load_text_data",
    "TextData",
    "enable_label_only_logits",
    "enable_shared_prompt",
    "SoftPromptCheckpointCallback",
    "SoftPromptGuardCallback",
    # evaluate
    "GenerationMetrics",
    "TextGenerationMetrics",
    "generate_texts",
    "generate_labels",
    "rank_labels",
    "constrained_labels",
    # score free text
    "Rouge",
    "Bleu",
    "Chrf",
    "ExactMatch",
    "TEXT_METRICS",
    "load_text_metric",
    "default_text_metrics",
    # save, push and export
    "save_adapter",
    "push_adapter",
    "HubPushCallback",
    "HubPushError",
    "export_soft_prompt",
    # predict and generate
    "load_adapter",
    "LoadedAdapter",
    "AdapterLoadError",
    "predict",
    "load_adapters",
    "LoadedAdapters",
    "enable_soft_prompt_generate",
    "disable_soft_prompt_generate",
    "soft_prompt_generate",
]
