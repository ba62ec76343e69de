"""Using saved adapters: load one (or many on one base model) and label or generate, or export the soft prompt
for a serving engine."""
