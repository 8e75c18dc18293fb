"""A run as a person reads it in the morning: a static HTML page with plots, clips, diffs and transcripts.

``data.py`` gathers what the page shows from the run directory alone; ``plots.py`` draws it
with matplotlib; ``render.py`` writes ``RUN_DIR/report/index.html`` with Jinja2.
"""
