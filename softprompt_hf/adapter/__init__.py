"""A trained soft prompt as files: the adapter folder (saved atomically), its model card, and the push to the
Hub."""
