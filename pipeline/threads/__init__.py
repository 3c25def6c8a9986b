"""Threads: the lists and pages the API reads, and a thread's view.

:mod:`.queries` (the thread lists, keyset-paginated, with the message filters applied),
:mod:`.rendered` (a page's JSON built by Postgres in its statement), :mod:`.views` (a thread's
view computed from its messages where Postgres does not render it). Which thread a stored
message joins is decided when it is stored (:mod:`pipeline.sync.store`, on the
queries of :mod:`pipeline.messages.repository`).
"""
