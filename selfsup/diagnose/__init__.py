"""Shortcut diagnostics of the pretext tasks: trivial solvers that measure what low-level cues already solve,
and ablations that destroy a cue to measure whether a trained network relies on it."""
