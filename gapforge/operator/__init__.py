"""The operator's side, inside the gap: the one trust gate (verify → `VerifiedBundle`), load, run,
preflight, inspect, and the operator's signed receipts; bundle/ is the writer these read."""
