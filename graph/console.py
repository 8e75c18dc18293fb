"""The two consoles every command prints to: results on stdout, progress and errors on stderr."""

import sys

from rich.console import Console

# Piped output is read by grep and scripts: never truncate a task id to fit 80 columns.
out = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True)
