"""``rnnbench check BACKEND``: the conformance battery (beside compare and gate: it judges, it does not time)."""
