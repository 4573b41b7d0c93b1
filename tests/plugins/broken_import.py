"""A plug-in backend module whose import raises (its own bug)."""
raise RuntimeError("the plug-in's own import-time bug")
