"""The steps of a run, one module each: data, train, merge, quantize, evaluate (pipeline.py lists them)."""
