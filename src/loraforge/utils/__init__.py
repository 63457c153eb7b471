"""Small helpers shared by every role: atomic file writes, paths, logging."""
