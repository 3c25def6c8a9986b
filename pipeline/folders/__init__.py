"""Folders: mailboxes on the server and the sync checkpoint kept for each.

:mod:`.repository` (every query about folders), :mod:`.state` (a folder's sync states),
:mod:`.service` (a folder created, renamed or deleted on the server, then recorded),
:mod:`.views` (a folder as an API object, and its sync status for the CLI).
"""
