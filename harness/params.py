"""Public name kept for users and plug-ins: ``harness.params`` is :mod:`harness.core.params` (the same module object)."""
import importlib
import sys

sys.modules[__name__] = importlib.import_module("harness.core.params")
