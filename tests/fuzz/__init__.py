"""Fuzzing: hypothesis properties (default run) and an atheris target (by hand)."""
