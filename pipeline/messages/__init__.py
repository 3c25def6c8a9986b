"""Messages: normalized mail, where it sits on the server, its thread and attachments.

:mod:`.repository` (every query about messages, placements, attachments, the threads a stored
batch joins or makes, and sync failures),
:mod:`.placements` (where a message sits, and the engine's own changes to it), :mod:`.service`
(flags, moves, deletes written to the server, then recorded), :mod:`.content` (a raw message's
or an attachment's bytes, fetched when asked for), :mod:`.filters` and :mod:`.queries` (the
message lists), :mod:`.views` (a message as an API object), :mod:`.orphans` (the end of a
message that stayed in no folder), :mod:`.metadata` (key-value pairs kept in Postgres only),
:mod:`.roles` (the folder a role names, which every lookup of a Trash, Sent or Drafts asks),
:mod:`.clean` and :mod:`.htmllines` (a body without quoted history, signature and markup
noise).
The thread lists and a thread's view are :mod:`pipeline.threads`.
"""
