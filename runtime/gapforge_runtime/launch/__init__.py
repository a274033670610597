"""Running training in more processes: torchrun on one machine, nodes, hyperparameter sweeps."""
