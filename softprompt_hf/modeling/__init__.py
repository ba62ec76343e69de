"""The soft-prompt model: the three methods' peft configs, their initialisations, and the training speed-ups
(label-only logits, the prompt computed once per batch)."""
