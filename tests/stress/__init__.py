"""Helpers shared by the attack, fault and impaired-link tests (and the volume tests here)."""
