"""Command-line tools for a deployed pipeline."""
