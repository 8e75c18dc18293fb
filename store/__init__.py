"""What a run keeps on disk: its config, its directory, ledger, transcripts, workspace and summary."""
