"""Judging two runs against each other (``rnnbench compare``); measures nothing itself."""
from harness.compare.compare import compare_sets, load_any, format_text, format_markdown  # noqa: F401
