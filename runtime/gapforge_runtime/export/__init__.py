"""Turning a trained adapter into deployable models: merge, GGUF and transformers quantization."""
