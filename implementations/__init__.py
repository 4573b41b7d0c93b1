"""Pure compute: one module per backend family (NumPy reference, PyTorch, JAX).

Nothing here measures anything; the harness does. Heavy frameworks are imported only by the
module of their own backend, and only when the registry asks for it.
"""
