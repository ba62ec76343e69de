"""Prompt tuning (Lester et al., 2021) of a causal LM with the stock Trainer:

    python recipes/prompt_tuning.py
    accelerate launch recipes/prompt_tuning.py --config recipes/configs/prompt_tuning_bloomz-560m.yaml
    python recipes/prompt_tuning.py --prompt_tuning_init RANDOM --num_virtual_tokens 16 --num_train_epochs 5
    python recipes/prompt_tuning.py --prompt_tuning_init CLASS_LABELS --num_virtual_tokens 8
    python recipes/prompt_tuning.py --help     # every flag, with the recipes' defaults

The steps are recipes/train.py's, run for prompt tuning: copy that file to change what they do.

Learns ``num_virtual_tokens`` input embeddings put in front of every prompt; the model stays frozen. Where the
prompt starts (``--prompt_tuning_init``): TEXT, the input embeddings of the init text's tokens as the tokenizer
encodes any input (peft's TEXT: a BOS first if the tokenizer adds one; 8 tokens with bloomz-560m, when
``--num_virtual_tokens`` is not set); TEXT_WITHOUT_SPECIAL_TOKENS, the text's own tokens; CLASS_LABELS, one virtual
token per label of the data, the others sampled from the vocabulary; SAMPLE_VOCAB; RANDOM (benchmarks/RESULTS.md
11 compares them). With no arguments it trains on the package's embedded model and data, offline, in about a
minute on a CPU.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from softprompt_hf.steps import run_recipe

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train  # noqa: E402  (recipes/train.py)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return train.main(argv, method="prompt_tuning")


if __name__ == "__main__":
    sys.exit(run_recipe(main))  # input errors: one "error: ..." line and exit code 1
