"""Training penalties (work in progress: issue 5)."""
