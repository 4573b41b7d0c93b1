"""The core layer: what a recurrent network *is* — errors, specs, parameters, cell definitions, system facts.

Standard library and NumPy only; imports nothing else of rnnbench (enforced by import-linter).
"""
