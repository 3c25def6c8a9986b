"""Messages: normalized mail, where it sits on the server, threads and attachments."""
