"""The training methods: supervised fine-tuning, preference (DPO), distillation, continual runs."""
