"""Attack table rows 1-22: hostile peers against the sans-IO core and against real processes."""
