"""Data in, tokens out: loading and splitting datasets, the prompt templates (plain and chat) and the collator."""
