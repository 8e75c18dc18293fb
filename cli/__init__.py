"""The `heurist` command line: Typer commands, the live view, and the console that shows untrusted text."""
