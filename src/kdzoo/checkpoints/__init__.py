"""Run folders and checkpoints on disk: the safetensors format, the atomic store, loading models from them,
the run-folder lock, and importers of published checkpoints."""
