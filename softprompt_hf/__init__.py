"""Soft-prompt fine-tuning (prompt tuning, P-tuning, prefix tuning) of causal LMs with the stock Trainer.

The package's public names, by what users do with them (everything else is importable from its module; the
README's "Package layout" says which module does what):

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
import sys
import types
from typing import TYPE_CHECKING, Any

from .constants import __version__ as __version__  # light: no torch, transformers or peft

if TYPE_CHECKING:  # for type checkers and IDEs; at run time each name is imported when first used (below)
    from ._decoding import constrained_labels, generate_labels, generate_texts, rank_labels
    from .arguments import SoftPromptTrainingArguments
    from .callbacks import SoftPromptCheckpointCallback, SoftPromptGuardCallback
    from .chat import ChatTemplate
    from .collator import SoftPromptDataCollator
    from .data import TextData, load_classification_data, load_raft, load_text_data
    from .evaluation import GenerationMetrics, TextGenerationMetrics
    from .export import export_soft_prompt
    from .generate import disable_soft_prompt_generate, enable_soft_prompt_generate, soft_prompt_generate
    from .hub import HubPushCallback, HubPushError, push_adapter
    from .label_logits import enable_label_only_logits
    from .methods import SoftPromptArguments, build_soft_prompt_model
    from .multi import LoadedAdapters, load_adapters
    from .predict import predict
    from .prompt import PromptTemplate
    from .saving import save_adapter
    from .shared_prompt import enable_shared_prompt
    from .text_metrics import TEXT_METRICS, Bleu, Chrf, ExactMatch, Rouge, default_text_metrics, load_text_metric

# Where each public name lives. `import softprompt_hf` (and so `softprompt-hf --help`) loads none of torch,
# transformers or peft, which takes seconds; `softprompt_hf.<name>` imports its module on first use.
_MODULES = {
    "constrained_labels": "_decoding",
    "generate_labels": "_decoding",
    "generate_texts": "_decoding",
    "rank_labels": "_decoding",
    "SoftPromptTrainingArguments": "arguments",
    "SoftPromptCheckpointCallback": "callbacks",
    "SoftPromptGuardCallback": "callbacks",
    "ChatTemplate": "chat",
    "SoftPromptDataCollator": "collator",
    "load_classification_data": "data",
    "load_raft": "data",
    "load_text_data": "data",
    "TextData": "data",
    "GenerationMetrics": "evaluation",
    "TextGenerationMetrics": "evaluation",
    "export_soft_prompt": "export",
    "disable_soft_prompt_generate": "generate",
    "enable_soft_prompt_generate": "generate",
    "soft_prompt_generate": "generate",
    "HubPushCallback": "hub",
    "HubPushError": "hub",
    "push_adapter": "hub",
    "enable_label_only_logits": "label_logits",
    "SoftPromptArguments": "methods",
    "build_soft_prompt_model": "methods",
    "LoadedAdapters": "multi",
    "load_adapters": "multi",
    "predict": "predict",
    "PromptTemplate": "prompt",
    "save_adapter": "saving",
    "enable_shared_prompt": "shared_prompt",
    "Bleu": "text_metrics",
    "Chrf": "text_metrics",
    "ExactMatch": "text_metrics",
    "Rouge": "text_metrics",
    "TEXT_METRICS": "text_metrics",
    "default_text_metrics": "text_metrics",
    "load_text_metric": "text_metrics",
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


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        # Importing the submodule softprompt_hf.predict binds the module to the package's name `predict`, which
        # is the function: the function keeps the name (as when this file imported it eagerly).
        if isinstance(value, types.ModuleType) and value.__name__ == f"{__name__}.{name}" and name in _MODULES:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


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
    "predict",
    "load_adapters",
    "LoadedAdapters",
    "enable_soft_prompt_generate",
    "disable_soft_prompt_generate",
    "soft_prompt_generate",
]
