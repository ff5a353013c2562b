"""Series completion and routing rules."""
