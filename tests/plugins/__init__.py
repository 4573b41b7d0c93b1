"""Plug-ins that are not ours, for the tests: a cell defined outside rnnbench and a backend under a foreign name."""
