"""imap-pipeline: a self-hosted IMAP sync engine in the shape of the Nylas API v3 IMAP connector."""

__version__ = "0.1.0"
