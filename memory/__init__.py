"""The vector-store memory of past failures, fixes and lessons, shared across runs."""
