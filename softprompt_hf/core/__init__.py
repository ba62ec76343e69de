"""The foundation every other layer stands on: the upstream workarounds (one module), atomic files, key/value
caches built from tensors, and FSDP2 helpers. Imports nothing else of softprompt_hf."""
