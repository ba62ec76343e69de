"""The steps a recipe calls, one module each, in the order a run takes them (``recipes/train.py`` shows them all):

- ``preflight``: logging, the output folder, the checkpoint to resume from, before anything loads;
- ``hub_push``: the Trainer's Hub push taken over before training, the saved adapter folder pushed after;
- ``inputs``: the data with its validation split, the prompt each row becomes, the tokenizer;
- ``trainer_parts``: the collator, the generation-based metrics, the callbacks and the model's exact speed-ups;
- ``outputs``: what a run writes after its final evaluation, its summary line, the end of the run;
- ``errors``: one ``error: ...`` line for bad input, a traceback for a bug.
"""

from .errors import TRACEBACK_ENV, run_recipe, user_error_message
from .hub_push import HubTarget, push_run, take_over_hub_push
from .inputs import label_tokenization_of, load_run_data, load_run_tokenizer, run_prompt, text_column_of
from .outputs import (
    ADAPTER_DIRNAME,
    PREDICTIONS_NAME,
    RESULTS_NAME,
    SUBMISSION_NAME,
    end_run,
    save_run_outputs,
    summary_line,
)
from .preflight import check_output_dir, resolve_resume_checkpoint, setup_logging
from .trainer_parts import build_collator, build_metrics, enable_speed_ups, recipe_callbacks

__all__ = [
    "ADAPTER_DIRNAME",
    "PREDICTIONS_NAME",
    "RESULTS_NAME",
    "SUBMISSION_NAME",
    "TRACEBACK_ENV",
    "HubTarget",
    "build_collator",
    "build_metrics",
    "check_output_dir",
    "enable_speed_ups",
    "end_run",
    "label_tokenization_of",
    "load_run_data",
    "load_run_tokenizer",
    "push_run",
    "recipe_callbacks",
    "resolve_resume_checkpoint",
    "run_prompt",
    "run_recipe",
    "save_run_outputs",
    "setup_logging",
    "summary_line",
    "take_over_hub_push",
    "text_column_of",
    "user_error_message",
]
