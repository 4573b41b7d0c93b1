"""The throughput suite: presets, cases, measurement, theory and report section."""
from suites.throughput.suite import SUITE  # noqa: F401
