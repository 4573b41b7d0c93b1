"""The memory suite: presets, cases, measurement, theory and report section."""
from suites.memory.suite import SUITE  # noqa: F401
