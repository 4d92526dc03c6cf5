"""The `continuity` command: one console script for every process and admin task."""
