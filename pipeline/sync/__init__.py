"""Sync: folder discovery, the initial 90-day sync, reindexing and incremental fetching.

``plan`` (a run's arguments, discovery, what a run fetches), ``run`` (``sync_folder``'s steps,
``sync_grant_inline``), ``changes`` (flags, expunges), ``recovery`` (what a run does when
something breaks), ``store`` (parse and write a batch). The states a run moves are drawn where
the rows that hold them are owned, below the sync: :mod:`pipeline.folders.state` (a folder's
machine) and :mod:`pipeline.grants.state` (a grant's).
"""
