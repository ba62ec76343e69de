"""Soft-prompt fine-tuning (prompt tuning, P-tuning, prefix tuning) of causal LMs with the stock Trainer."""

from ._decoding import generate_labels, rank_labels
from .callbacks import (
    ParameterSummaryCallback,
    SamplePredictionsCallback,
    SoftPromptCheckpointCallback,
    SoftPromptGuardCallback,
    check_trainer,
    last_complete_checkpoint,
)
from .card import build_model_card
from .collator import SoftPromptDataCollator
from .data import (
    RAFT_CLASS_NAMES,
    ClassificationData,
    k_fold_splits,
    label_text,
    load_classification_data,
    load_raft,
    stratified_split,
)
from .evaluation import GenerationMetrics, Prediction
from .generate import disable_soft_prompt_generate, enable_soft_prompt_generate, soft_prompt_generate
from .hub import HubPushCallback, HubPushError, push_adapter, push_adapter_folder
from .label_logits import enable_label_only_logits
from .methods import (
    METHODS,
    SEED_PROMPT_TUNING_INIT_TEXT,
    SoftPromptArguments,
    build_peft_config,
    build_soft_prompt_model,
    check_training_arguments,
)
from .metrics import (
    ClassificationReport,
    check_label_set,
    classification_report,
    match_label,
    normalize_label,
    write_predictions,
    write_raft_submission,
)
from .predict import predict
from .prompt import DEFAULT_TEMPLATE, PromptTemplate, encode_target
from .saving import save_adapter
from .shared_prompt import enable_shared_prompt

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_TEMPLATE",
    "METHODS",
    "RAFT_CLASS_NAMES",
    "SEED_PROMPT_TUNING_INIT_TEXT",
    "ClassificationData",
    "ClassificationReport",
    "GenerationMetrics",
    "HubPushCallback",
    "HubPushError",
    "ParameterSummaryCallback",
    "Prediction",
    "PromptTemplate",
    "SamplePredictionsCallback",
    "SoftPromptArguments",
    "SoftPromptCheckpointCallback",
    "SoftPromptDataCollator",
    "SoftPromptGuardCallback",
    "build_model_card",
    "build_peft_config",
    "build_soft_prompt_model",
    "check_label_set",
    "check_trainer",
    "check_training_arguments",
    "classification_report",
    "disable_soft_prompt_generate",
    "enable_soft_prompt_generate",
    "enable_label_only_logits",
    "enable_shared_prompt",
    "encode_target",
    "generate_labels",
    "k_fold_splits",
    "label_text",
    "last_complete_checkpoint",
    "load_classification_data",
    "load_raft",
    "match_label",
    "normalize_label",
    "predict",
    "push_adapter",
    "push_adapter_folder",
    "rank_labels",
    "save_adapter",
    "soft_prompt_generate",
    "stratified_split",
    "write_predictions",
    "write_raft_submission",
]
