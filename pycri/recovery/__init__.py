"""Crash recovery at daemon start."""
