"""gapforge's commands, one module each (`runtime-env` is runtime_env.py), as pip keeps its own:

    build engineer   lock, build, validate, cache, keygen, runtime-env (for tests and benchmarks)
    release manager  release, diff, delta, split
    operator         trust, verify, load, preflight, run, inspect, deploy, inventory, join

Each module holds `cmd_<name>(args) -> exit status` and `<name>_arguments(parser)`; gapforge.cli maps
each command's name to its module and imports the module only when the command runs. Shared here:
_shared.py (the cache and folder options), trust_options.py (the operator's trust anchor, scan and
delta options), inspect_registry.py (`inspect --registry`).
"""
