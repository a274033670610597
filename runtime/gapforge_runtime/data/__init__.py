"""Training data: reading and validating it, encoding it for the model, packing, and hygiene."""
