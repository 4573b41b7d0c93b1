"""Public name kept for users and plug-ins: ``harness.records`` is :mod:`harness.measure.records` (the same module object)."""
import importlib
import sys

sys.modules[__name__] = importlib.import_module("harness.measure.records")
