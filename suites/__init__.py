"""What to measure: one module per suite (presets -> cases -> rows), plus asv classes over the same code.

Importable without heavy dependencies: frameworks are imported inside ``run`` and asv ``setup``.
"""
