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
from .methods import (
    METHODS,
    SEED_PROMPT_TUNING_INIT_TEXT,
    SoftPromptArguments,
    build_peft_config,
    build_soft_prompt_model,
    check_training_arguments,
)
from .prompt import DEFAULT_TEMPLATE, PromptTemplate, encode_target

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_TEMPLATE",
    "METHODS",
    "RAFT_CLASS_NAMES",
    "SEED_PROMPT_TUNING_INIT_TEXT",
    "ClassificationData",
    "PromptTemplate",
    "SoftPromptArguments",
    "SoftPromptDataCollator",
    "build_peft_config",
    "build_soft_prompt_model",
    "check_training_arguments",
    "encode_target",
    "k_fold_splits",
    "label_text",
    "load_classification_data",
    "load_raft",
    "stratified_split",
]
