"""Small pieces every layer shares: errors that speak to people, paths, atomic files, append-only JSONL, secrets kept out of text."""
