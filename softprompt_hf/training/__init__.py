"""Training with the stock Trainer: the recipes' arguments, and the callbacks (checkpoints, guards, logging)."""
