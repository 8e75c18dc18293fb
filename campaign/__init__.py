"""Campaigns: many runs across tasks and repeats, driven on Ray, with a shared budget and an append-only ledger."""
