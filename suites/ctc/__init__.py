"""The ctc suite: presets, cases, measurement, theory and report section."""
from suites.ctc.suite import SUITE  # noqa: F401
