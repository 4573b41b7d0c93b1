"""The jax family of backends."""
