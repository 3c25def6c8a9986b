"""Sync: folder discovery, the initial 90-day sync, reindexing and incremental fetching.

``state`` (the sync states and their drawn machine), ``plan`` (a run's arguments, discovery,
what a run fetches), ``run`` (``sync_folder``'s steps, ``sync_grant_inline``), ``changes``
(flags, expunges, orphans), ``recovery`` (what a run does when something breaks), ``store``
(parse and write a batch).
"""
