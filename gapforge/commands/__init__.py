"""gapforge's commands, one module per kind of user:

    build_engineer   connected side: lock, build, validate, cache, keygen (and runtime-env, for tests)
    operator         inside the gap, no network: verify, load, run, preflight, inspect
    release_manager  connected side: the coming release, diff, delta, split (none yet)

gapforge.cli maps each command's name to its module and function, and imports a module only when one
of its commands is run.
"""
