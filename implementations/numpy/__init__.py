"""The numpy family of backends."""
