"""Helpers for testing tinymoe and your own ops: `strategies` (hypothesis, needs the `test` extra)."""
