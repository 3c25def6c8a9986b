"""Grants: connected IMAP accounts — creation (with a real login), credentials, status."""
