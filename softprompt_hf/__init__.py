"""Soft-prompt fine-tuning (prompt tuning, P-tuning, prefix tuning) of causal LMs with the stock Trainer.

The package's public names, by what users do with them (everything else is importable from its module; the
README's "Package layout" says which module does what):

- train: ``SoftPromptArguments``, ``SoftPromptTrainingArguments``, ``build_soft_prompt_model``,
  ``SoftPromptDataCollator``, ``load_raft``, ``load_classification_data``, and the exact speed-ups
  ``enable_label_only_logits`` and ``enable_shared_prompt``;
- train safely: ``SoftPromptCheckpointCallback``, ``SoftPromptGuardCallback``;
- evaluate: ``GenerationMetrics`` (the Trainer's ``compute_metrics``), ``generate_labels``, ``rank_labels``,
  ``constrained_labels``;
- save and push: ``save_adapter``, ``push_adapter``, ``HubPushCallback``, ``HubPushError``;
- predict: ``predict``, and ``enable_soft_prompt_generate`` / ``disable_soft_prompt_generate`` /
  ``soft_prompt_generate`` for ``model.generate()``.
"""

from ._decoding import constrained_labels, generate_labels, rank_labels
from .arguments import SoftPromptTrainingArguments
from .callbacks import SoftPromptCheckpointCallback, SoftPromptGuardCallback
from .collator import SoftPromptDataCollator
from .data import load_classification_data, load_raft
from .evaluation import GenerationMetrics
from .generate import disable_soft_prompt_generate, enable_soft_prompt_generate, soft_prompt_generate
from .hub import HubPushCallback, HubPushError, push_adapter
from .label_logits import enable_label_only_logits
from .methods import SoftPromptArguments, build_soft_prompt_model
from .predict import predict
from .saving import save_adapter
from .shared_prompt import enable_shared_prompt

__version__ = "0.1.0"

__all__ = [
    # train
    "SoftPromptArguments",
    "SoftPromptTrainingArguments",
    "build_soft_prompt_model",
    "SoftPromptDataCollator",
    "load_raft",
    "load_classification_data",
    "enable_label_only_logits",
    "enable_shared_prompt",
    "SoftPromptCheckpointCallback",
    "SoftPromptGuardCallback",
    # evaluate
    "GenerationMetrics",
    "generate_labels",
    "rank_labels",
    "constrained_labels",
    # save and push
    "save_adapter",
    "push_adapter",
    "HubPushCallback",
    "HubPushError",
    # predict and generate
    "predict",
    "enable_soft_prompt_generate",
    "disable_soft_prompt_generate",
    "soft_prompt_generate",
]
