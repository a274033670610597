"""The stages of `gapforge build`, one module each; gapforge.build runs them in this order:

    locks.check_locks(plan)                           -> Locks
    fetch.fetch(plan, locks)                          -> Inputs, Locks (after any Debian refresh)
    assemble.assemble(plan, locks, inputs)            -> BuiltImage (layers + archive, no network)
    sealed: engine.load, engine.smoke_run             -> the smoke run's output
    sealed.pretest(plan, client, image)               -> PretestResult
    serve.serve(plan, client, result)                 -> ServingResult (recipes with serve: only)
    bundle.bundle(plan, locks, inputs, image, result, key) -> WrittenBundle
    report.write_report(plan, locks, image, inputs, timings=..., smoke=..., pretest=..., bundle=...)

Every stage takes the plan (plan.py; frozen: options, recipe, profile, cache) and what the stages
before it returned, and returns its own result: nothing is handed on through the plan.
"""
