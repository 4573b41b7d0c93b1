"""The measurement layer: timing, peak-memory probes, GEMM ceilings, thread control, statistics, the row schema.

Above the implementations (it calls backends through their interface), below the suites (which decide what
to measure). Never formats a report, never runs a suite.
"""
