"""The Heuristic Learning graph and the command line (cli.py)."""
