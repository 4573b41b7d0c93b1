"""The gradients suite: presets, cases, measurement, theory and report section."""
from suites.gradients.suite import SUITE  # noqa: F401
