"""Interop tests: our mux against hashicorp/yamux through a small Go peer."""
