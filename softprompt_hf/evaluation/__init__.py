"""Scoring: label metrics, free-text metrics, and the generation-based ``compute_metrics`` for the Trainer."""
