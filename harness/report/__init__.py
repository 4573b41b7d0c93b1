"""Reports from a run directory (``rnnbench report``): the generic machinery; each suite owns its section."""
from harness.report.report import write_report  # noqa: F401
