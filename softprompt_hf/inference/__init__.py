"""Decoding a soft-prompt model: labels by generation, rank or constrained decoding, free text, the
key/value-cache engine behind them, and a right ``model.generate()``."""
