"""Scoring models: loss and perplexity, task metrics, the judge, lm-eval, and the gates."""
