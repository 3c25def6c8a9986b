"""Grants: connected IMAP accounts — creation (with a real login), credentials, status.

:mod:`.service` (a grant's life: connect with a real login first, open its counted sessions,
remove it), :mod:`.repository` (every query about grants), :mod:`.state` (the grant's sync
state), :mod:`.views` (a grant as a plain dictionary, without secrets), :mod:`.schemas` (what a
caller gives to connect an account), :mod:`.signin` and :mod:`.gate` (public sign-ins and the
bounded gate they run behind), :mod:`.interactive` (a session for work a person waits on),
:mod:`.tlsprobe` (the TLS mode of a port given without one).
"""
