"""Sync: folder discovery, the initial 90-day sync and incremental fetching of new mail."""
