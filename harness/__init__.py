"""rnnbench's harness: types, the backend registry, timing, memory probes, records, runner, reports.

``import harness`` needs only NumPy; frameworks are imported when a backend is asked for.
"""
__version__ = "0.1.0"
