"""Shortcut diagnostics of the pretext tasks: trivial solvers that measure what low-level cues already solve."""
