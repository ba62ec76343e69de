"""P-tuning (Liu et al., 2021) of a causal LM with the stock Trainer:

    python recipes/p_tuning.py
    accelerate launch recipes/p_tuning.py --config recipes/configs/p_tuning_bloomz-560m.yaml
    python recipes/p_tuning.py --encoder_reparameterization_type LSTM --encoder_hidden_size 256
    python recipes/p_tuning.py --help     # every flag, with the recipes' defaults

The steps are recipes/train.py's, run for P-tuning: copy that file to change what they do.

Learns virtual-token embeddings passed through a small prompt encoder (an MLP, or an LSTM + MLP) and put in
front of every prompt; the model stays frozen. The defaults: 20 virtual tokens (``--num_virtual_tokens``), an
encoder whose hidden size is the seed's 128. Checkpoints keep the encoder itself, so ``--resume_from_checkpoint``
is exact. With no arguments it trains on the package's embedded model and data, offline, in about a minute on a
CPU.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from softprompt_hf.steps import run_recipe

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train  # noqa: E402  (recipes/train.py)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return train.main(argv, method="p_tuning")


if __name__ == "__main__":
    sys.exit(run_recipe(main))  # input errors: one "error: ..." line and exit code 1
