"""A plug-in module with a bug: importing it raises."""
raise RuntimeError("broken on purpose")
