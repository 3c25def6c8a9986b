"""Folders: mailboxes on the server and the sync checkpoint kept for each."""
