"""Soft-prompt fine-tuning (prompt tuning, P-tuning, prefix tuning) of causal LMs with the stock Trainer."""

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
from .evaluation import GenerationMetrics, Prediction, rank_labels
from .generation import generate_label_ids, generate_label_texts, normalize_label
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
    write_predictions,
    write_raft_submission,
)
from .prompt import DEFAULT_TEMPLATE, PromptTemplate, encode_target

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_TEMPLATE",
    "METHODS",
    "RAFT_CLASS_NAMES",
    "SEED_PROMPT_TUNING_INIT_TEXT",
    "ClassificationData",
    "ClassificationReport",
    "GenerationMetrics",
    "Prediction",
    "PromptTemplate",
    "SoftPromptArguments",
    "SoftPromptDataCollator",
    "build_peft_config",
    "build_soft_prompt_model",
    "check_label_set",
    "check_training_arguments",
    "classification_report",
    "encode_target",
    "generate_label_ids",
    "generate_label_texts",
    "k_fold_splits",
    "label_text",
    "load_classification_data",
    "load_raft",
    "match_label",
    "normalize_label",
    "rank_labels",
    "stratified_split",
    "write_predictions",
    "write_raft_submission",
]
