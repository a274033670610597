"""gapforge: turn a fine-tuning recipe into a sealed, hash-locked OCI image and an air-gap bundle."""

__version__ = "0.1.0"
