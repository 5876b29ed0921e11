"""Faults with real processes: kills, signals and a frozen carrier, with transfers running."""
