"""The CI performance gate (``rnnbench gate``): this tree against another revision, timed in one process."""
