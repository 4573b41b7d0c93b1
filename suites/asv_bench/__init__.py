"""asv benchmarks of rnnbench (``benchmark_dir`` of asv.conf.json).

Thin classes over the suites' own case code: :mod:`suites.asv_bench.benchmarks`. The package is named
``asv_bench`` rather than ``asv`` because asv imports ``benchmark_dir`` by its base name, and a top-level
``asv`` would shadow asv itself.
"""
