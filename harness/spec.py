"""Public name kept for users and plug-ins: ``harness.spec`` is :mod:`harness.core.spec` (the same module object)."""
import importlib
import sys

sys.modules[__name__] = importlib.import_module("harness.core.spec")
