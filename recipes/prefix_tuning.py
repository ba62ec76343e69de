"""Prefix tuning (Li & Liang, 2021) of a causal LM with the stock Trainer:

    python recipes/prefix_tuning.py
    accelerate launch recipes/prefix_tuning.py --config recipes/configs/prefix_tuning_bloomz-560m.yaml
    python recipes/prefix_tuning.py --prefix_projection true --encoder_hidden_size 256
    python recipes/prefix_tuning.py --help     # every flag, with the recipes' defaults

The steps are recipes/train.py's, run for prefix tuning: copy that file to change what they do.

Learns a key/value prefix of 20 positions (``--num_virtual_tokens``) for every attention layer; with
``--prefix_projection``, produced by a two-layer MLP of ``--encoder_hidden_size`` (checkpoints keep the MLP, so
``--resume_from_checkpoint`` is exact). The model stays frozen. Where the prefix starts (``--prefix_tuning_init``):
peft's RANDOM, or TEXT, the key/values the frozen model computes for ``--prefix_tuning_init_text`` (as many
positions as its tokens, when ``--num_virtual_tokens`` is not set). Gradient checkpointing is refused: peft cannot
combine it with prefixes. With no arguments it trains on the package's embedded model and data, offline, in about
a minute on a CPU.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from softprompt_hf.steps import run_recipe

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train  # noqa: E402  (recipes/train.py)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return train.main(argv, method="prefix_tuning")


if __name__ == "__main__":
    sys.exit(run_recipe(main))  # input errors: one "error: ..." line and exit code 1
