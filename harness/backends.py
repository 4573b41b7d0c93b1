"""Public name kept for users and plug-ins: ``harness.backends`` is :mod:`implementations.registry` (the same module object)."""
import importlib
import sys

sys.modules[__name__] = importlib.import_module("implementations.registry")
