"""The torch family of backends."""
