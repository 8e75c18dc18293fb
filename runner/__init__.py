"""A run's lifecycle: start, resume and replay a run directory by driving the graph to its end."""
