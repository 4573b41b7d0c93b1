"""The ``rnnbench`` command line; nothing imports it (enforced by import-linter)."""
from harness.cli.main import main  # noqa: F401
