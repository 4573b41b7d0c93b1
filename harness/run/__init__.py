"""The running layer: the runner (isolated worker processes, timeouts, resume), the run-directory lock, progress."""
from harness.run.runner import run_suites  # noqa: F401
